"""Checks around scoring: annotation files before any decoding, degenerate captions after.

A run that decoded 5,000 images and then fails on a missing caption file has wasted its time;
a run whose captions are all empty, or one sentence for every image, gives all-zero or
near-constant metrics that look like results. Both are caught here: the first as a one-line
error with the fix, the second as warnings that `metrics.json` and the report carry.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from evaluate.chair import read_instances
from evaluate.references import read_coco_json
from shared.config import Config

MOST_COMMON_WARN_SHARE = 0.5
"""Warn when one caption is given to more than this share of the images."""


def check_annotation_files(config: Config) -> None:
    """Every `data.captions_json` / `data.instances_json` file exists and is a COCO annotation
    file; otherwise a one-line error naming the file and the way to go without it."""
    for path in config.data.captions_json:
        try:
            read_coco_json(path, ("annotations",))
        except (OSError, ValueError) as err:
            raise ValueError(f"{err} (data.captions_json; or --set data.captions_json=[] to "
                             "score against the Karpathy json's sentences)") from None
    for path in config.data.instances_json:
        try:
            read_instances(Path(path))
        except ValueError as err:
            raise ValueError(f"{err} (data.instances_json; or --set data.instances_json=[] to "
                             "skip CHAIR)") from None


def caption_stats(captions: Mapping[int, str]) -> dict[str, Any]:
    """Shares of empty and of repeated captions, and the most common caption with its share."""
    texts = [" ".join(c.split()) for c in captions.values()]
    n = len(texts)
    counts = Counter(texts)
    common, common_count = counts.most_common(1)[0] if counts else ("", 0)
    return {"captions": n,
            "empty_share": sum(not t for t in texts) / n if n else 0.0,
            "duplicate_share": (n - len(counts)) / n if n else 0.0,
            "distinct": len(counts),
            "most_common": common, "most_common_share": common_count / n if n else 0.0}


def degeneracy_warnings(stats: Mapping[str, Any]) -> list[str]:
    """One line per sign that the captions are not a result: empty ones, one for (nearly)
    every image."""
    warnings = []
    n = stats["captions"]
    if stats["empty_share"] > 0:
        warnings.append(f"warning: {stats['empty_share']:.0%} of the {n} captions are empty")
    if n > 1 and stats["most_common_share"] > MOST_COMMON_WARN_SHARE:
        warnings.append(f"warning: {stats['most_common_share']:.0%} of the {n} images get the "
                        f"same caption {stats['most_common']!r}; the metrics describe that "
                        "one sentence, not a captioner")
    return warnings
