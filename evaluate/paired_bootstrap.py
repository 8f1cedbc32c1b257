"""Paired bootstrap over test images: intervals of a variant's CIDEr / CHAIR difference from a
baseline, from the per-image results of `evaluate score` (`eval/<split>/per_image.json`).

Per image, one value per field (`read_per_image`):

    cider          the image's CIDEr-D (pycocoevalcap's per-image score)
    hallucinating  1 when the caption has at least one hallucinated mention, else 0
    hallucinated   the caption's hallucinated mentions (every mention, repeats included)
    mentions       the caption's object mentions (likewise)

A variant trained with several seeds is pooled image by image (`pool`): each field is averaged
over its seeds' runs, which must have scored the same images. With `eval.subsets`, each entry
also names its subsets (`PerImage.subsets`), and `restrict` keeps the images of one.

Corpus metrics of a set of images (`corpus_value`; a resample repeats some images and drops
others), counted as `evaluate.score` / `evaluate.chair` count them, so that on the full sample
of one run they equal its `metrics.json`:

    CIDEr   mean of `cider`. pycocoevalcap's corpus CIDEr-D is this mean; every per-image score
            keeps the document frequencies of the full test set's references (that is how its
            per-image CIDEr-D is defined), also on a resample.
    CHAIRs  mean of `hallucinating` (captions with a hallucination / captions)
    CHAIRi  sum of `hallucinated` / sum of `mentions`, a ratio of sums recomputed on every
            resample (0 when nothing is mentioned). Pooled over seeds it is the ratio of the
            seeds' summed counts, not the mean of their CHAIRi.

`paired_difference`: `scipy.stats.bootstrap(paired=True)` resamples the image ids, the same
resample for both variants, recomputes both corpus metrics on it and takes variant - baseline;
the interval is scipy's BCa (the percentile interval of the same resamples where BCa is
undefined, e.g. a constant difference). A fixed `seed` gives every metric and every variant the
same resamples.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import bootstrap

MIN_RESAMPLES = 1000
BATCH = 256
"""Resamples (and jackknife rows) per vectorised call: bounds memory at COCO's 5,000 images."""

Statistic = Callable[..., np.ndarray]


