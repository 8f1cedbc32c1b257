"""Reference captions of the evaluated images: COCO-format caption json, else the Karpathy json.

COCO users score against `captions_train2014.json` / `captions_val2014.json`
(`data.captions_json`), as the field does; without them the Karpathy json's raw sentences are
used (they are the same captions). References are NFC-normalised, the form
`shared.vocabulary` gives the generated captions' words, so an "é" written as e + U+0301 in a
reference still matches the "é" of a caption (pycocoevalcap's PTB tokenizer does the rest:
lower-casing, punctuation).
"""

from __future__ import annotations

import json
import unicodedata
from collections import defaultdict
from pathlib import Path

from shared.karpathy import ImageRecord


def read_coco_json(path: str | Path, keys: tuple[str, ...]) -> dict:
    """A COCO-format json file that must hold `keys`; one-line errors name the file."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"annotation file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid json ({err})") from None
    missing = [k for k in keys if not isinstance(payload, dict) or k not in payload]
    if missing:
        raise ValueError(f"{path}: not a COCO annotation file (missing '{missing[0]}')")
    return payload


def coco_captions(paths: list[str]) -> dict[int, list[str]]:
    """image id -> reference captions of every COCO caption file in `paths`."""
    captions: dict[int, list[str]] = defaultdict(list)
    for path in paths:
        for i, ann in enumerate(read_coco_json(path, ("annotations",))["annotations"]):
            try:
                captions[int(ann["image_id"])].append(str(ann["caption"]))
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"{path}: annotations[{i}] has no image_id/caption") from None
    return dict(captions)


def reference_captions(records: list[ImageRecord], captions_json: list[str]
                       ) -> dict[int, list[str]]:
    """References of every record (NFC): from `captions_json` when given, else the records'
    own."""
    if not captions_json:
        return {r.image_id: _nfc(r.captions) for r in records}
    coco = coco_captions(captions_json)
    missing = [r.image_id for r in records if not coco.get(r.image_id)]
    if missing:
        raise ValueError(f"image id {missing[0]} (and {len(missing) - 1} more) has no caption in "
                         f"data.captions_json {captions_json}")
    return {r.image_id: _nfc(coco[r.image_id]) for r in records}


def _nfc(captions: list[str]) -> list[str]:
    return [unicodedata.normalize("NFC", c) for c in captions]
