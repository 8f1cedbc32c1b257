"""The files of the embedded demo dataset: where they live, writing them, reading them back.

Written under `demo.output_dir` by `generate_dataset`:

    images/{train,val,test}/demo_<split>_<cocoid>.jpg
    dataset_demo.json                      Karpathy format (10% of train marked restval)
    annotations/captions_demo.json         COCO captions
    annotations/instances_demo.json        COCO instances (polygon segmentations)

    subsets/{in_prior,counter_prior}.json  test image ids (with `demo.prior_pairs`)

Scenes come from `demo_scenes` (with the language prior), captions from `demo_captions`. The
test ids are written as two subsets by what each scene holds: `counter_prior` (some pair member
without its partner) and `in_prior` (the rest), for `eval.subsets`.

Everything follows from `demo.seed`: the same seed gives byte-identical files.
"""

from __future__ import annotations

import functools
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared.config import ConfigError, DemoConfig
from shared.datasets.demo_captions import SYNONYMS, scene_captions
from shared.datasets.demo_scenes import (CATEGORIES, Scene, ScenePrior, render_scene,
                                         sample_scene, scene_prior)
from shared.vocabulary import tokenize

RESTVAL_FRACTION = 0.1
KARPATHY_NAME = "dataset_demo.json"
CAPTIONS_NAME = "annotations/captions_demo.json"
INSTANCES_NAME = "annotations/instances_demo.json"
SUBSETS_DIR = "subsets"
SUBSET_NAMES = ("in_prior", "counter_prior")


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