def _mean(values: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(values, axis=axis)


def _ratio_of_sums(numerator: np.ndarray, denominator: np.ndarray,
                   axis: int = -1) -> np.ndarray:
    top, bottom = np.sum(numerator, axis=axis), np.sum(denominator, axis=axis)
    return np.divide(top, bottom, out=np.zeros(np.shape(top)), where=bottom > 0)


METRICS: dict[str, tuple[tuple[str, ...], Statistic]] = {
    "CIDEr": (("cider",), _mean),
    "CHAIRs": (("hallucinating",), _mean),
    "CHAIRi": (("hallucinated", "mentions"), _ratio_of_sums),
}
"""Bootstrapped metric -> (per-image fields it reads, vectorised corpus statistic)."""


@dataclass(frozen=True)
class PerImage:
    """Per-image values of one run (or of a variant's pooled seeds), rows in `image_ids`
    order; `fields` holds those of `cider`, `hallucinating`, `hallucinated`, `mentions` that
    every image has (no CHAIR fields when CHAIR was not computed)."""

    image_ids: np.ndarray
    fields: dict[str, np.ndarray]
    subsets: dict[str, np.ndarray] | None = None
    """Subset name -> boolean mask over `image_ids`; None when the entries name no subsets
    (scored without `eval.subsets`)."""

    def has(self, metric: str) -> bool:
        """Whether `metric` (a `METRICS` name) can be computed from these values."""
        return all(name in self.fields for name in METRICS[metric][0])

    def subset_ids(self, name: str) -> np.ndarray | None:
        """The image ids of subset `name` (sorted), None when membership is not recorded."""
        if self.subsets is None or name not in self.subsets:
            return None
        return self.image_ids[self.subsets[name]]


def restrict(values: PerImage, ids: np.ndarray) -> PerImage:
    """`values` of the images in `ids` only (each must be one of `values.image_ids`)."""
    keep = np.isin(values.image_ids, ids)
    if keep.sum() != len(np.unique(ids)):
        raise ValueError("restrict: some image ids are not among the values' images")
    return PerImage(values.image_ids[keep], {k: v[keep] for k, v in values.fields.items()})


def read_per_image(path: Path, chair: str = "chair") -> PerImage:
    """The per-image values of an `evaluate score` run's `per_image.json` (`chair`: the key
    of each entry's CHAIR details)."""
    try:
        entries = sorted(json.loads(Path(path).read_text()), key=lambda e: int(e["image_id"]))
        ids = np.array([int(e["image_id"]) for e in entries], dtype=np.int64)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: not a per_image.json of `evaluate score` ({err})") from None
    if len(np.unique(ids)) != len(ids):
        raise ValueError(f"{path}: an image id appears twice")
    fields: dict[str, np.ndarray] = {}
    if entries and all("CIDEr" in (e.get("scores") or {}) for e in entries):
        fields["cider"] = np.array([float(e["scores"]["CIDEr"]) for e in entries])
    if entries and all(isinstance(e.get(chair), dict) for e in entries):
        mentioned = [len(e[chair].get("mentioned", [])) for e in entries]
        hallucinated = [len(e[chair].get("hallucinated", [])) for e in entries]
        fields["mentions"] = np.array(mentioned, dtype=float)
        fields["hallucinated"] = np.array(hallucinated, dtype=float)
        fields["hallucinating"] = (fields["hallucinated"] > 0).astype(float)
    return PerImage(ids, fields, _memberships(path, entries))


def _memberships(path: Path, entries: list[dict]) -> dict[str, np.ndarray] | None:
    """Subset name -> mask over `entries` from their "subsets" lists; None when an entry has
    none."""
    if not entries or not all("subsets" in e for e in entries):
        return None
    if not all(isinstance(e["subsets"], list) for e in entries):
        raise ValueError(f"{path}: an entry's \"subsets\" is not a list of subset names")
    names = dict.fromkeys(name for e in entries for name in e["subsets"])
    return {name: np.array([name in e["subsets"] for e in entries]) for name in names}


def same_images(runs: dict[str, PerImage], what: str) -> None:
    """Refuse (one line) runs that did not score the same images; `what` names them."""
    names = list(runs)
    first = runs[names[0]].image_ids
    for name in names[1:]:
        ids = runs[name].image_ids
        if not np.array_equal(ids, first):
            common = len(np.intersect1d(ids, first))
            raise ValueError(f"{what} do not cover the same test images: {names[0]} has "
                             f"{len(first)}, {name} has {len(ids)}, {common} in common "
                             "(score them on the same split and images)")


def pool(runs: dict[str, PerImage], label: str) -> PerImage:
    """One variant's per-image values averaged over its runs (seeds), which must have scored
    the same images; a field is kept when every run has it."""
    same_images(runs, f"the runs of {label}")
    values = list(runs.values())
    names = set.intersection(*(set(v.fields) for v in values))
    return PerImage(values[0].image_ids,
                    {name: np.mean([v.fields[name] for v in values], axis=0)
                     for name in sorted(names)})


def corpus_value(metric: str, values: PerImage) -> float:
    """`metric` (CIDEr, CHAIRs, CHAIRi) of all the images of `values`."""
    names, statistic = METRICS[metric]
    return float(statistic(*(values.fields[name] for name in names)))


@dataclass(frozen=True)
class Difference:
    """variant - baseline of one corpus metric: the full-sample estimate and its interval."""

    metric: str
    estimate: float
    low: float
    high: float
    baseline: float
    variant: float
    method: str

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies entirely on one side of 0."""
        return self.low > 0 or self.high < 0

    def to_json(self) -> dict[str, float | str | bool]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high,
                "baseline": self.baseline, "variant": self.variant, "method": self.method,
                "excludes_zero": self.excludes_zero}


def check_settings(resamples: int, confidence: float) -> None:
    """Refuse too few resamples or a confidence level outside (0, 1), in one line."""
    if resamples < MIN_RESAMPLES:
        raise ValueError(f"--resamples must be at least {MIN_RESAMPLES}, got {resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"--confidence must lie between 0 and 1 (e.g. 0.95), got {confidence}")


def paired_difference(metric: str, baseline: PerImage, variant: PerImage, resamples: int = 1000,
                      seed: int = 0, confidence: float = 0.95) -> Difference:
    """The paired-bootstrap interval of `metric`(variant) - `metric`(baseline) over images."""
    check_settings(resamples, confidence)
    same_images({"the baseline": baseline, "the variant": variant}, "the compared variants")
    if len(baseline.image_ids) < 2:
        raise ValueError("a bootstrap over images needs at least 2 images")
    names, statistic = METRICS[metric]
    data = tuple(baseline.fields[n] for n in names) + tuple(variant.fields[n] for n in names)
    k = len(names)

    def difference(*arrays: np.ndarray, axis: int = -1) -> np.ndarray:
        return statistic(*arrays[k:], axis=axis) - statistic(*arrays[:k], axis=axis)

    options = dict(paired=True, vectorized=True, confidence_level=confidence, batch=BATCH)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BCa of a constant difference: handled below
        result = bootstrap(data, difference, n_resamples=resamples, method="BCa",
                           rng=np.random.default_rng(seed), **options)
        low, high = result.confidence_interval
        method = "BCa"
        if not (np.isfinite(low) and np.isfinite(high)):
            result = bootstrap(data, difference, n_resamples=0, method="percentile",
                               bootstrap_result=result, **options)
            low, high = result.confidence_interval
            method = "percentile (BCa undefined)"
    return Difference(metric, float(difference(*data)), float(low), float(high),
                      corpus_value(metric, baseline), corpus_value(metric, variant), method)
