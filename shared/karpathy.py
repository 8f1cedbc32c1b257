"""Reader for Karpathy-format caption datasets (COCO `dataset_coco.json`, Flickr30k/8k).

Format: `{"images": [{"split": "train|restval|val|test", "filepath"?: str, "filename": str,
"cocoid"? | "imgid": int, "sentences": [{"tokens": [...], "raw": str}, ...]}, ...]}`.
`restval` images are part of the training split, as in the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {"train": "train", "restval": "train", "val": "val", "test": "test"}


class DatasetError(ValueError):
    """A malformed dataset file; the message names the file and the entry."""


@dataclass(frozen=True)
class ImageRecord:
    """One image of the dataset with its reference captions."""

    image_id: int
    path: Path
    split: str
    captions: tuple[str, ...]
    tokens: tuple[tuple[str, ...], ...]


def _entry_error(json_path: Path, index: int, entry: object, what: str) -> DatasetError:
    name = entry.get("filename", "?") if isinstance(entry, dict) else "?"
    return DatasetError(f"{json_path}: images[{index}] ({name}): {what}")


def _parse_entry(json_path: Path, image_root: Path, index: int, entry: object) -> ImageRecord:
    if not isinstance(entry, dict):
        raise _entry_error(json_path, index, entry, "entry is not an object")
    split = _SPLIT_ALIASES.get(entry.get("split"))  # type: ignore[arg-type]
    if split is None:
        raise _entry_error(json_path, index, entry,
                           f"field 'split' is {entry.get('split')!r}, expected one of "
                           "train, restval, val, test")
    filename = entry.get("filename")
    if not isinstance(filename, str) or not filename:
        raise _entry_error(json_path, index, entry, "field 'filename' missing or not a string")
    image_id = entry.get("cocoid", entry.get("imgid"))
    if isinstance(image_id, bool) or not isinstance(image_id, int):
        raise _entry_error(json_path, index, entry, "needs an integer 'cocoid' or 'imgid'")
    sentences = entry.get("sentences")
    if not isinstance(sentences, list) or not sentences:
        raise _entry_error(json_path, index, entry, "field 'sentences' missing or empty")
    captions, tokens = [], []
    for j, sent in enumerate(sentences):
        if not isinstance(sent, dict) or not isinstance(sent.get("raw"), str):
            raise _entry_error(json_path, index, entry, f"sentences[{j}] has no string 'raw'")
        toks = sent.get("tokens")
        if not isinstance(toks, list) or not all(isinstance(t, str) for t in toks):
            raise _entry_error(json_path, index, entry,
                               f"sentences[{j}] has no list of string 'tokens'")
        captions.append(sent["raw"])
        tokens.append(tuple(toks))
    filepath = entry.get("filepath", "")
    if not isinstance(filepath, str):
        raise _entry_error(json_path, index, entry, "field 'filepath' is not a string")
    return ImageRecord(image_id=image_id, path=image_root / filepath / filename, split=split,
                       captions=tuple(captions), tokens=tuple(tokens))


def load_karpathy(json_path: str | Path, image_root: str | Path,
                  check_images: bool = False) -> list[ImageRecord]:
    """All images of a Karpathy-format json, in file order; `restval` counts as `train`.

    Raises DatasetError naming the file and entry for malformed content, duplicate ids or
    (with `check_images`) image files that do not exist.
    """
    json_path, image_root = Path(json_path), Path(image_root)
    try:
        raw = json.loads(json_path.read_text())
    except FileNotFoundError:
        raise DatasetError(f"dataset file not found: {json_path}") from None
    except json.JSONDecodeError as err:
        raise DatasetError(f"{json_path}: not valid JSON ({err})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("images"), list):
        raise DatasetError(f"{json_path}: expected an object with a list field 'images'")
    records = [_parse_entry(json_path, image_root, i, e) for i, e in enumerate(raw["images"])]
    seen: dict[int, int] = {}
    for i, rec in enumerate(records):
        if rec.image_id in seen:
            raise DatasetError(f"{json_path}: images[{i}] ({rec.path.name}): image id "
                               f"{rec.image_id} already used by images[{seen[rec.image_id]}]")
        seen[rec.image_id] = i
        if check_images and not rec.path.is_file():
            raise DatasetError(f"{json_path}: images[{i}]: image file not found: {rec.path}")
    return records


def split_records(records: list[ImageRecord], split: str) -> list[ImageRecord]:
    """The records of one split (`train` includes `restval`)."""
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}, expected one of {', '.join(SPLITS)}")
    return [r for r in records if r.split == split]
