"""The embedded demo dataset: synthetic scenes of coloured shapes in COCO's on-disk formats.

Each image shows 1-3 shapes (8 categories, 8 colours, small/large, left/right/top/bottom/
center) on a plain or graded background with mild noise, and has 5 reference captions from
varied templates and synonyms ("ball" for circle, "box" for square, ...). Written under
`demo.output_dir`:

    images/{train,val,test}/demo_<split>_<cocoid>.jpg
    dataset_demo.json                      Karpathy format (10% of train marked restval)
    annotations/captions_demo.json         COCO captions
    annotations/instances_demo.json        COCO instances (polygon segmentations)

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
DATA_KEYS = ["demo.output_dir", "demo.seed", "demo.n_train", "demo.n_val", "demo.n_test",
             "demo.image_size"]


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


def sample_scene(rng: np.random.Generator, size: int) -> Scene:
    """Draw a random scene of 1-3 mostly non-overlapping shapes."""
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
    objects = []
    for pos, sz, (cx, cy), r in zip(positions, sizes, centers, radii):
        category = _pick(rng, CATEGORIES)
        color = _pick(rng, list(COLORS))
        angle = math.radians(float(rng.uniform(-12, 12)))
        objects.append(SceneObject(category, color, sz, pos,
                                   _place(category, cx * size, cy * size, r * size, angle)))
    background = _pick(rng, list(BACKGROUNDS))
    gradient = (0.0, 0.0) if rng.random() < 0.5 else (float(rng.uniform(-20, 20)),
                                                       float(rng.uniform(-20, 20)))
    return Scene(size, background, gradient, tuple(objects))


def render_scene(scene: Scene, rng: np.random.Generator) -> Image.Image:
    """The RGB image of a scene: background (+ gradient), shapes, colour jitter and noise."""
    size = scene.size
    ramp = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    shade = scene.gradient[0] * ramp[None, :] + scene.gradient[1] * ramp[:, None]
    base = np.asarray(BACKGROUNDS[scene.background], np.float32)
    canvas = np.clip(base[None, None, :] + shade[:, :, None], 0, 255).astype(np.uint8)
    image = Image.fromarray(canvas, "RGB")
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        jitter = rng.integers(-15, 16, 3).tolist()
        fill = tuple(min(max(c + j, 0), 255) for c, j in zip(COLORS[obj.color], jitter))
        draw.polygon(list(zip(obj.polygon[0::2], obj.polygon[1::2])), fill=fill)
    noise = rng.standard_normal((size, size, 3), dtype=np.float32) * 4.0
    pixels = np.asarray(image, np.float32) + noise
    np.rint(pixels, out=pixels)
    np.clip(pixels, 0, 255, out=pixels)
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


# ----------------------------------------------------------------------------- captions


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    """One element of `options`, uniformly (cheaper than `rng.choice` on small tuples)."""
    return options[int(rng.integers(len(options)))]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _phrase(obj: SceneObject, rng: np.random.Generator, size: bool | None = None) -> str:
    """'a small red ball': article, optional size, colour, a synonym of the category."""
    noun = _pick(rng, SYNONYMS[obj.category])
    use_size = bool(rng.random() < 0.5) if size is None else size
    words = ([_pick(rng, _SIZE_WORDS[obj.size])] if use_size else []) + [obj.color, noun]
    return f"{_article(words[0])} {' '.join(words)}"


def _where(obj: SceneObject, rng: np.random.Generator) -> str:
    return _pick(rng, _POSITION_PHRASES[obj.position])


def _relation(a: SceneObject, b: SceneObject) -> str:
    (ax, ay), (bx, by) = a.center, b.center
    if abs(ax - bx) >= abs(ay - by):
        return "to the left of" if ax < bx else "to the right of"
    return "above" if ay < by else "below"


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _templates(scene: Scene, rng: np.random.Generator) -> list[str]:
    """One candidate caption per template applicable to the scene (random wording)."""
    objs, bg = scene.objects, scene.background
    n = len(objs)
    count = _COUNT_WORDS[n]
    out: list[str] = []
    if n == 1:
        (o,) = objs
        out += [
            f"{_phrase(o, rng)} {_where(o, rng)}",
            f"{_phrase(o, rng, True)} on a {bg} background",
            f"there is {_phrase(o, rng)} {_where(o, rng)}",
            f"an image with a single {o.color} {_pick(rng, SYNONYMS[o.category])}",
            f"{_where(o, rng)} there is {_phrase(o, rng)}",
            f"one {o.size} {o.color} {_pick(rng, SYNONYMS[o.category])} on a plain background",
            f"a picture of {_phrase(o, rng)} {_where(o, rng)}",
        ]
        return out
    first, *rest = objs
    out += [
        _join([f"{_phrase(o, rng, False)} {_where(o, rng)}" for o in objs]),
        f"{count} shapes: " + _join([_phrase(o, rng) for o in objs]),
        f"there is {_phrase(first, rng)} next to " + _join([_phrase(o, rng) for o in rest]),
        f"{_phrase(first, rng, False)} {_relation(first, rest[0])} {_phrase(rest[0], rng, False)}"
        + ("" if n == 2 else f" and {_phrase(rest[1], rng, False)} {_where(rest[1], rng)}"),
        f"{count} objects on a {bg} background: " + _join([_phrase(o, rng, False) for o in objs]),
        _join([f"{_where(o, rng)} is {_phrase(o, rng, False)}" for o in objs]),
        f"{count} colorful shapes including " + _join([_phrase(o, rng) for o in objs]),
    ]
    return out


def scene_captions(scene: Scene, rng: np.random.Generator,
                   n: int = CAPTIONS_PER_IMAGE) -> list[str]:
    """`n` distinct captions of 4-18 words that mention every object of the scene."""
    captions: list[str] = []
    for _ in range(50):
        candidates = _templates(scene, rng)
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


def generate_dataset(demo: DemoConfig, output_dir: str | Path | None = None) -> DemoSummary:
    """Write the whole demo dataset for `demo` into `output_dir` (default `demo.output_dir`)."""
    check_demo_config(demo)
    start = time.perf_counter()
    paths = DemoPaths(Path(output_dir if output_dir is not None else demo.output_dir))
    for stale in (paths.image_root, paths.root / "annotations"):
        shutil.rmtree(stale, ignore_errors=True)
    for folder in ("train", "val", "test"):
        (paths.image_root / folder).mkdir(parents=True, exist_ok=True)

    size = demo.image_size
    karpathy, coco_images, coco_captions, instances = [], [], [], []
    sent_id = ann_id = 0
    for index, split in enumerate(_splits(demo)):
        rng = np.random.default_rng([demo.seed, index])
        scene = sample_scene(rng, size)
        captions = scene_captions(scene, rng)
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
    n_restval = sum(e["split"] == "restval" for e in karpathy)
    return DemoSummary(len(karpathy), n_restval, sent_id, ann_id, time.perf_counter() - start)


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
                  f"{spec.output} in {summary.seconds:.1f}s ({decision.reason})")


def demo_overrides(output_dir: str | Path) -> list[str]:
    """`--set` overrides that put a demo dataset in `output_dir` and point `[data]` at it."""
    paths = DemoPaths(Path(output_dir))
    quote = json.dumps
    return [f"demo.output_dir={quote(str(paths.root))}",
            f"data.karpathy_json={quote(str(paths.karpathy_json))}",
            f"data.image_root={quote(str(paths.image_root))}",
            f"data.captions_json=[{quote(str(paths.captions_json))}]",
            f"data.instances_json=[{quote(str(paths.instances_json))}]"]


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
