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
    with CaptionScorer(candidates, references, spice) as scorer:
        return scorer.score()


class CaptionScorer:
    """pycocoevalcap over one split's captions, tokenised once and scored as often as needed.

    `score()` scores every image, `score(ids)` a subset of them alone (its own CIDEr-D
    document frequencies, its own corpus METEOR). The values equal `score_captions` on the
    subset's captions: the PTB tokenizer works line by line (`-preserveLines`), so one run
    over the split's captions and references gives each sentence the tokens a run over the
    subset would, and METEOR's process is stateless between `EVAL` requests. One tokenizer
    and one METEOR start serve a split and all its subsets (each costs a Java start).
    """

    def __init__(self, candidates: dict[int, str], references: dict[int, list[str]],
                 spice: bool = True) -> None:
        if not candidates:
            raise ValueError("no captions to score")
        missing = [i for i in candidates if not references.get(i)]
        if missing:
            raise ValueError(f"image id {missing[0]} has no reference captions")
        self.ids = sorted(candidates)
        self.spice = spice
        tokens = ptb_tokenize({**{("res", i): [candidates[i]] for i in self.ids},
                               **{("gts", i): references[i] for i in self.ids}})
        self.res = {i: tokens[("res", i)] for i in self.ids}
        self.gts = {i: tokens[("gts", i)] for i in self.ids}
        self._meteor: object | None = None

    def __enter__(self) -> CaptionScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the METEOR process, if one was started."""
        self._meteor = None  # pycocoevalcap's Meteor kills its process when collected

    def score(self, ids: list[int] | None = None) -> CaptionScores:
        """Corpus and per-image scores of the images `ids` (default: all) scored alone."""
        ids = self.ids if ids is None else sorted(ids)
        unknown = [i for i in ids if i not in self.res]
        if unknown:
            raise ValueError(f"image id {unknown[0]} is not among the scored captions")
        if not ids:
            raise ValueError("no captions to score")
        gts = {i: self.gts[i] for i in ids}
        res = {i: self.res[i] for i in ids}
        corpus: dict[str, float] = {}
        per_image: dict[int, dict[str, float]] = {i: {} for i in ids}
        notes: list[str] = []
        if self._meteor is None:
            self._meteor = Meteor()
        scorers: list[tuple[object, tuple[str, ...]]] = [
            (Bleu(4), ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4")), (self._meteor, ("METEOR",)),
            (Rouge(), ("ROUGE_L",)), (Cider(), ("CIDEr",))]
        reason = spice_missing() if self.spice else "SPICE skipped: eval.spice = false"
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
