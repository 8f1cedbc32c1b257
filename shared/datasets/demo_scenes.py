"""The embedded demo dataset: synthetic scenes of coloured shapes in COCO's on-disk formats.

Each image shows 1-3 shapes (8 categories, 8 colours, small/large, left/right/top/bottom/
center) on a plain or graded background with mild noise, and has 5 reference captions from
varied templates and synonyms ("ball" for circle, "box" for square, ...). Written under
`demo.output_dir`:

    images/{train,val,test}/demo_<split>_<cocoid>.jpg
    dataset_demo.json                      Karpathy format (10% of train marked restval)
    annotations/captions_demo.json         COCO captions
    annotations/instances_demo.json        COCO instances (polygon segmentations)

    subsets/{in_prior,counter_prior}.json  test image ids (with `demo.prior_pairs`)

A controlled language prior (`demo.prior_pairs`, e.g. ["star+heart"]): in train/val scenes a
pair member without its partner is repaired with probability `demo.prior_strength` (another
shape becomes the partner, else the member becomes a category outside every pair), so the
captions teach "star" -> "heart". A share `demo.counter_prior_fraction` of the test scenes is
drawn counter-prior: one member shown without its partner. The test ids are written as two
subsets by what each scene holds: `counter_prior` (some member without its partner) and
`in_prior` (the rest), for `eval.subsets`.

Everything follows from `demo.seed`: the same seed gives byte-identical files.
"""

from __future__ import annotations

import functools
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from shared.config import Config, ConfigError, DemoConfig
from shared.manifest import StageSpec, decide, remove_manifest, write_manifest
from shared.vocabulary import tokenize

CATEGORIES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "diamond",
                               "hexagon", "heart")
"""Object categories; category id = index + 1 (0 is background in masks)."""

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

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (210, 40, 40), "green": (40, 160, 60), "blue": (40, 70, 210),
    "yellow": (235, 205, 40), "orange": (245, 140, 30), "purple": (140, 60, 180),
    "black": (30, 30, 30), "brown": (130, 80, 40),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (248, 248, 248), "gray": (200, 200, 200), "beige": (235, 225, 200),
    "light blue": (205, 225, 245),
}
POSITIONS: dict[str, tuple[float, float]] = {
    "left": (0.2, 0.5), "right": (0.8, 0.5), "top": (0.5, 0.2), "bottom": (0.5, 0.8),
    "center": (0.5, 0.5),
}
_POSITION_PHRASES = {
    "left": ("on the left", "on the left side", "at the left"),
    "right": ("on the right", "on the right side", "at the right"),
    "top": ("at the top", "near the top", "in the upper part"),
    "bottom": ("at the bottom", "near the bottom", "in the lower part"),
    "center": ("in the center", "in the middle"),
}
_SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
_RADIUS = {"small": (0.07, 0.09), "large": (0.13, 0.16)}  # fraction of the image side
_COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
RESTVAL_FRACTION = 0.1
MIN_WORDS, MAX_WORDS = 4, 18
CAPTIONS_PER_IMAGE = 5
KARPATHY_NAME = "dataset_demo.json"
CAPTIONS_NAME = "annotations/captions_demo.json"
INSTANCES_NAME = "annotations/instances_demo.json"
SUBSETS_DIR = "subsets"
SUBSET_NAMES = ("in_prior", "counter_prior")
DATA_KEYS = ["demo.output_dir", "demo.seed", "demo.n_train", "demo.n_val", "demo.n_test",
             "demo.image_size", "demo.prior_pairs", "demo.prior_strength",
             "demo.counter_prior_fraction", "demo.synonym_rate"]


