"""Quick caption metrics for validation during training (full evaluation lives in `evaluate`).

CIDEr-D from pycocoevalcap on our own normalised tokens (no Java tokenizer needed), with
document frequencies from the evaluated references, as in the field's validation loops.
"""

from __future__ import annotations

from pycocoevalcap.cider.cider import Cider

from shared.vocabulary import tokenize


def cider_d(candidates: dict[int, str], references: dict[int, list[str]]) -> float:
    """Corpus CIDEr-D of `candidates` (id -> caption) against `references` (id -> captions)."""
    if not candidates:
        return 0.0
    res = {i: [" ".join(tokenize(c))] for i, c in candidates.items()}
    gts = {i: [" ".join(tokenize(r)) for r in references[i]] for i in candidates}
    score, _ = Cider().compute_score(gts, res)
    return float(score)
