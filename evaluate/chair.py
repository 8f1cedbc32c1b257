"""CHAIR object-hallucination metrics (Rohrbach et al., 2018, "Object Hallucination in
Image Captioning"), written for this project.

An object is "mentioned" when a caption names one of the dataset's categories (through
`ObjectVocabulary`); it is "hallucinated" when it is not in the image's ground truth, which
unites the image's instance annotations with the objects its reference captions mention.
As in the original implementation each category counts once per caption.

    CHAIR_i        hallucinated objects / mentioned objects (summed over captions)
    CHAIR_s        captions with at least one hallucinated object / captions
    object_recall  ground-truth objects mentioned / ground-truth objects (summed over images)
"""

from __future__ import annotations

import functools
import importlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from evaluate.coco_objects import COCO_SYNONYMS, NOT_OBJECT_PHRASES

MAX_PHRASE_WORDS = 3
"""Longest synonym / non-object phrase, in words."""

_WORD = re.compile(r"[^\W_]+")
"""A caption word: a run of letters and digits (so "hot-dog" is two words, "man's" too)."""

_SINGULAR_GUARD: dict[str, str] = {
    # singular words inflect cuts an "s" from ("tennis" -> "tenni", "thermos" -> "thermo")
    **{w: w for w in ("tennis", "thermos", "gas", "lens", "canvas", "christmas", "species",
                      "series", "is", "was", "has", "his", "its", "this", "always")},
    # plurals of words `singular` keeps for their -us ending; the COCO name "skis"
    "buses": "bus", "busses": "bus", "minibuses": "minibus", "skis": "ski",
}
"""Words whose singular is fixed here instead of asked from inflect."""


@dataclass(frozen=True)
class Mention:
    """A caption's words naming an object: the text, its category and character offsets."""

    word: str
    category: str
    start: int
    end: int


def _unchecked(target: Any = None, **_options: Any) -> Any:
    """Stand-in for typeguard's `@typechecked` / `@typechecked(...)`: no instrumentation."""
    return target if target is not None else (lambda f: f)


@functools.cache
def _inflect() -> ModuleType:
    """The `inflect` module, imported without typeguard instrumenting its methods.

    inflect >= 7.2 decorates its engine with typeguard's `@typechecked`, which re-compiles the
    methods at import (seconds of CPU, jaraco/inflect#212) only to check argument types; the
    decorator is switched off while inflect is imported (a no-op if inflect is already in).
    """
    try:
        typeguard = importlib.import_module("typeguard")
    except ImportError:
        return importlib.import_module("inflect")
    typechecked = typeguard.typechecked
    typeguard.typechecked = _unchecked
    try:
        return importlib.import_module("inflect")
    finally:
        typeguard.typechecked = typechecked


@functools.cache
def _engine() -> Any:
    return _inflect().engine()


@functools.lru_cache(maxsize=65536)
def singular(word: str) -> str:
    """The singular of a lower-case word ("dogs" -> "dog", "people" -> "person").

    Kept as they are: words of one or two characters, numbers, and words ending in -ss or
    -us ("glass", "bus", "cactus": inflect gives "bu", "cactu"); `_SINGULAR_GUARD` overrides
    inflect for a few more.
    """
    if word in _SINGULAR_GUARD:
        return _SINGULAR_GUARD[word]
    if len(word) < 3 or not word.isalpha() or word.endswith(("ss", "us")):
        return word
    return _engine().singular_noun(word) or word


def _phrase_key(phrase: str) -> tuple[str, ...]:
    """The singular words of a synonym phrase; ValueError if empty or too long."""
    key = tuple(singular(w) for w in _WORD.findall(phrase.lower()))
    if not 1 <= len(key) <= MAX_PHRASE_WORDS:
        raise ValueError(f"object phrase {phrase!r} must have 1 to {MAX_PHRASE_WORDS} words")
    return key


