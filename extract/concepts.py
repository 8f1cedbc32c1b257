"""`extract concepts`: FSGR's frozen concept codebook (CLIP text embeddings of content words).

The vocabulary is the content words of the training captions seen at least
`fsgr.concept_min_count` times (stop-words removed), or a user word list (`fsgr.concept_list`,
one word or phrase per line), or with `fsgr.concept_source = "vg"` Visual Genome's most frequent
object and attribute names (`vg.concepts_json`, written by preparing VG; an open alternative to
FSGR's RAM tag list). Each is encoded once by the run's CLIP text tower with
`fsgr.prompt_template`, L2-normalised, and saved as `runs/<dataset>/fsgr/concepts.npz`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared.atomic_files import atomic_path
from shared.clip_model import create_clip
from shared.config import Config
from shared.datasets.visual_genome import vg_concept_words
from shared.devices import resolve_device
from shared.karpathy import load_karpathy, split_records
from shared.stage_runner import StageResult, StageRun, run_stage
from shared.stages import concepts_stage
from shared.stopwords import STOPWORDS
from shared.vocabulary import word_counts


@dataclass
class ConceptCodebook:
    """Concept words and their normalised CLIP text embeddings [C, E]."""

    words: list[str]
    embeddings: np.ndarray

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, tmp.open("wb") as fh:  # a handle: never a second .npz
            np.savez(fh, words=np.array(self.words), embeddings=self.embeddings)

    @classmethod
    def load(cls, path: Path) -> ConceptCodebook:
        try:
            with np.load(path) as data:
                return cls([str(w) for w in data["words"]], data["embeddings"])
        except FileNotFoundError:
            raise FileNotFoundError(f"concept codebook not found: {path} "
                                    "(run `python -m extract concepts`)") from None


def concept_words(config: Config) -> list[str]:
    """The concept vocabulary: a user list, VG's frequent names, or frequent content words of
    training captions."""
    if config.fsgr.concept_list:
        path = Path(config.fsgr.concept_list)
        if not path.is_file():
            raise FileNotFoundError(f"concept list not found: {path} (fsgr.concept_list)")
        words = [line.strip().lower() for line in path.read_text().splitlines()]
        words = list(dict.fromkeys(w for w in words if w and not w.startswith("#")))
        if not words:
            raise ValueError(f"{path}: concept list is empty (fsgr.concept_list)")
        return words
    if config.fsgr.concept_source == "vg":
        return vg_concept_words(config.vg.concepts_json, config.vg.concept_objects,
                                config.vg.concept_attributes, config.fsgr.concept_min_count)
    records = split_records(load_karpathy(config.data.karpathy_json, config.data.image_root),
                            "train")
    counts = word_counts(t for r in records for t in r.tokens)
    kept = [w for w, c in counts.items() if c >= config.fsgr.concept_min_count
            and w not in STOPWORDS and not w.isdigit() and len(w) > 1]
    if not kept:
        raise ValueError("no concept words above fsgr.concept_min_count="
                         f"{config.fsgr.concept_min_count}")
    return sorted(kept, key=lambda w: (-counts[w], w))


@torch.no_grad()
def encode_concepts(config: Config, words: list[str], batch_size: int = 256) -> np.ndarray:
    """Normalised CLIP text embeddings of `prompt_template.format(word)` for every word."""
    device = resolve_device(config.run.device)
    bundle = create_clip(config.clip.model, config.clip.pretrained, device=device)
    prompts = [config.fsgr.prompt_template.format(w) for w in words]
    out = []
    for i in range(0, len(prompts), batch_size):
        tokens = bundle.tokenizer(prompts[i:i + batch_size]).to(device)
        out.append(torch.nn.functional.normalize(bundle.model.encode_text(tokens).float(), dim=-1))
    return torch.cat(out).cpu().numpy().astype(np.float32)


def build_concepts(config: Config, force: bool = False) -> StageResult:
    """Build (or skip, when up to date) the concept codebook."""
    return run_stage(concepts_stage(config), config, _build_codebook, force=force)


def _build_codebook(run: StageRun) -> dict[str, Any]:
    words = concept_words(run.config)
    ConceptCodebook(words, encode_concepts(run.config, words)).save(run.spec.output)
    run.say(f"{len(words)} concepts encoded ({', '.join(words[:6])}, ...)")
    return {"concepts": len(words), "examples": words[:10]}
