"""Named subsets of the scored split (`eval.subsets = {name = "ids.json", ...}`): the metrics of
each subset alone, as the field scores nocaps' in-, near- and out-of-domain images.

A subset file lists image ids of `eval.split`:

    ids.json   a json list of integer ids, [1, 2, 3], or an object {"image_ids": [1, 2, 3]}
    ids.txt    (any other suffix) one integer id per line; blank lines and `#` comments ignored

Every id must be an image of the split (a subset reaching outside it is a mistake, refused
naming the subset, its file, how many ids and one of them); a subset without ids is refused.

Per subset, `evaluate score` computes (`subset_scores`):

    pycocoevalcap  on the subset's captions and references alone, so CIDEr-D uses the
                   subset's document frequencies (not the full split's)
    CHAIR          the per-image CHAIR results of the split counted over the subset's captions
                   exactly as the corpus is (`evaluate.chair.corpus_chair`)
    CLIP-S         the mean of the subset's per-image scores, when computed
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from evaluate.chair import ImageChair, corpus_chair, metric_names
from evaluate.coco_metrics import CaptionScorer
from shared.config import Config

MEAN_OF_IMAGES = ("CLIP-S", "RefCLIP-S", "CLIP-S_run", "RefCLIP-S_run")
"""Metrics whose corpus value is the mean of the per-image values (exact on a subset)."""


def _image_id(path: Path, where: str, value: Any) -> int:
    """`value` as an image id (an integer, not a bool), else a one-line ValueError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{path}: {where} is not an integer image id: {value!r}")
    return value


def _json_ids(path: Path, text: str) -> list[int]:
    """The ids of a json subset file: a list, or an object with an "image_ids" list."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid json ({err})") from None
    where = "entry"
    if isinstance(data, dict):
        if "image_ids" not in data:
            raise ValueError(f'{path}: a json object needs an "image_ids" list, has keys '
                             f"{sorted(data)[:5]}")
        data, where = data["image_ids"], '"image_ids" entry'
    if not isinstance(data, list):
        raise ValueError(f'{path}: expected a json list of image ids or {{"image_ids": [...]}}, '
                         f"got {type(data).__name__}")
    return [_image_id(path, f"{where} {k}", v) for k, v in enumerate(data)]


def _text_ids(path: Path, text: str) -> list[int]:
    """The ids of a text subset file: one integer per line, blank lines and # comments
    ignored."""
    ids = []
    for number, line in enumerate(text.splitlines(), start=1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        try:
            ids.append(int(entry))
        except ValueError:
            raise ValueError(f"{path}: line {number} is not an integer image id: "
                             f"{entry!r}") from None
    return ids


def read_subset_file(path: str | Path) -> list[int]:
    """The image ids a subset file lists (json if it ends in .json, else text), in file
    order; one-line ValueError naming the file and the bad entry (an id listed twice too)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: cannot read subset file ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''})") from None
    ids = _json_ids(path, text) if path.suffix.lower() == ".json" else _text_ids(path, text)
    seen: set[int] = set()
    for image_id in ids:
        if image_id in seen:
            raise ValueError(f"{path}: image id {image_id} is listed twice")
        seen.add(image_id)
    return ids


def load_subsets(config: Config, split_ids: Collection[int]) -> dict[str, frozenset[int]]:
    """name -> image ids of every `eval.subsets` entry, in config order; refused (one line)
    when a subset is empty or lists ids that are not in `split_ids` (the scored split)."""
    subsets: dict[str, frozenset[int]] = {}
    known = set(split_ids)
    for name, path in config.eval.subsets.items():
        ids = read_subset_file(path)
        if not ids:
            raise ValueError(f"subset '{name}' ({path}) lists no image ids")
        outside = [i for i in ids if i not in known]
        if outside:
            raise ValueError(f"subset '{name}' ({path}): {len(outside)} of its {len(ids)} image "
                             f"ids are not in split '{config.eval.split}' ({len(known)} images), "
                             f"e.g. {outside[0]}")
        subsets[name] = frozenset(ids)
    return subsets


def memberships(subsets: Mapping[str, frozenset[int]], image_id: int) -> list[str]:
    """The names of the subsets `image_id` belongs to, in config order."""
    return [name for name, ids in subsets.items() if image_id in ids]


def subset_scores(ids: frozenset[int], scorer: CaptionScorer,
                  chair: Mapping[int, ImageChair] | None, vocabulary: str,
                  per_image: Mapping[int, Mapping[str, float]]
                  ) -> tuple[dict[str, float], dict[str, float]]:
    """(metrics, CHAIR counts) of the captions of `ids` alone (see the module docstring);
    `scorer`: the split's captions, tokenised; `chair` None: CHAIR was not computed;
    `per_image`: the split's per-image scores."""
    ordered = sorted(ids)
    metrics = dict(scorer.score(ordered).corpus)
    counts: dict[str, float] = {}
    if chair is not None:
        counts = corpus_chair((chair[i] for i in ordered), vocabulary)
        names = metric_names(vocabulary)
        metrics.update({name: counts.pop(name) for name in names})
    for name in MEAN_OF_IMAGES:
        if all(name in per_image[i] for i in ordered):
            metrics[name] = float(np.mean([per_image[i][name] for i in ordered]))
    return metrics, counts