@dataclass(frozen=True)
class ObjectVocabulary:
    """Caption words and phrases -> object category names, plus phrases that name no object.

    Build it with `from_synonyms`, `from_categories` (COCO `categories` entries) or
    `from_instances` (COCO instances json files).
    """

    categories: tuple[str, ...]
    phrases: Mapping[tuple[str, ...], str]
    non_objects: frozenset[tuple[str, ...]] = field(default_factory=frozenset)

    @classmethod
    def from_synonyms(cls, synonyms: Mapping[str, Iterable[str]],
                      non_objects: Iterable[str] = NOT_OBJECT_PHRASES) -> ObjectVocabulary:
        """Category name -> its words/phrases (the name itself is always one of them).

        ValueError when one phrase names two categories.
        """
        phrases: dict[tuple[str, ...], str] = {}
        for category, words in synonyms.items():
            for phrase in (category, *words):
                key = _phrase_key(phrase)
                if phrases.setdefault(key, category) != category:
                    raise ValueError(f"object phrase {phrase!r} names both "
                                     f"{phrases[key]!r} and {category!r}")
        return cls(tuple(synonyms), phrases,
                   frozenset(_phrase_key(p) for p in non_objects).difference(phrases))

    @classmethod
    def coco(cls) -> ObjectVocabulary:
        """The 80 COCO categories with `COCO_SYNONYMS`."""
        return cls.from_synonyms(COCO_SYNONYMS)

    @classmethod
    def from_categories(cls, categories: Sequence[Mapping[str, Any]]) -> ObjectVocabulary:
        """From COCO `categories` entries: an entry's own `synonyms` list when it has one,
        else `COCO_SYNONYMS[name]`, else just the name. Entries sharing a name are merged."""
        synonyms: dict[str, list[str]] = {}
        for entry in categories:
            name = str(entry["name"])
            words = entry.get("synonyms") or COCO_SYNONYMS.get(name, (name,))
            merged = synonyms.setdefault(name, [])
            merged += [w for w in dict.fromkeys(words) if w not in merged]
        return cls.from_synonyms(synonyms)

    @classmethod
    def from_instances(cls, paths: Iterable[str | Path]) -> ObjectVocabulary:
        """From the `categories` of COCO instances json files (merged by name)."""
        return cls.from_categories(
            [c for p in paths for c in _read_instances(Path(p))["categories"]])

    def mentions(self, caption: str) -> list[Mention]:
        """The objects a caption names, in order, by greedy longest match of singularised
        words; `word`, `start`, `end` refer to the original caption (`caption[start:end]`)."""
        spans = [m.span() for m in _WORD.finditer(caption)]
        words = [singular(caption[a:b].lower()) for a, b in spans]
        found: list[Mention] = []
        i = 0
        while i < len(words):
            n, category = self._match(words, i)
            if category is not None:
                start, end = spans[i][0], spans[i + n - 1][1]
                found.append(Mention(caption[start:end], category, start, end))
            i += max(n, 1)
        return found

    def _match(self, words: list[str], i: int) -> tuple[int, str | None]:
        """(words consumed, category) of the longest phrase at `words[i]`: (0, None) for none,
        (n, None) for a non-object phrase."""
        for n in range(min(MAX_PHRASE_WORDS, len(words) - i), 0, -1):
            key = tuple(words[i:i + n])
            if key in self.phrases:
                return n, self.phrases[key]
            if key in self.non_objects:
                return n, None
        return 0, None


def _read_instances(path: Path) -> dict[str, Any]:
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


def ground_truth_objects(instances_paths: Iterable[str | Path],
                         references: Mapping[int, Sequence[str]],
                         vocab: ObjectVocabulary) -> dict[int, set[str]]:
    """Image id -> object categories it shows: its instance annotations' categories united
    with the objects its reference captions mention. Images listed in the instances files
    without annotations get an empty set (plus their reference objects)."""
    truth: dict[int, set[str]] = {}
    for path in map(Path, instances_paths):
        data = _read_instances(path)
        names = {c["id"]: str(c["name"]) for c in data["categories"]}
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
    """CHAIR details of one caption (lists of category names; `covered` in mention order)."""

    image_id: int
    mentioned: list[str]
    hallucinated: list[str]
    covered: list[str]
    ground_truth: list[str]
    hallucinated_words: list[Mention]

    def to_json(self) -> dict[str, Any]:
        """Plain dict (lists, str, int) for json; mentions as {word, category, start, end}."""
        return asdict(self)


def image_chair(image_id: int, caption: str, truth: set[str],
                vocab: ObjectVocabulary) -> ImageChair:
    """CHAIR details of one caption against its image's ground-truth categories."""
    found = vocab.mentions(caption)
    mentioned = list(dict.fromkeys(m.category for m in found))
    hallucinated = [c for c in mentioned if c not in truth]
    return ImageChair(image_id, mentioned, hallucinated,
                      covered=[c for c in mentioned if c in truth],
                      ground_truth=sorted(truth),
                      hallucinated_words=[m for m in found if m.category in hallucinated])


def chair_scores(captions: Mapping[int, str], ground_truth: Mapping[int, set[str]],
                 vocab: ObjectVocabulary) -> tuple[dict[str, float], dict[int, ImageChair]]:
    """Corpus CHAIR_i, CHAIR_s, object_recall (see the module docstring; 0.0 when the
    denominator is 0) and counts (mentions, hallucinations, images), plus per-image details.

    ValueError when an image of `captions` has no ground-truth entry.
    """
    missing = sorted(set(captions) - set(ground_truth))
    if missing:
        raise ValueError(f"no ground-truth objects for image id {missing[0]}"
                         + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    images = {i: image_chair(i, captions[i], ground_truth[i], vocab) for i in captions}
    mentions = sum(len(r.mentioned) for r in images.values())
    hallucinations = sum(len(r.hallucinated) for r in images.values())
    truth_total = sum(len(r.ground_truth) for r in images.values())
    scores = {
        "CHAIR_i": hallucinations / mentions if mentions else 0.0,
        "CHAIR_s": (sum(bool(r.hallucinated) for r in images.values()) / len(images)
                    if images else 0.0),
        "object_recall": (sum(len(r.covered) for r in images.values()) / truth_total
                          if truth_total else 0.0),
        "mentions": mentions,
        "hallucinations": hallucinations,
        "images": len(images),
    }
    return scores, images