@dataclass(frozen=True)
class SceneObject:
    """One shape of a scene; `polygon` is in pixels, rounded as stored in the json."""

    category: str
    color: str
    size: str
    position: str
    polygon: tuple[float, ...]

    @property
    def category_id(self) -> int:
        return CATEGORIES.index(self.category) + 1

    @property
    def center(self) -> tuple[float, float]:
        xs, ys = self.polygon[0::2], self.polygon[1::2]
        return ((min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2)


@dataclass(frozen=True)
class Scene:
    """A whole image: background and shapes in drawing order (later ones on top)."""

    size: int
    background: str
    gradient: tuple[float, float]
    objects: tuple[SceneObject, ...]


@dataclass(frozen=True)
class DemoPaths:
    """Where the generated files of a demo dataset live."""

    root: Path

    @property
    def karpathy_json(self) -> Path:
        return self.root / KARPATHY_NAME

    @property
    def image_root(self) -> Path:
        return self.root / "images"

    @property
    def captions_json(self) -> Path:
        return self.root / CAPTIONS_NAME

    @property
    def instances_json(self) -> Path:
        return self.root / INSTANCES_NAME

    def subset(self, name: str) -> Path:
        """The json list of test image ids of subset `name` (in_prior, counter_prior)."""
        return self.root / SUBSETS_DIR / f"{name}.json"


# ----------------------------------------------------------------------------- shapes


def _unit_shape(category: str) -> np.ndarray:
    """Outline of a category as [n, 2] points within the unit disc, y pointing down."""
    def ring(n: int, radius: float = 1.0, start: float = -90.0) -> np.ndarray:
        angles = np.deg2rad(start + np.arange(n) * 360.0 / n)
        return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)

    if category == "circle":
        return ring(40)
    if category == "square":
        return np.array([[-0.8, -0.8], [0.8, -0.8], [0.8, 0.8], [-0.8, 0.8]])
    if category == "triangle":
        return ring(3) + np.array([0.0, 0.15])
    if category == "star":
        outer, inner = ring(5), ring(5, 0.42, -54.0)
        return np.stack([outer, inner], axis=1).reshape(-1, 2)
    if category == "cross":
        a, b = 0.3, 0.95
        return np.array([[-a, -b], [a, -b], [a, -a], [b, -a], [b, a], [a, a], [a, b], [-a, b],
                         [-a, a], [-b, a], [-b, -a], [-a, -a]])
    if category == "diamond":
        return np.array([[0.0, -1.0], [0.7, 0.0], [0.0, 1.0], [-0.7, 0.0]])
    if category == "hexagon":
        return ring(6, start=0.0)
    if category == "heart":
        t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        return np.stack([x, y + 2.5], axis=1) / 16.5
    raise ValueError(f"unknown demo category {category!r}")


def _place(category: str, cx: float, cy: float, radius: float, angle: float) -> tuple[float, ...]:
    pts = _unit_shape(category)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    pts = pts @ rot.T * radius + np.array([cx, cy])
    return tuple(round(float(v), 2) for v in pts.reshape(-1))


@dataclass(frozen=True)
class ScenePrior:
    """Pairs of categories that appear together; `strength`: the probability that a scene
    with a member but not its partner is repaired (see the module docstring)."""

    pairs: tuple[tuple[str, str], ...] = ()
    strength: float = 0.0

    @property
    def members(self) -> frozenset[str]:
        return frozenset(c for pair in self.pairs for c in pair)

    @property
    def free(self) -> tuple[str, ...]:
        """Categories outside every pair (what a repaired lone member becomes)."""
        return tuple(c for c in CATEGORIES if c not in self.members)

    def partner(self, category: str) -> str | None:
        return next((b if a == category else a for a, b in self.pairs if category in (a, b)),
                    None)

    def lone_members(self, categories: list[str]) -> list[str]:
        """Pair members present without their partner, in scene order (repeats once)."""
        return list(dict.fromkeys(c for c in categories if c in self.members
                                  and self.partner(c) not in categories))

    def follow(self, categories: list[str], rng: np.random.Generator) -> list[str]:
        """A training scene's categories: lone members repaired with probability strength."""
        if self.lone_members(categories) and rng.random() < self.strength:
            return self._repair(categories, rng)
        return categories

    def counter(self, categories: list[str], rng: np.random.Generator) -> list[str]:
        """A counter-prior scene: one member of a random pair at a random slot, its partner
        absent; every other pair is kept by the prior."""
        member = _pick(rng, _pick_pair(rng, self.pairs))
        slot = int(rng.integers(len(categories)))
        partner = self.partner(member)
        out = [_pick(rng, self.free) if c == partner else c for c in categories]
        out[slot] = member
        return self._repair(out, rng, keep={slot}, add_partners=False)

    def _repair(self, categories: list[str], rng: np.random.Generator,
                keep: frozenset[int] | set[int] = frozenset(), add_partners: bool = True
                ) -> list[str]:
        """Remove lone members (but those at `keep`): another free shape becomes the
        partner when there is one (and `add_partners`), else the member becomes free."""
        out = list(categories)
        kept = {out[i] for i in keep}
        while True:
            lone = [c for c in self.lone_members(out) if c not in kept]
            if not lone:
                return out
            member = lone[0]
            free_slots = [i for i, c in enumerate(out) if c not in self.members and i not in keep]
            if add_partners and free_slots:
                out[free_slots[int(rng.integers(len(free_slots)))]] = self.partner(member)
            else:
                slot = next(i for i, c in enumerate(out) if c == member and i not in keep)
                out[slot] = _pick(rng, self.free)


