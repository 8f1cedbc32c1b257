"""Scenes of the embedded demo dataset: shapes, colours, positions, surface patterns, rendering,
and the controlled language prior.

Each image shows 1-3 shapes (8 categories, 8 colours, small/large, left/right/top/bottom/
center) on a plain or graded background with mild noise; every category carries its own
surface pattern (`PATTERNS`). Captions are written by `demo_captions`, the files by
`demo_writer`, the stage is `demo_stage`.

A controlled language prior (`demo.prior_pairs`, e.g. ["star+heart"]): in train/val scenes a
pair member without its partner is repaired with probability `demo.prior_strength` (another
shape becomes the partner, else the member becomes a category outside every pair), so the
captions teach "star" -> "heart". A share `demo.counter_prior_fraction` of the test scenes is
drawn counter-prior: one member shown without its partner (`ScenePrior.counter`).

Everything is drawn from the generator passed in: the same seed gives the same scenes.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from shared.config import ConfigError, DemoConfig

CATEGORIES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "diamond",
                               "hexagon", "heart")
"""Object categories; category id = index + 1 (0 is background in masks)."""

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
_RADIUS = {"small": (0.07, 0.09), "large": (0.13, 0.16)}  # fraction of the image side


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


def pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    """One element of `options`, uniformly (cheaper than `rng.choice` on small tuples)."""
    return options[int(rng.integers(len(options)))]


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
        member = pick(rng, _pick_pair(rng, self.pairs))
        slot = int(rng.integers(len(categories)))
        partner = self.partner(member)
        out = [pick(rng, self.free) if c == partner else c for c in categories]
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
                out[slot] = pick(rng, self.free)


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
        sizes = [pick(rng, ("small", "large")) for _ in positions]
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
    categories = [pick(rng, CATEGORIES) for _ in range(n_objects)]
    if prior.pairs:
        categories = (prior.counter(categories, rng) if counter_prior
                      else prior.follow(categories, rng))
    objects = []
    for category, pos, sz, (cx, cy), r in zip(categories, positions, sizes, centers, radii):
        color = pick(rng, list(COLORS))
        angle = math.radians(float(rng.uniform(-12, 12)))
        objects.append(SceneObject(category, color, sz, pos,
                                   _place(category, cx * size, cy * size, r * size, angle)))
    background = pick(rng, list(BACKGROUNDS))
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
