"""CLIPScore and RefCLIPScore (Hessel et al., 2021) as the authors' `clipscore.py` computes them.

CLIP-S(c, v) = 2.5 * max(cos(E_v, E_c), 0); RefCLIP-S = the harmonic mean of CLIP-S and
max_r cos(E_c, E_r) over the references r. As in the reference code: every text (candidate
and references) is prefixed with "A photo depicts " and truncated to CLIP's 77 tokens; the
text-text maximum is not clipped at 0 (the paper writes max(., 0); the code does not); the
image is the file itself through the model's own preprocessing (bicubic resize of the full
decode, centre crop, normalisation); the model is OpenAI's ViT-B/32.

`eval.clipscore_clip` chooses the CLIP:
- "reference" (default): ViT-B-32 with `eval.clipscore_pretrained` ("openai", or a local file
  of those weights), reported as CLIP-S / RefCLIP-S, comparable with published numbers;
- "run": the run's own CLIP (pooled image embeddings from the CLIP cache, no image read
  again), reported under its own names CLIP-S_run / RefCLIP-S_run: only comparable between
  runs with the same CLIP.
The one case the reference code leaves undefined (CLIP-S and the text maximum both 0: 0/0)
scores 0 here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from shared.clip_model import ClipBundle, create_clip
from shared.images import ImageError, load_rgb

PREFIX = "A photo depicts "
WEIGHT = 2.5
REFERENCE_MODEL = "ViT-B-32"   # the model of Hessel et al.'s code (OpenAI's ViT-B/32)
NAMES = {"reference": ("CLIP-S", "RefCLIP-S"), "run": ("CLIP-S_run", "RefCLIP-S_run")}
"""The metric names of each `eval.clipscore_clip`."""


@dataclass
class ClipScores:
    """Per-image CLIP-S and RefCLIP-S (aligned with the inputs) and their means."""

    clip_s: np.ndarray
    ref_clip_s: np.ndarray

    def corpus(self, names: tuple[str, str] = NAMES["reference"]) -> dict[str, float]:
        """The means under `names` (CLIP-S, RefCLIP-S)."""
        return {names[0]: float(self.clip_s.mean()), names[1]: float(self.ref_clip_s.mean())}


@torch.no_grad()
def encode_texts(bundle: ClipBundle, texts: list[str], device: torch.device,
                 batch_size: int = 256) -> torch.Tensor:
    """Unit-norm CLIP text embeddings [n, E] of `texts`, each prefixed with PREFIX (the
    tokenizer truncates to the context length, as `clip.tokenize(..., truncate=True)`)."""
    out = []
    for start in range(0, len(texts), batch_size):
        tokens = bundle.tokenizer([PREFIX + t for t in texts[start:start + batch_size]])
        out.append(F.normalize(bundle.model.encode_text(tokens.to(device)).float(), dim=-1))
    return torch.cat(out) if out else torch.zeros(0, bundle.embed_dim)


@torch.no_grad()
def encode_image_files(bundle: ClipBundle, paths: Sequence[Path], device: torch.device,
                       batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """Pooled CLIP image embeddings [n, E] of image files, each decoded at full size and
    preprocessed by the model's own transform; an unreadable file is an error naming it."""
    out = []
    for start in tqdm(range(0, len(paths), batch_size), disable=not progress,
                      desc="CLIP-S images", unit="batch"):
        pixels = []
        for path in paths[start:start + batch_size]:
            try:
                pixels.append(bundle.preprocess(load_rgb(path)))
            except ImageError as err:
                raise ImageError(f"{path}: {err} (CLIP-S reads every scored image)") from None
        out.append(bundle.model.encode_image(torch.stack(pixels).to(device)).float().cpu())
    width = bundle.embed_dim
    return torch.cat(out).numpy() if out else np.zeros((0, width), np.float32)


def scores_from_embeddings(image_embeds: np.ndarray, candidate_embeds: np.ndarray,
                           reference_embeds: np.ndarray, owners: np.ndarray) -> ClipScores:
    """CLIP-S and RefCLIP-S from embeddings (each row normalised here): image i, its
    candidate i and the references whose `owners` entry is i."""
    def unit(rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, np.float64)
        return rows / np.sqrt((rows ** 2).sum(axis=1, keepdims=True))

    images, candidates = unit(image_embeds), unit(candidate_embeds)
    clip_s = WEIGHT * np.clip((images * candidates).sum(axis=1), 0, None)
    owners = np.asarray(owners)
    text_sims = (unit(reference_embeds) * candidates[owners]).sum(axis=1)
    best = np.full(len(candidates), -np.inf)
    np.maximum.at(best, owners, text_sims)
    if np.isinf(best).any():
        raise ValueError(f"candidate {int(np.flatnonzero(np.isinf(best))[0])} has no reference")
    total = clip_s + best
    ref_clip_s = np.divide(2 * clip_s * best, total, out=np.zeros_like(total),
                           where=total != 0)
    return ClipScores(clip_s, ref_clip_s)


def clip_scores(bundle: ClipBundle, image_embeds: np.ndarray, captions: list[str],
                references: list[list[str]], device: torch.device) -> ClipScores:
    """CLIP-S and RefCLIP-S of `captions[i]` for the image with pooled embedding
    `image_embeds[i]` and references `references[i]`."""
    candidates = encode_texts(bundle, captions, device).cpu().numpy()
    flat = [r for refs in references for r in refs]
    owners = np.array([i for i, refs in enumerate(references) for _ in refs], dtype=np.int64)
    refs = encode_texts(bundle, flat, device).cpu().numpy()
    return scores_from_embeddings(image_embeds, candidates, refs, owners)


def reference_clip(pretrained: str, device: torch.device) -> ClipBundle:
    """The CLIP of the reference CLIP-S: ViT-B-32 with `pretrained` ("openai" or a file)."""
    return create_clip(REFERENCE_MODEL, pretrained, device)


def reference_clip_scores(pretrained: str, image_files: Sequence[Path], captions: list[str],
                          references: list[list[str]], device: torch.device,
                          progress: bool = False) -> ClipScores:
    """CLIP-S / RefCLIP-S as Hessel et al.'s code computes them: ViT-B-32 (`pretrained`) on
    the image files themselves."""
    bundle = reference_clip(pretrained, device)
    embeds = encode_image_files(bundle, image_files, device, progress=progress)
    return clip_scores(bundle, embeds, captions, references, device)
