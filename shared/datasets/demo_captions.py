"""Captions of the embedded demo dataset: a small grammar of templates over a scene's objects.

Every caption names every object of its scene (colour, category noun, optionally the size,
its position or its relation to another object); nouns are drawn from `SYNONYMS` ("ball" for
circle, "box" for square, ...) with probability `synonym_rate`. `scene_captions` draws
`CAPTIONS_PER_IMAGE` distinct captions of `MIN_WORDS`-`MAX_WORDS` words from the generator
passed in.
"""

from __future__ import annotations

import numpy as np

from shared.datasets.demo_scenes import Scene, SceneObject, pick
from shared.vocabulary import tokenize

SYNONYMS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "ball", "disc"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle",),
    "star": ("star",),
    "cross": ("cross", "plus"),
    "diamond": ("diamond", "rhombus"),
    "hexagon": ("hexagon",),
    "heart": ("heart",),
}
"""Words a caption may use for each category (the first is the category name)."""

_POSITION_PHRASES = {
    "left": ("on the left", "on the left side", "at the left"),
    "right": ("on the right", "on the right side", "at the right"),
    "top": ("at the top", "near the top", "in the upper part"),
    "bottom": ("at the bottom", "near the bottom", "in the lower part"),
    "center": ("in the center", "in the middle"),
}
_SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
_COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
MIN_WORDS, MAX_WORDS = 4, 18
CAPTIONS_PER_IMAGE = 5


def article(word: str) -> str:
    """"a" or "an" before `word`."""
    return "an" if word[0] in "aeiou" else "a"


def _noun(obj: SceneObject, rng: np.random.Generator, synonym_rate: float) -> str:
    """The category's name, or with probability `synonym_rate` one of its synonyms."""
    synonyms = SYNONYMS[obj.category][1:]
    return pick(rng, synonyms) if synonyms and rng.random() < synonym_rate else obj.category


def _phrase(obj: SceneObject, rng: np.random.Generator, synonym_rate: float,
            size: bool | None = None) -> str:
    """'a small red ball': article, optional size, colour, the category's noun."""
    noun = _noun(obj, rng, synonym_rate)
    use_size = bool(rng.random() < 0.5) if size is None else size
    words = ([pick(rng, _SIZE_WORDS[obj.size])] if use_size else []) + [obj.color, noun]
    return f"{article(words[0])} {' '.join(words)}"


def _where(obj: SceneObject, rng: np.random.Generator) -> str:
    return pick(rng, _POSITION_PHRASES[obj.position])


def _relation(a: SceneObject, b: SceneObject) -> str:
    (ax, ay), (bx, by) = a.center, b.center
    if abs(ax - bx) >= abs(ay - by):
        return "to the left of" if ax < bx else "to the right of"
    return "above" if ay < by else "below"


def join_phrases(parts: list[str]) -> str:
    """"x", "x and y", "x, y and z"."""
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _templates(scene: Scene, rng: np.random.Generator, rate: float) -> list[str]:
    """One candidate caption per template applicable to the scene (random wording; `rate`:
    the synonym rate of object nouns)."""
    objs, bg = scene.objects, scene.background
    n = len(objs)
    count = _COUNT_WORDS[n]
    out: list[str] = []
    if n == 1:
        (o,) = objs
        out += [
            f"{_phrase(o, rng, rate)} {_where(o, rng)}",
            f"{_phrase(o, rng, rate, True)} on a {bg} background",
            f"there is {_phrase(o, rng, rate)} {_where(o, rng)}",
            f"an image with a single {o.color} {_noun(o, rng, rate)}",
            f"{_where(o, rng)} there is {_phrase(o, rng, rate)}",
            f"one {o.size} {o.color} {_noun(o, rng, rate)} on a plain background",
            f"a picture of {_phrase(o, rng, rate)} {_where(o, rng)}",
        ]
        return out
    first, *rest = objs
    out += [
        join_phrases([f"{_phrase(o, rng, rate, False)} {_where(o, rng)}" for o in objs]),
        f"{count} shapes: " + join_phrases([_phrase(o, rng, rate) for o in objs]),
        f"there is {_phrase(first, rng, rate)} next to "
        + join_phrases([_phrase(o, rng, rate) for o in rest]),
        f"{_phrase(first, rng, rate, False)} {_relation(first, rest[0])} "
        f"{_phrase(rest[0], rng, rate, False)}"
        + ("" if n == 2 else f" and {_phrase(rest[1], rng, rate, False)} "
                             f"{_where(rest[1], rng)}"),
        f"{count} objects on a {bg} background: "
        + join_phrases([_phrase(o, rng, rate, False) for o in objs]),
        join_phrases([f"{_where(o, rng)} is {_phrase(o, rng, rate, False)}" for o in objs]),
        f"{count} colorful shapes including " + join_phrases([_phrase(o, rng, rate) for o in objs]),
    ]
    return out


def scene_captions(scene: Scene, rng: np.random.Generator, n: int = CAPTIONS_PER_IMAGE,
                   synonym_rate: float = 0.5) -> list[str]:
    """`n` distinct captions of 4-18 words that mention every object of the scene."""
    captions: list[str] = []
    for _ in range(50):
        candidates = _templates(scene, rng, synonym_rate)
        for i in rng.permutation(len(candidates)):
            text = candidates[i]
            if MIN_WORDS <= len(tokenize(text)) <= MAX_WORDS and text not in captions:
                captions.append(text)
            if len(captions) == n:
                return [_finish(c, rng) for c in captions]
    raise RuntimeError(f"could not write {n} captions for scene {scene}")


def _finish(text: str, rng: np.random.Generator) -> str:
    text = text[0].upper() + text[1:]
    return text + "." if rng.random() < 0.5 else text
