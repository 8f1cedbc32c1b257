"""Writing a converted dataset in the two formats the pipeline reads.

    Karpathy json     {"dataset", "images": [{"split", "filepath", "filename", "imgid",
                      "sentids", "sentences": [{"tokens", "raw", "imgid", "sentid"}], ...}]}
    COCO captions     {"info", "licenses", "type": "captions", "images": [{"id", "file_name",
                      "width", "height"}], "annotations": [{"image_id", "id", "caption"}]}

Used by the Visual Genome, Flickr30k and nocaps readers. The image id is written as `imgid`
(never `cocoid`, which `shared.karpathy` would take as the id). No time stamps are written, so
converting the same files twice gives byte-identical outputs (and unchanged stage identities).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.atomic_files import atomic_path
from shared.vocabulary import tokenize

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class CaptionedImage:
    """One image of a converted dataset: where it is, its split and its reference captions."""

    image_id: int
    split: str
    filepath: str
    filename: str
    captions: tuple[str, ...]
    width: int | None = None
    height: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # kept in both files' image entries


def karpathy_payload(images: Sequence[CaptionedImage], dataset: str) -> dict[str, Any]:
    """The Karpathy-format json of `images` (sentence ids numbered in order)."""
    entries, sentid = [], 0
    for image in images:
        if image.split not in SPLITS:
            raise ValueError(f"image {image.image_id}: split {image.split!r} is not one of "
                             f"{', '.join(SPLITS)}")
        sentences = []
        for raw in image.captions:
            sentences.append({"tokens": tokenize(raw), "raw": raw, "imgid": image.image_id,
                              "sentid": sentid})
            sentid += 1
        entries.append({"split": image.split, "filepath": image.filepath,
                        "filename": image.filename, "imgid": image.image_id,
                        "sentids": [s["sentid"] for s in sentences], "sentences": sentences,
                        **image.extra})
    return {"dataset": dataset, "images": entries}


def image_entry(image: CaptionedImage) -> dict[str, Any]:
    """The COCO `images` entry of an image."""
    entry: dict[str, Any] = {"id": image.image_id,
                             "file_name": f"{image.filepath}/{image.filename}".lstrip("/")}
    if image.width is not None and image.height is not None:
        entry.update(width=image.width, height=image.height)
    return {**entry, **image.extra}


def coco_captions_payload(images: Sequence[CaptionedImage], description: str) -> dict[str, Any]:
    """The COCO caption json of `images` (annotation ids numbered in order)."""
    annotations = [{"image_id": image.image_id, "id": 0, "caption": raw}
                   for image in images for raw in image.captions]
    for number, ann in enumerate(annotations):
        ann["id"] = number
    return {"info": {"description": description}, "licenses": [], "type": "captions",
            "images": [image_entry(image) for image in images], "annotations": annotations}


def write_compact_json(path: str | Path, payload: Any) -> None:
    """`payload` as compact json (no indent: instance files of millions of boxes), written
    atomically; the folder is created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as fh:
        json.dump(payload, fh, separators=(",", ":"), ensure_ascii=False)


def write_caption_files(images: Sequence[CaptionedImage], karpathy_json: str | Path,
                        captions_json: str | Path | None, dataset: str) -> None:
    """Write the Karpathy json and (when given a path) the COCO caption json, atomically."""
    if not images:
        raise ValueError(f"{dataset}: no image with captions to write")
    write_compact_json(karpathy_json, karpathy_payload(images, dataset))
    if captions_json:
        write_compact_json(captions_json, coco_captions_payload(images, dataset))


def split_counts(images: Iterable[CaptionedImage]) -> str:
    """"train 10, val 2, test 2" for a summary line."""
    counts = dict.fromkeys(SPLITS, 0)
    for image in images:
        counts[image.split] += 1
    return ", ".join(f"{split} {n}" for split, n in counts.items())
