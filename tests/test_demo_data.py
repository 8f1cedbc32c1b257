"""The embedded demo dataset: determinism, COCO/Karpathy formats, masks, captions, manifest."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from shared.config import Config, load_config
from shared.datasets import coco_download
from shared.datasets.__main__ import app
from shared.datasets.demo_captions import SYNONYMS
from shared.datasets.demo_scenes import CATEGORIES, COLORS, PATTERN_SHADE, pattern_mask
from shared.datasets.demo_stage import demo_overrides, prepare_demo_data
from shared.datasets.demo_writer import DemoPaths, generate_dataset
from shared.karpathy import load_karpathy, split_records
from tests.dataset_fixtures import local_http_server
from tests.demo_masks import object_masks, patch_categories

ROOT = Path(__file__).resolve().parents[1]
N_TRAIN, N_VAL, N_TEST = 40, 10, 10


def demo_config(root: Path, *extra: str) -> Config:
    """configs/demo.toml with a small dataset generated under `root`."""
    return load_config(ROOT / "configs" / "demo.toml", [
        *demo_overrides(root), f"demo.n_train={N_TRAIN}", f"demo.n_val={N_VAL}",
        f"demo.n_test={N_TEST}", *extra])


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoPaths:
    root = tmp_path_factory.mktemp("demo")
    generate_dataset(demo_config(root).demo)
    return DemoPaths(root)


def _erode(mask: np.ndarray, steps: int) -> np.ndarray:
    """Pixels whose 4-neighbours (repeated `steps` times) are all in `mask`."""
    for _ in range(steps):
        inner = mask.copy()
        inner[1:] &= mask[:-1]
        inner[:-1] &= mask[1:]
        inner[:, 1:] &= mask[:, :-1]
        inner[:, :-1] &= mask[:, 1:]
        mask = inner
    return mask


def _files(paths: DemoPaths) -> dict[str, bytes]:
    return {str(p.relative_to(paths.root)): p.read_bytes()
            for p in sorted(paths.root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_files(demo: DemoPaths, tmp_path: Path) -> None:
    again = DemoPaths(tmp_path / "again")
    generate_dataset(demo_config(again.root).demo)
    first, second = _files(demo), _files(again)
    assert len([k for k in first if k.endswith(".jpg")]) == N_TRAIN + N_VAL + N_TEST
    assert first == second

    other = DemoPaths(tmp_path / "other")
    generate_dataset(demo_config(other.root, "demo.seed=1").demo)
    third = _files(other)
    assert third[str(Path("dataset_demo.json"))] != first[str(Path("dataset_demo.json"))]
    name = next(k for k in first if k.endswith(".jpg"))
    assert not np.array_equal(np.asarray(Image.open(demo.root / name)),
                              np.asarray(Image.open(other.root / name)))


def test_karpathy_json_loads_with_restval_as_train(demo: DemoPaths) -> None:
    records = load_karpathy(demo.karpathy_json, demo.image_root, check_images=True)
    assert len(split_records(records, "train")) == N_TRAIN
    assert len(split_records(records, "val")) == N_VAL
    assert len(split_records(records, "test")) == N_TEST
    raw = json.loads(demo.karpathy_json.read_text())
    assert raw["dataset"] == "demo"
    assert sum(e["split"] == "restval" for e in raw["images"]) == round(0.1 * N_TRAIN)
    for entry, record in zip(raw["images"], records):
        assert entry["filepath"] in ("train", "val", "test")
        assert len(entry["sentences"]) == 5 == len(entry["sentids"])
        with Image.open(record.path) as image:
            assert image.format == "JPEG" and image.mode == "RGB"
            assert image.size == (128, 128)
        for sent in entry["sentences"]:
            assert 4 <= len(sent["tokens"]) <= 18
            assert all(t == t.lower() and t.isalnum() for t in sent["tokens"])
        assert len({s["raw"] for s in entry["sentences"]}) == 5


def test_coco_jsons_load_with_pycocotools(demo: DemoPaths) -> None:
    from pycocotools.coco import COCO

    captions = COCO(str(demo.captions_json))
    n_images = N_TRAIN + N_VAL + N_TEST
    assert len(captions.getImgIds()) == n_images
    assert all(len(captions.getAnnIds(imgIds=[i])) == 5 for i in captions.getImgIds())
    karpathy = json.loads(demo.karpathy_json.read_text())["images"]
    assert {e["cocoid"] for e in karpathy} == set(captions.getImgIds())

    instances = COCO(str(demo.instances_json))
    assert [c["name"] for c in instances.loadCats(instances.getCatIds())] == list(CATEGORIES)
    assert len(instances.getImgIds()) == n_images
    for ann in instances.loadAnns(instances.getAnnIds())[:30]:
        coco_mask = instances.annToMask(ann).astype(bool)
        ours = object_masks(demo.instances_json, ann["image_id"]) == ann["category_id"]
        if len(instances.getAnnIds(imgIds=[ann["image_id"]], catIds=[ann["category_id"]])) == 1:
            # PIL paints boundary pixels that pycocotools leaves out: ours is a bit larger
            assert (coco_mask & ours).sum() >= 0.97 * coco_mask.sum(), ann
            assert (coco_mask & ours).sum() >= 0.7 * ours.sum(), ann


def test_object_masks_agree_with_bboxes_and_pixels(demo: DemoPaths) -> None:
    data = json.loads(demo.instances_json.read_text())
    by_image: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    for info in data["images"][:25]:
        mask = object_masks(data, info["id"])
        assert mask.shape == (info["height"], info["width"])
        anns = by_image[info["id"]]
        assert set(np.unique(mask)) <= {0} | {a["category_id"] for a in anns}
        pixels = np.asarray(Image.open(demo.image_root / info["file_name"]), np.float32)
        for ann in anns:
            x, y, w, h = ann["bbox"]
            own = np.zeros_like(mask, bool)  # this object's pixels (drawn alone)
            own[object_masks({"images": [info], "annotations": [ann]}, info["id"]) > 0] = True
            ys, xs = np.nonzero(own)
            assert xs.min() >= np.floor(x) - 1 and xs.max() <= np.ceil(x + w) + 1
            assert ys.min() >= np.floor(y) - 1 and ys.max() <= np.ceil(y + h) + 1
            assert xs.max() - xs.min() >= w - 3 and ys.max() - ys.min() >= h - 3
            assert abs(own.sum() - ann["area"]) < 0.2 * ann["area"] + 20
            inner = _erode(own & (mask == ann["category_id"]), 2)
            pattern = pattern_mask(CATEGORIES[ann["category_id"] - 1], info["width"])
            plain, patterned = inner & ~pattern, inner & pattern
            if plain.sum() < 5:
                continue
            colour = np.median(pixels[plain], axis=0)
            expected = np.array(COLORS[ann["attributes"]["color"]], np.float32)
            assert np.abs(colour - expected).max() < 30, (ann, colour)
            if patterned.sum() >= 5 and expected.sum() > 200:  # its pattern, in a darker shade
                shade = np.median(pixels[patterned], axis=0)
                assert shade.sum() < (PATTERN_SHADE + 0.25) * colour.sum(), (ann, shade, colour)
        half = object_masks(data, info["id"], 64)
        assert half.shape == (64, 64)
        assert set(np.unique(half)) <= set(np.unique(mask))


def test_patch_categories_find_each_shape(demo: DemoPaths) -> None:
    data = json.loads(demo.instances_json.read_text())
    for ann in data["annotations"][:40]:
        mask = object_masks(data, ann["image_id"])
        cats, cover = patch_categories(mask, 8)
        assert cats.shape == cover.shape == (8, 8)
        x, y, w, h = ann["bbox"]
        row, col = int((y + h / 2) * 8 // 128), int((x + w / 2) * 8 // 128)
        if mask[int(y + h / 2), int(x + w / 2)] == ann["category_id"]:
            assert ann["category_id"] in cats[max(0, row - 1):row + 2, max(0, col - 1):col + 2]
    assert (cover >= 0).all() and (cover <= 1).all()


def test_captions_mention_every_object(demo: DemoPaths) -> None:
    data = json.loads(demo.instances_json.read_text())
    objects: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        objects.setdefault(ann["image_id"], []).append(ann)
    used_synonyms = set()
    for entry in json.loads(demo.karpathy_json.read_text())["images"]:
        for sent in entry["sentences"]:
            words = set(sent["tokens"])
            for ann in objects[entry["cocoid"]]:
                category = CATEGORIES[ann["category_id"] - 1]
                found = words & set(SYNONYMS[category])
                assert found, (sent["raw"], category)
                assert ann["attributes"]["color"] in words, sent["raw"]
                used_synonyms |= found - {category}
    assert used_synonyms  # "ball", "box", ... do occur


def test_manifest_skips_second_run(tmp_path: Path) -> None:
    config = demo_config(tmp_path / "demo")
    result = prepare_demo_data(config)
    ran, [line] = result.ran, result.lines
    assert ran and "wrote" in line
    result = prepare_demo_data(config)
    ran, [line] = result.ran, result.lines
    assert not ran and "up to date" in line and "\n" not in line
    result = prepare_demo_data(demo_config(tmp_path / "demo", "demo.seed=3"))
    ran, [line] = result.ran, result.lines
    assert ran and "demo.seed" in line


def test_prepare_flickr30k_prints_steps_and_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, [
        "prepare", "--config", str(ROOT / "configs" / "flickr30k.toml"),
        "--set", f'data.karpathy_json="{tmp_path / "f30k.json"}"',
        "--set", f'data.image_root="{tmp_path / "images"}"'])
    assert result.exit_code == 2
    assert "shannon.cs.illinois.edu" in result.output and "error:" in result.output


def test_prepare_bad_config_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["prepare", "--config", str(ROOT / "configs/demo.toml"),
                                      "--set", "demo.n_train=many"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "demo.n_train" in lines[0]


def test_coco_download_fails_fast_without_network(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(ROOT / "configs" / "coco.toml", [
        f'data.karpathy_json="{tmp_path / "dataset_coco.json"}"',
        f'data.image_root="{tmp_path / "images"}"',
        f'data.captions_json=["{tmp_path / "annotations" / "captions_train2014.json"}"]',
        "data.instances_json=[]"])
    for name in ("TRAIN_IMAGES_URL", "VAL_IMAGES_URL", "ANNOTATIONS_URL", "KARPATHY_URL"):
        monkeypatch.setattr(coco_download, name, "http://127.0.0.1:9/unreachable.zip")
    start = time.perf_counter()
    with pytest.raises(coco_download.DownloadError, match="cannot reach 127.0.0.1:9"):
        coco_download.download_coco(config.data, probe_timeout=2)
    assert time.perf_counter() - start < 10


def test_interrupted_download_is_one_line_and_leaves_no_part(tmp_path: Path) -> None:
    """A server that closes the connection mid-file (urllib returns the short body without an
    error): `fetch` checks the Content-Length, raises DownloadError naming the URL, and leaves
    neither the archive nor its `.part` behind (a truncated archive was kept as complete)."""
    dest = tmp_path / "train2014.zip"
    with local_http_server(lambda path: (b"x" * 1000, 100_000)) as root:
        url = f"{root}/train2014.zip"
        with pytest.raises(coco_download.DownloadError, match=f"download of {url} failed"):
            coco_download.fetch(url, dest, timeout=5)
    assert not dest.exists() and not dest.with_name("train2014.zip.part").exists()
