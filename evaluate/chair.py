"""CHAIR object-hallucination metrics (Rohrbach et al., 2018, "Object Hallucination in
Image Captioning"), counted as the original code (LisaAnne/Hallucination `utils/chair.py`) does.

A caption's mentions come from a vocabulary (`evaluate.chair_vocabulary`: the original's rules
by default, `eval.chair_vocabulary = "extended"` for this project's table). A mention is
hallucinated when its category is not among the image's ground-truth objects: its instance
annotations' categories united with every object its reference captions mention.

    CHAIRi         hallucinated mentions / all mentions, every mention counted, repeats
                   included ("a dog and a dog and a cat", truth {dog}: 1/3)
    CHAIRs         captions with at least one hallucinated mention / captions
    object_recall  distinct ground-truth objects mentioned / ground-truth objects (not in the
                   original; summed over images)

Metric names are the original's (`CHAIRs`, `CHAIRi`); under the extended vocabulary they get
the suffix `_extended` (`metric_names`) so they are never mistaken for CHAIR.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from evaluate.chair_vocabulary import Mention, ObjectWords, vocabulary_for

__all__ = ["ImageChair", "Mention", "chair_scores", "corpus_chair", "ground_truth_objects",
           "image_chair", "metric_names", "read_categories", "read_instances", "vocabulary_of"]


def metric_names(vocabulary: str) -> tuple[str, str]:
    """(CHAIRs, CHAIRi) metric names under `eval.chair_vocabulary`."""
    suffix = "" if vocabulary == "original" else f"_{vocabulary}"
    return f"CHAIRs{suffix}", f"CHAIRi{suffix}"


def read_categories(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """The `categories` entries of COCO instances json files, in file order."""
    return [c for p in paths for c in read_instances(Path(p))["categories"]]


def vocabulary_of(instances_paths: Iterable[str | Path], kind: str = "original") -> ObjectWords:
    """The CHAIR vocabulary of a dataset's instances files (`vocabulary_for` its categories)."""
    return vocabulary_for(read_categories(instances_paths), kind)


def read_instances(path: Path) -> dict[str, Any]:
    """A COCO instances json (checked: `categories`, `annotations`); one-line ValueError
    naming the file when it is unreadable or malformed."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read COCO instances json "
                         f"({type(e).__name__}: {str(e).splitlines()[0]})") from None
    problem = _instances_problem(data)
    if problem:
        raise ValueError(f"{path}: not a COCO instances json ({problem})")
    return data


def _instances_problem(data: Any) -> str | None:
    """What makes `data` unusable as COCO instances, or None."""
    if not isinstance(data, dict):
        return "top level is not an object"
    for key, fields in (("categories", ("id", "name")),
                        ("annotations", ("image_id", "category_id"))):
        entries = data.get(key)
        if not isinstance(entries, list):
            return f"no '{key}' list"
        bad = next((e for e in entries
                    if not isinstance(e, dict) or any(f not in e for f in fields)), None)
        if bad is not None:
            return f"a '{key}' entry lacks {' or '.join(fields)}: {str(bad)[:80]}"
    return None


def ground_truth_objects(instances: Iterable[str | Path] | Mapping[str, Mapping[str, Any]],
                         references: Mapping[int, Sequence[str]],
                         vocab: ObjectWords) -> dict[int, set[str]]:
    """Image id -> object categories it shows: its instance annotations' categories united
    with the objects its reference captions mention. Images listed in the instances files
    without annotations get an empty set (plus their reference objects). `instances`: the
    files' paths, or path -> already parsed content (read once by `evaluate score`)."""
    loaded = (instances.items() if isinstance(instances, Mapping)
              else ((str(p), read_instances(Path(p))) for p in instances))
    truth: dict[int, set[str]] = {}
    for path, data in loaded:
        names = {c["id"]: vocab.category_of(str(c["name"])) for c in data["categories"]}
        for image in data.get("images", []):
            if isinstance(image, dict) and "id" in image:
                truth.setdefault(int(image["id"]), set())
        for ann in data["annotations"]:
            if ann["category_id"] not in names:
                raise ValueError(f"{path}: annotation {ann.get('id')} has unknown "
                                 f"category_id {ann['category_id']}")
            truth.setdefault(int(ann["image_id"]), set()).add(names[ann["category_id"]])
    for image_id, captions in references.items():
        objects = truth.setdefault(int(image_id), set())
        objects.update(m.category for caption in captions for m in vocab.mentions(caption))
    return truth


@dataclass
class ImageChair:
    """CHAIR details of one caption: `mentioned` and `hallucinated` list a category per
    mention (repeats included, in caption order); `covered` the distinct ground-truth
    categories mentioned."""

    image_id: int
    mentioned: list[str]
    hallucinated: list[str]
    covered: list[str]
    ground_truth: list[str]
    hallucinated_words: list[Mention]

    def to_json(self) -> dict[str, Any]:
        """Plain dict (lists, str, int) for json; mentions as {word, category, start, end}."""
        return asdict(self)


def image_chair(image_id: int, caption: str, truth: set[str], vocab: ObjectWords) -> ImageChair:
    """CHAIR details of one caption against its image's ground-truth categories."""
    found = vocab.mentions(caption)
    mentioned = [m.category for m in found]
    return ImageChair(image_id, mentioned,
                      hallucinated=[c for c in mentioned if c not in truth],
                      covered=[c for c in dict.fromkeys(mentioned) if c in truth],
                      ground_truth=sorted(truth),
                      hallucinated_words=[m for m in found if m.category not in truth])


def chair_scores(captions: Mapping[int, str], ground_truth: Mapping[int, set[str]],
                 vocab: ObjectWords) -> tuple[dict[str, float], dict[int, ImageChair]]:
    """Corpus CHAIRs, CHAIRi (named by `metric_names(vocab.name)`), object_recall (0.0 when a
    denominator is 0) and counts (mentions, hallucinations, images), plus per-image details.

    ValueError when an image of `captions` has no ground-truth entry.
    """
    missing = sorted(set(captions) - set(ground_truth))
    if missing:
        raise ValueError(f"no ground-truth objects for image id {missing[0]}"
                         + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    images = {i: image_chair(i, captions[i], ground_truth[i], vocab) for i in captions}
    return corpus_chair(images.values(), vocab.name), images


def corpus_chair(images: Iterable[ImageChair], vocabulary: str) -> dict[str, float]:
    """CHAIRs, CHAIRi (named by `metric_names(vocabulary)`), object_recall (0.0 when a
    denominator is 0) and counts of a set of per-image results: `chair_scores`' corpus values
    on all of them, a subset's on some."""
    results = list(images)
    mentions = sum(len(r.mentioned) for r in results)
    hallucinations = sum(len(r.hallucinated) for r in results)
    truth_total = sum(len(r.ground_truth) for r in results)
    name_s, name_i = metric_names(vocabulary)
    return {
        name_s: (sum(bool(r.hallucinated) for r in results) / len(results)
                 if results else 0.0),
        name_i: hallucinations / mentions if mentions else 0.0,
        "object_recall": (sum(len(r.covered) for r in results) / truth_total
                          if truth_total else 0.0),
        "mentions": mentions,
        "hallucinations": hallucinations,
        "images": len(results),
    }
