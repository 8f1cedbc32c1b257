"""Checks around scoring: annotation files before any decoding, degenerate captions and a
memory-less PMA checkpoint after.

A run that decoded 5,000 images and then fails on a missing caption file has wasted its time;
a run whose captions are all empty, or one sentence for every image, gives all-zero or
near-constant metrics that look like results; a "PMA" checkpoint saved before its first
prototype refresh is a plain transformer. The first is caught as a one-line error with the
fix, the others as warnings that `metrics.json`, the report and `evaluate compare` carry.

Instances files (`data.instances_json`, COCO instances format) are read once, here: malformed
json, a missing `annotations` / `categories` / `images` list, entries without their (integer)
ids, and annotations whose `category_id` or `image_id` no entry of `categories` / `images` has are
one-line errors naming the file and the field. What CHAIR needs of them (categories, image
ids, (image, category) pairs) is kept in `CheckedAnnotations` for scoring to reuse.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from evaluate.references import read_coco_json
from shared.config import Config

MOST_COMMON_WARN_SHARE = 0.5
"""Warn when one caption is given to more than this share of the images."""

INSTANCES_FIX = "data.instances_json; or --set data.instances_json=[] to skip CHAIR"


@dataclass
class CheckedAnnotations:
    """What the checks parsed: per instances file, its categories (as given), image ids and
    annotations reduced to {"id", "image_id", "category_id"} (the COCO layout, without the
    segmentations that make COCO's files hundreds of MB)."""

    instances: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)

    def categories(self) -> list[dict[str, Any]]:
        """The `categories` entries of every instances file, in file order."""
        return [c for data in self.instances.values() for c in data["categories"]]


def check_annotation_files(config: Config) -> CheckedAnnotations:
    """Every `data.captions_json` / `data.instances_json` file exists and is a COCO annotation
    file; otherwise a one-line error naming the file and the way to go without it. Returns
    the checked instances files' content (for CHAIR, so they are parsed once)."""
    for path in config.data.captions_json:
        try:
            read_coco_json(path, ("annotations",))
        except (OSError, ValueError) as err:
            raise ValueError(f"{err} (data.captions_json; or --set data.captions_json=[] to "
                             "score against the Karpathy json's sentences)") from None
    checked = CheckedAnnotations()
    for path in config.data.instances_json:
        try:
            checked.instances[str(path)] = check_instances(path)
        except (OSError, ValueError) as err:
            raise ValueError(f"{err} ({INSTANCES_FIX})") from None
    return checked


def check_instances(path: str) -> dict[str, list[dict[str, Any]]]:
    """A COCO instances json, checked (see the module docstring) and reduced to what CHAIR
    reads; ValueError / FileNotFoundError naming the file and the field otherwise."""
    data = read_coco_json(path, ("images", "annotations", "categories"))
    categories = _entries(path, data, "categories", ("id", "name"))
    images = _entries(path, data, "images", ("id",))
    annotations = _entries(path, data, "annotations", ("image_id", "category_id"))
    category_ids = {c["id"] for c in categories}
    image_ids = {i["id"] for i in images}
    for i, ann in enumerate(annotations):
        if ann["category_id"] not in category_ids:
            raise ValueError(f"{path}: annotations[{i}].category_id {ann['category_id']!r} is "
                             "not the id of any entry of 'categories'")
        if ann["image_id"] not in image_ids:
            raise ValueError(f"{path}: annotations[{i}].image_id {ann['image_id']!r} is not "
                             "the id of any entry of 'images'")
    return {"categories": categories, "images": [{"id": i["id"]} for i in images],
            "annotations": [{"id": a.get("id"), "image_id": a["image_id"],
                             "category_id": a["category_id"]} for a in annotations]}


def _entries(path: str, data: Mapping[str, Any], key: str, fields: tuple[str, ...]
             ) -> list[dict[str, Any]]:
    """`data[key]`, a list of objects that all have `fields` (one-line error otherwise)."""
    entries = data[key]
    if not isinstance(entries, list):
        raise ValueError(f"{path}: '{key}' is not a list")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: {key}[{i}] is not an object")
        missing = next((f for f in fields if f not in entry), None)
        if missing is not None:
            raise ValueError(f"{path}: {key}[{i}] has no '{missing}'")
        for name in fields:
            if name.endswith("id") and (not isinstance(entry[name], int)
                                        or isinstance(entry[name], bool)):
                raise ValueError(f"{path}: {key}[{i}].{name} is {entry[name]!r}, not an "
                                 "integer id")
    return entries


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


def checkpoint_memory(state: Mapping[str, Any], config: Config) -> dict[str, Any]:
    """The prototype memory a decoder state dict holds: `self` / `cross` as configured,
    `prototypes` (self-attention prototypes, the fewest over layers; 0 without memory),
    `prototypes_per_layer`, `cross_prototypes` and the `n_prototypes` asked for."""
    per_layer = [int(value.shape[0]) for name, value in state.items()
                 if name.endswith("self_attn.memory_keys")]
    cross = state.get("cross_memory.prototypes")
    return {"self": bool(config.memory.self), "prototypes": min(per_layer, default=0),
            "prototypes_per_layer": per_layer, "n_prototypes": config.memory.n_prototypes,
            "cross": bool(config.memory.cross),
            "cross_prototypes": int(cross.shape[0]) if cross is not None else 0}


def memoryless(memory: Mapping[str, Any]) -> bool:
    """Whether a run configured with PMA memory (`memory.self`) has 0 prototypes."""
    return bool(memory.get("self")) and int(memory.get("prototypes", 0)) == 0


def memory_warnings(memory: Mapping[str, Any]) -> list[str]:
    """One line when the evaluated checkpoint lacks the memory its config asks for."""
    warnings = []
    if memoryless(memory):
        warnings.append("warning: memory.self is on but the evaluated checkpoint has 0 memory "
                        "prototypes (saved before the first refresh, memory.warmup_iterations): "
                        "these are a plain transformer's results, not PMA's")
    elif memory.get("self") and memory.get("prototypes", 0) < memory.get("n_prototypes", 0):
        warnings.append(f"warning: the evaluated checkpoint has {memory['prototypes']} memory "
                        f"prototypes per layer, fewer than memory.n_prototypes="
                        f"{memory['n_prototypes']}")
    if memory.get("cross") and not memory.get("cross_prototypes"):
        warnings.append("warning: memory.cross is on but the evaluated checkpoint has 0 "
                        "feature prototypes")
    return warnings