def _pick_pair(rng: np.random.Generator, pairs: tuple[tuple[str, str], ...]) -> tuple[str, str]:
    return pairs[int(rng.integers(len(pairs)))]


def scene_prior(demo: DemoConfig) -> ScenePrior:
    """The `demo.prior_pairs` / `demo.prior_strength` of a config (ConfigError if malformed)."""
    pairs = []
    for text in demo.prior_pairs:
        names = tuple(part.strip() for part in text.split("+"))
        if len(names) != 2 or any(n not in CATEGORIES for n in names) or names[0] == names[1]:
            raise ConfigError(f"config key 'demo.prior_pairs': {text!r} is not two different "
                              f"categories joined by '+' (categories: {', '.join(CATEGORIES)})")
        pairs.append(names)
    used = [c for pair in pairs for c in pair]
    twice = next((c for c in used if used.count(c) > 1), None)
    if twice is not None:
        raise ConfigError(f"config key 'demo.prior_pairs': '{twice}' is in two pairs")
    if len(used) == len(CATEGORIES):
        raise ConfigError("config key 'demo.prior_pairs': leave at least one category outside "
                          "every pair")
    return ScenePrior(tuple(pairs), demo.prior_strength)


def sample_scene(rng: np.random.Generator, size: int, prior: ScenePrior = ScenePrior(),
                 counter_prior: bool = False) -> Scene:
    """Draw a random scene of 1-3 mostly non-overlapping shapes; its categories follow
    `prior` (or, with `counter_prior`, break it once)."""
    n_objects = int(rng.choice([1, 2, 3], p=[0.3, 0.4, 0.3]))
    while True:
        positions = [str(p) for p in rng.choice(list(POSITIONS), n_objects, replace=False)]
        sizes = [_pick(rng, ("small", "large")) for _ in positions]
        centers, radii = [], []
        for pos, sz in zip(positions, sizes):
            lo, hi = _RADIUS[sz]
            r = float(rng.uniform(lo, hi))
            bx, by = POSITIONS[pos]
            cx = min(max(bx + rng.uniform(-0.04, 0.04), r), 1 - r)
            cy = min(max(by + rng.uniform(-0.04, 0.04), r), 1 - r)
            centers.append((cx, cy))
            radii.append(r)
        if all(math.dist(centers[i], centers[j]) >= 0.95 * (radii[i] + radii[j])
               for i in range(n_objects) for j in range(i + 1, n_objects)):
            break
    categories = [_pick(rng, CATEGORIES) for _ in range(n_objects)]
    if prior.pairs:
        categories = (prior.counter(categories, rng) if counter_prior
                      else prior.follow(categories, rng))
    objects = []
    for category, pos, sz, (cx, cy), r in zip(categories, positions, sizes, centers, radii):
        color = _pick(rng, list(COLORS))
        angle = math.radians(float(rng.uniform(-12, 12)))
        objects.append(SceneObject(category, color, sz, pos,
                                   _place(category, cx * size, cy * size, r * size, angle)))
    background = _pick(rng, list(BACKGROUNDS))
    gradient = (0.0, 0.0) if rng.random() < 0.5 else (float(rng.uniform(-20, 20)),
                                                       float(rng.uniform(-20, 20)))
    return Scene(size, background, gradient, tuple(objects))


