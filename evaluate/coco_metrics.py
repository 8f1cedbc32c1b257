"""The field's caption metrics with pycocoevalcap: PTB tokenisation, BLEU-1..4, METEOR,
ROUGE-L, CIDEr (the CIDEr-D variant) and SPICE when its Stanford CoreNLP jars are present.

SPICE needs `stanford-corenlp-3.6.0.jar` and its models jar in pycocoevalcap's `spice/lib/`;
pycocoevalcap downloads them on first use, which offline machines cannot do. Then SPICE is
skipped with one line and every other metric is computed as usual.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from pathlib import Path

import pycocoevalcap.spice.spice as spice_module
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

SPICE_LIB = Path(spice_module.__file__).resolve().parent / "lib"
CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")


@dataclass
class CaptionScores:
    """Corpus scores, per-image scores and notes (e.g. why SPICE was skipped)."""

    corpus: dict[str, float]
    per_image: dict[int, dict[str, float]]
    notes: list[str] = field(default_factory=list)


def spice_missing(lib: Path = SPICE_LIB) -> str:
    """'' when SPICE can run, else the one-line reason it cannot."""
    missing = [jar for jar in CORENLP_JARS if not (lib / jar).is_file()]
    if not missing:
        return ""
    return (f"SPICE skipped: {missing[0]} not found in {lib} (pycocoevalcap downloads Stanford "
            f"CoreNLP 3.6.0 there on first online use; copy the jars there to enable it)")


def ptb_tokenize(captions: dict[int, list[str]]) -> dict[int, list[str]]:
    """pycocoevalcap's PTB tokenizer (Java) over id -> captions."""
    return PTBTokenizer().tokenize({i: [{"caption": c} for c in caps]
                                    for i, caps in captions.items()})


def score_captions(candidates: dict[int, str], references: dict[int, list[str]],
                   spice: bool = True) -> CaptionScores:
    """Score one generated caption per image against its references, as the field does."""
    if not candidates:
        raise ValueError("no captions to score")
    missing = [i for i in candidates if not references.get(i)]
    if missing:
        raise ValueError(f"image id {missing[0]} has no reference captions")
    ids = sorted(candidates)
    res = ptb_tokenize({i: [candidates[i]] for i in ids})
    gts = ptb_tokenize({i: references[i] for i in ids})
    corpus: dict[str, float] = {}
    per_image: dict[int, dict[str, float]] = {i: {} for i in ids}
    notes: list[str] = []
    scorers: list[tuple[object, tuple[str, ...]]] = [
        (Bleu(4), ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4")), (Meteor(), ("METEOR",)),
        (Rouge(), ("ROUGE_L",)), (Cider(), ("CIDEr",))]
    reason = spice_missing() if spice else "SPICE skipped: eval.spice = false"
    if not reason:
        scorers.append((spice_module.Spice(), ("SPICE",)))
    else:
        notes.append(reason)
    for scorer, names in scorers:
        with contextlib.redirect_stdout(io.StringIO()):  # BLEU prints its internals
            score, image_scores = scorer.compute_score(gts, res)
        if len(names) == 1:
            score, image_scores = [score], [image_scores]
        for name, value, values in zip(names, score, image_scores):
            corpus[name] = float(value)
            for i, v in zip(ids, values):
                per_image[i][name] = _plain(v)
    return CaptionScores(corpus, per_image, notes)


def _plain(value: object) -> float:
    """Per-image values as floats (SPICE gives a dict per image: keep its F-score)."""
    if isinstance(value, dict):
        return float(value["All"]["f"])
    return float(value)
