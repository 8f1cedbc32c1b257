"""Which objects a caption mentions, by the rules of the original CHAIR code.

`ChairVocabulary.coco()` is the original (Rohrbach et al. 2018, `utils/chair.py`): lower-case,
NLTK tokens, Pattern 2.6 singulars (`evaluate.chair_text`), one left-to-right pass that joins a
word pair of its double-word rules into one word ("hot dog", "teddy bear", "baby elephant" ->
"elephant", "passenger train" -> "train", "bow tie" -> "tie", "toilet seat" -> "toilet"), "seat"
dropped when "toilet" is in the caption, then every remaining word that is an entry of its
synonym table is a mention of that entry's category, repeats included. Phrases such as "bus
stop" or "train station" are not excluded ("bus stop" still names no bus, but only because
Pattern turns "bus" into "bu"; "buses" counts). `ChairVocabulary.from_synonyms` applies the same
rules to a dataset's own categories (the demo's shapes).

`vocabulary_for` picks the vocabulary for `eval.chair_vocabulary`: "original" (this module) or
"extended" (`evaluate.chair_extended`, this project's larger table, reported under its own
metric names).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from evaluate.chair_synonyms import SYNONYM_LINES, double_word_rules, synonym_table
from evaluate.chair_text import caption_words, singular

CHAIR_VOCABULARIES = ("original", "extended")
"""Choices of `eval.chair_vocabulary`."""


@dataclass(frozen=True)
class Mention:
    """A caption's words naming an object: the text, its category and character offsets."""

    word: str
    category: str
    start: int
    end: int


class ObjectWords(Protocol):
    """What CHAIR needs of a vocabulary: its categories and the mentions in a caption."""

    name: str
    categories: tuple[str, ...]

    def mentions(self, caption: str) -> list[Mention]:
        """Every object mention of the caption, in order, repeats included."""
        ...

    def category_of(self, name: str) -> str:
        """The category an instance annotation's category name counts as."""
        ...


@dataclass(frozen=True)
class ChairVocabulary:
    """Word -> category table and double-word rules, applied as the original CHAIR does."""

    categories: tuple[str, ...]
    synonyms: Mapping[str, str]
    double_words: Mapping[str, str] = field(default_factory=dict)
    name: str = "original"

    @classmethod
    def coco(cls) -> ChairVocabulary:
        """The original CHAIR: its 80-category synonym table and its hard-coded rules."""
        table = synonym_table()
        return cls(tuple(dict.fromkeys(table.values())), table, double_word_rules())

    @classmethod
    def from_synonyms(cls, synonyms: Mapping[str, Iterable[str]]) -> ChairVocabulary:
        """A dataset's own categories (name -> its words; the name is always one of them),
        under the original's rules. Each word is entered as written and as Pattern
        singularises it word by word ("cross" -> "cros"), so singular and plural captions
        both match; two-word names become double words. ValueError for a word of more than
        two words or one that names two categories."""
        table: dict[str, str] = {}
        pairs: dict[str, str] = {}
        for category, words in synonyms.items():
            for phrase in (category, *words):
                parts = phrase.lower().split()
                if not 1 <= len(parts) <= 2:
                    raise ValueError(f"object word {phrase!r}: the original CHAIR rules match "
                                     "one- or two-word names")
                for key in {" ".join(parts), " ".join(singular(p) for p in parts)}:
                    if table.setdefault(key, category) != category:
                        raise ValueError(f"object word {phrase!r} names both "
                                         f"{table[key]!r} and {category!r}")
                    if len(parts) == 2:
                        pairs[key] = key
        return cls(tuple(synonyms), table, pairs)

    def category_of(self, name: str) -> str:
        """An instance category name's category (the original: `inverse_synonym_dict[name]`)."""
        return self.synonyms.get(name, name)

    def mentions(self, caption: str) -> list[Mention]:
        """Every mention, in order and with repeats (the original's `caption_to_words`)."""
        words = caption_words(caption)
        joined: list[tuple[str, int, int]] = []
        i = 0
        while i < len(words):
            if i + 1 < len(words):
                pair = f"{words[i][0]} {words[i + 1][0]}"
                if pair in self.double_words:
                    joined.append((self.double_words[pair], words[i][1], words[i + 1][2]))
                    i += 2
                    continue
            joined.append(words[i])
            i += 1
        present = {w for w, _, _ in joined}
        if "toilet" in present and "seat" in present:
            joined = [entry for entry in joined if entry[0] != "seat"]
        return [Mention(caption[a:b], self.synonyms[w], a, b)
                for w, a, b in joined if w in self.synonyms]


def vocabulary_for(categories: Sequence[Mapping[str, Any]], kind: str = "original"
                   ) -> ObjectWords:
    """The CHAIR vocabulary for a dataset's COCO `categories` entries.

    "original": the original COCO table when every category is a COCO category and none brings
    its own `synonyms`; otherwise the entries' own synonyms (else their name) under the
    original's rules. "extended": `evaluate.chair_extended.ExtendedVocabulary`.
    """
    if kind == "extended":
        from evaluate.chair_extended import ExtendedVocabulary
        return ExtendedVocabulary.from_categories(categories)
    if kind != "original":
        raise ValueError(f"unknown CHAIR vocabulary {kind!r} "
                         f"(eval.chair_vocabulary: {', '.join(CHAIR_VOCABULARIES)})")
    coco = ChairVocabulary.coco()
    names = [str(c["name"]) for c in categories]
    if all(n in coco.categories for n in names) and not any(c.get("synonyms")
                                                            for c in categories):
        return coco
    lines = {line.split(", ")[0]: line.strip().split(", ") for line in SYNONYM_LINES}
    synonyms: dict[str, list[str]] = {}
    for entry in categories:
        name = str(entry["name"])
        words = entry.get("synonyms") or lines.get(name, [name])
        merged = synonyms.setdefault(name, [])
        merged += [w.strip() for w in words if w.strip() and w.strip() not in merged]
    return ChairVocabulary.from_synonyms(synonyms)

