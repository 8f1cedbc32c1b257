"""This project's extended CHAIR vocabulary (`eval.chair_vocabulary = "extended"`), an opt-in
next to the original's (`evaluate.chair_vocabulary`); results are reported as `CHAIRs_extended`
/ `CHAIRi_extended`, never as CHAIR.

Differences from the original rules: a larger synonym table (`evaluate.coco_objects`), inflect
singulars with guards ("bus" stays "bus", "glasses" -> "glass"), words split on any
non-letter ("hot-dog" is a hot dog), greedy longest match of phrases of up to three words, and
phrases that name no object ("bus stop", "train track", "chair lift", "toilet paper") consumed
without a mention. Every mention counts, as in the original.
"""

from __future__ import annotations

import functools
import importlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from evaluate.chair_vocabulary import Mention
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
class ExtendedVocabulary:
    """Caption words and phrases -> object category names, plus phrases that name no object.

    Build it with `from_synonyms`, `coco` or `from_categories` (COCO `categories` entries).
    """

    categories: tuple[str, ...]
    phrases: Mapping[tuple[str, ...], str]
    non_objects: frozenset[tuple[str, ...]] = field(default_factory=frozenset)
    name: str = "extended"

    @classmethod
    def from_synonyms(cls, synonyms: Mapping[str, Iterable[str]],
                      non_objects: Iterable[str] = NOT_OBJECT_PHRASES) -> ExtendedVocabulary:
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
    def coco(cls) -> ExtendedVocabulary:
        """The 80 COCO categories with `COCO_SYNONYMS`."""
        return cls.from_synonyms(COCO_SYNONYMS)

    @classmethod
    def from_categories(cls, categories: Sequence[Mapping[str, Any]]) -> ExtendedVocabulary:
        """From COCO `categories` entries: an entry's own `synonyms` list when it has one,
        else `COCO_SYNONYMS[name]`, else just the name. Entries sharing a name are merged."""
        synonyms: dict[str, list[str]] = {}
        for entry in categories:
            name = str(entry["name"])
            words = entry.get("synonyms") or COCO_SYNONYMS.get(name, (name,))
            merged = synonyms.setdefault(name, [])
            merged += [w for w in dict.fromkeys(words) if w not in merged]
        return cls.from_synonyms(synonyms)

    def category_of(self, name: str) -> str:
        """An instance category name is its own category."""
        return name

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