PATTERNS: dict[str, str] = {
    "circle": "solid", "square": "horizontal stripes", "triangle": "vertical stripes",
    "star": "diagonal stripes", "cross": "anti-diagonal stripes", "diamond": "dots",
    "hexagon": "grid", "heart": "checks",
}
"""The surface pattern of each category, drawn in a darker shade of the object's colour: the
categories differ at the scale of a ViT patch (as real object categories differ in texture),
not only in outline, so a small CLIP trained for a minute can tell them apart."""

PATTERN_SHADE = 0.55
"""Brightness of the pattern relative to the object's colour (it covers < half the pixels,
so the object's median colour stays its named colour)."""


@functools.lru_cache(maxsize=16)
def pattern_mask(category: str, size: int) -> np.ndarray:
    """Boolean [size, size]: where `category`'s pattern is drawn (period: size / 16 px)."""
    period = max(4, size // 16)
    line = max(1, 3 * period // 8)
    y, x = np.mgrid[0:size, 0:size]
    kind = PATTERNS[category]
    if kind == "solid":
        return np.zeros((size, size), bool)
    if kind == "horizontal stripes":
        return y % period < line
    if kind == "vertical stripes":
        return x % period < line
    if kind == "diagonal stripes":
        return (x + y) % period < line
    if kind == "anti-diagonal stripes":
        return (x - y) % period < line
    if kind == "dots":
        return (x % period < line) & (y % period < line)
    if kind == "grid":
        thin = max(1, period // 4)
        return (x % period < thin) | (y % period < thin)
    if kind == "checks":
        half = max(2, period // 2)
        return ((x // half + y // half) % 2 == 0) & (x % half < 3 * half // 4) \
            & (y % half < 3 * half // 4)
    raise ValueError(f"unknown demo pattern {kind!r}")


def render_scene(scene: Scene, rng: np.random.Generator) -> Image.Image:
    """The RGB image of a scene: background (+ gradient), patterned shapes, colour jitter and
    noise."""
    size = scene.size
    ramp = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    shade = scene.gradient[0] * ramp[None, :] + scene.gradient[1] * ramp[:, None]
    base = np.asarray(BACKGROUNDS[scene.background], np.float32)
    pixels = np.clip(base[None, None, :] + shade[:, :, None], 0, 255)
    for obj in scene.objects:
        jitter = rng.integers(-15, 16, 3)
        fill = np.clip(np.asarray(COLORS[obj.color]) + jitter, 0, 255).astype(np.float32)
        outline = Image.new("L", (size, size), 0)
        ImageDraw.Draw(outline).polygon(list(zip(obj.polygon[0::2], obj.polygon[1::2])),
                                        fill=255)
        inside = np.asarray(outline) > 0
        patterned = inside & pattern_mask(obj.category, size)
        pixels[inside] = fill
        pixels[patterned] = fill * PATTERN_SHADE
    pixels += rng.standard_normal((size, size, 3), dtype=np.float32) * 4.0
    np.rint(pixels, out=pixels)
    np.clip(pixels, 0, 255, out=pixels)
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


# ----------------------------------------------------------------------------- captions


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    """One element of `options`, uniformly (cheaper than `rng.choice` on small tuples)."""
    return options[int(rng.integers(len(options)))]


def article(word: str) -> str:
    """"a" or "an" before `word`."""
    return "an" if word[0] in "aeiou" else "a"


def _noun(obj: SceneObject, rng: np.random.Generator, synonym_rate: float) -> str:
    """The category's name, or with probability `synonym_rate` one of its synonyms."""
    synonyms = SYNONYMS[obj.category][1:]
    return _pick(rng, synonyms) if synonyms and rng.random() < synonym_rate else obj.category


def _phrase(obj: SceneObject, rng: np.random.Generator, synonym_rate: float,
            size: bool | None = None) -> str:
    """'a small red ball': article, optional size, colour, the category's noun."""
    noun = _noun(obj, rng, synonym_rate)
    use_size = bool(rng.random() < 0.5) if size is None else size
    words = ([_pick(rng, _SIZE_WORDS[obj.size])] if use_size else []) + [obj.color, noun]
    return f"{article(words[0])} {' '.join(words)}"


def _where(obj: SceneObject, rng: np.random.Generator) -> str:
    return _pick(rng, _POSITION_PHRASES[obj.position])


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


# ----------------------------------------------------------------------------- generation


@dataclass(frozen=True)
class DemoSummary:
    """What one generation wrote."""

    n_images: int
    n_restval: int
    n_captions: int
    n_objects: int
    seconds: float
    prior: dict[str, Any]


def _splits(demo: DemoConfig) -> list[str]:
    splits = ["train"] * demo.n_train + ["val"] * demo.n_val + ["test"] * demo.n_test
    rng = np.random.default_rng([demo.seed, 1_000_003])
    n_restval = int(round(RESTVAL_FRACTION * demo.n_train))
    for i in rng.choice(demo.n_train, n_restval, replace=False):
        splits[int(i)] = "restval"
    return splits


def _write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, separators=(",", ":")) + "\n")


def _polygon_area(poly: tuple[float, ...]) -> float:
    xs, ys = poly[0::2], poly[1::2]
    n = len(xs)
    return 0.5 * abs(sum(xs[i] * ys[(i + 1) % n] - xs[(i + 1) % n] * ys[i] for i in range(n)))


def check_demo_config(demo: DemoConfig) -> None:
    """Raise ConfigError naming the first `[demo]` generation key out of range."""
    for key in ("n_train", "n_val", "n_test"):
        if getattr(demo, key) < 1:
            raise ConfigError(f"config key 'demo.{key}' must be >= 1, got {getattr(demo, key)}")
    if demo.image_size < 32:
        raise ConfigError(f"config key 'demo.image_size' must be >= 32, got {demo.image_size}")
    scene_prior(demo)


def _counter_prior_draws(demo: DemoConfig, splits: list[str]) -> set[int]:
    """Indices of the test scenes drawn counter-prior (`demo.counter_prior_fraction` of them,
    at least one and at most all but one when the fraction is > 0, so that neither subset is
    empty on a small test split)."""
    test = [i for i, split in enumerate(splits) if split == "test"]
    if not demo.prior_pairs or demo.counter_prior_fraction == 0:
        return set()
    rng = np.random.default_rng([demo.seed, 1_000_033])
    count = min(max(1, round(demo.counter_prior_fraction * len(test))), max(1, len(test) - 1))
    return {test[int(i)] for i in rng.choice(len(test), count, replace=False)}


def prior_statistics(prior: ScenePrior, scenes: list[tuple[str, Scene]],
                     subsets: dict[str, list[int]]) -> dict[str, Any]:
    """Per pair, over train+restval scenes: scenes with a member, and the share of them that
    also hold its partner; plus the test subset sizes."""
    pairs = {}
    holding = [{o.category for o in scene.objects} for split, scene in scenes
               if split in ("train", "restval")]
    for a, b in prior.pairs:
        for member, partner in ((a, b), (b, a)):
            with_member = [cats for cats in holding if member in cats]
            paired = sum(partner in cats for cats in with_member)
            pairs[f"{partner} | {member}"] = {
                "train_scenes_with_member": len(with_member),
                "share_with_partner": round(paired / max(1, len(with_member)), 4)}
    return {"pairs": [f"{a}+{b}" for a, b in prior.pairs], "strength": prior.strength,
            "cooccurrence": pairs, "test_subsets": {k: len(v) for k, v in subsets.items()}}


def generate_dataset(demo: DemoConfig, output_dir: str | Path | None = None) -> DemoSummary:
    """Write the whole demo dataset for `demo` into `output_dir` (default `demo.output_dir`)."""
    check_demo_config(demo)
    start = time.perf_counter()
    paths = DemoPaths(Path(output_dir if output_dir is not None else demo.output_dir))
    for stale in (paths.image_root, paths.root / "annotations", paths.root / SUBSETS_DIR):
        shutil.rmtree(stale, ignore_errors=True)
    for folder in ("train", "val", "test"):
        (paths.image_root / folder).mkdir(parents=True, exist_ok=True)

    size = demo.image_size
    prior = scene_prior(demo)
    splits = _splits(demo)
    counter_draws = _counter_prior_draws(demo, splits)
    karpathy, coco_images, coco_captions, instances = [], [], [], []
    scenes: list[tuple[str, Scene]] = []
    subsets: dict[str, list[int]] = {name: [] for name in SUBSET_NAMES}
    sent_id = ann_id = 0
    for index, split in enumerate(splits):
        rng = np.random.default_rng([demo.seed, index])
        scene = sample_scene(rng, size, prior, counter_prior=index in counter_draws)
        captions = scene_captions(scene, rng, synonym_rate=demo.synonym_rate)
        scenes.append((split, scene))
        if split == "test" and prior.pairs:
            lone = prior.lone_members([o.category for o in scene.objects])
            subsets["counter_prior" if lone else "in_prior"].append(index + 1)
        folder = "train" if split == "restval" else split
        cocoid = index + 1
        filename = f"demo_{folder}_{cocoid:06d}.jpg"
        render_scene(scene, rng).save(paths.image_root / folder / filename, "JPEG", quality=92)
        sentences, sentids = [], []
        for text in captions:
            sentences.append({"tokens": tokenize(text), "raw": text, "imgid": index,
                              "sentid": sent_id})
            sentids.append(sent_id)
            coco_captions.append({"id": sent_id + 1, "image_id": cocoid, "caption": text})
            sent_id += 1
        karpathy.append({"split": split, "filepath": folder, "filename": filename,
                         "imgid": index, "cocoid": cocoid, "sentences": sentences,
                         "sentids": sentids})
        coco_images.append({"id": cocoid, "file_name": f"{folder}/{filename}",
                            "width": size, "height": size})
        for obj in scene.objects:
            xs, ys = obj.polygon[0::2], obj.polygon[1::2]
            ann_id += 1
            instances.append({
                "id": ann_id, "image_id": cocoid, "category_id": obj.category_id,
                "segmentation": [list(obj.polygon)],
                "area": round(_polygon_area(obj.polygon), 2),
                "bbox": [min(xs), min(ys), round(max(xs) - min(xs), 2),
                         round(max(ys) - min(ys), 2)],
                "iscrowd": 0,
                "attributes": {"color": obj.color, "size": obj.size, "position": obj.position},
            })

    info = {"description": "FSGR-PMA embedded demo dataset (synthetic shapes)",
            "version": "1.0", "year": 2025, "seed": demo.seed,
            "date_created": "2025-01-01"}
    categories = [{"id": i + 1, "name": name, "supercategory": "shape",
                   "synonyms": list(SYNONYMS[name])} for i, name in enumerate(CATEGORIES)]
    _write_json(paths.karpathy_json, {"images": karpathy, "dataset": "demo"})
    _write_json(paths.captions_json, {"info": info, "licenses": [], "type": "captions",
                                      "images": coco_images, "annotations": coco_captions})
    _write_json(paths.instances_json, {"info": info, "licenses": [], "type": "instances",
                                       "images": coco_images, "annotations": instances,
                                       "categories": categories})
    if prior.pairs:
        for name, ids in subsets.items():
            _write_json(paths.subset(name), ids)
    n_restval = sum(e["split"] == "restval" for e in karpathy)
    statistics = prior_statistics(prior, scenes, subsets) if prior.pairs else {}
    return DemoSummary(len(karpathy), n_restval, sent_id, ann_id, time.perf_counter() - start,
                       statistics)


def data_stage(config: Config) -> StageSpec:
    """The generated demo dataset as a stage output (the output folder)."""
    return StageSpec("datasets.demo", Path(config.demo.output_dir), DATA_KEYS)


def prepare_demo_data(config: Config, force: bool = False) -> tuple[bool, str]:
    """Generate the demo dataset unless up to date; (ran, one-line message)."""
    check_demo_config(config.demo)
    spec = data_stage(config)
    decision = decide(spec, config, force)
    if decision.up_to_date:
        return False, f"demo data: {decision.reason}"
    remove_manifest(spec.output)
    summary = generate_dataset(config.demo)
    write_manifest(spec, config, summary=summary.__dict__)
    return True, (f"demo data: wrote {summary.n_images} images ({summary.n_restval} restval), "
                  f"{summary.n_captions} captions, {summary.n_objects} objects to "
                  f"{spec.output} in {summary.seconds:.1f}s ({decision.reason})"
                  + prior_line(summary.prior))


def prior_line(statistics: dict[str, Any]) -> str:
    """'; prior star+heart: heart | star 97%, ...; test subsets in_prior 210, ...' or ''."""
    if not statistics:
        return ""
    shares = ", ".join(f"{k} {100 * v['share_with_partner']:.0f}%"
                       for k, v in statistics["cooccurrence"].items())
    sizes = ", ".join(f"{k} {v}" for k, v in statistics["test_subsets"].items())
    return (f"; prior {' '.join(statistics['pairs'])} (train share with partner: {shares}); "
            f"test subsets: {sizes}")


def demo_overrides(output_dir: str | Path) -> list[str]:
    """`--set` overrides that put a demo dataset in `output_dir` and point `[data]` at it."""
    paths = DemoPaths(Path(output_dir))
    quote = json.dumps
    return [f"demo.output_dir={quote(str(paths.root))}",
            f"data.karpathy_json={quote(str(paths.karpathy_json))}",
            f"data.image_root={quote(str(paths.image_root))}",
            f"data.captions_json=[{quote(str(paths.captions_json))}]",
            f"data.instances_json=[{quote(str(paths.instances_json))}]",
            "eval.subsets={" + ", ".join(f"{name} = {quote(str(paths.subset(name)))}"
                                         for name in SUBSET_NAMES) + "}"]


# ----------------------------------------------------------------------------- masks


@functools.lru_cache(maxsize=4)
def _load_instances_cached(path: str, mtime_ns: int) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def load_instances(instances: str | Path | dict[str, Any]) -> dict[str, Any]:
    """A COCO instance json as a dict (file reads are cached while the file is unchanged)."""
    if isinstance(instances, dict):
        return instances
    path = Path(instances)
    try:
        return _load_instances_cached(str(path.resolve()), path.stat().st_mtime_ns)
    except FileNotFoundError:
        raise FileNotFoundError(f"instance annotations not found: {path}") from None


def object_masks(instances: str | Path | dict[str, Any], image_id: int,
                 size: int | tuple[int, int] | None = None) -> np.ndarray:
    """Category map of one image: int array [H, W] of category ids, 0 = background.

    Polygons are rasterised in annotation order (later objects on top, as drawn), scaled to
    `size` (an int for square output, or (width, height); default: the image's own size).
    At the native size the map covers exactly the pixels the generator painted.
    """
    data = load_instances(instances)
    info = next((im for im in data["images"] if im["id"] == image_id), None)
    if info is None:
        raise KeyError(f"image id {image_id} not in the instance annotations")
    width, height = (info["width"], info["height"]) if size is None else (
        (size, size) if isinstance(size, int) else size)
    sx, sy = width / info["width"], height / info["height"]
    canvas = Image.new("I", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for ann in data["annotations"]:
        if ann["image_id"] != image_id or not isinstance(ann["segmentation"], list):
            continue
        for poly in ann["segmentation"]:
            points = [(x * sx, y * sy) for x, y in zip(poly[0::2], poly[1::2])]
            draw.polygon(points, fill=int(ann["category_id"]))
    return np.asarray(canvas, dtype=np.int64)


def patch_categories(mask: np.ndarray, grid: int | tuple[int, int]
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Per patch of a `grid` over `mask`: the most-covering object category (0 if none) and
    the fraction of the patch it covers; both [rows, cols]."""
    rows, cols = (grid, grid) if isinstance(grid, int) else grid
    height, width = mask.shape
    cats = np.zeros((rows, cols), np.int64)
    cover = np.zeros((rows, cols), np.float64)
    for r in range(rows):
        for c in range(cols):
            patch = mask[r * height // rows:(r + 1) * height // rows,
                         c * width // cols:(c + 1) * width // cols]
            ids, counts = np.unique(patch[patch > 0], return_counts=True)
            if len(ids):
                best = int(np.argmax(counts))
                cats[r, c], cover[r, c] = ids[best], counts[best] / patch.size
    return cats, cover
