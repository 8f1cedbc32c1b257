"""A corpus of awkward and broken image files: converted where possible, else recorded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.feature_store import FeatureStore
from shared.images import ImageError, load_rgb
from tests.conftest import DEMO_CONFIG, REPO, config_overrides, karpathy_entry, write_karpathy


def _good_jpeg(path: Path, size=(64, 48)) -> bytes:
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), np.uint8)).save(path, "JPEG")
    return path.read_bytes()


def build_corpus(folder: Path) -> dict[str, str | None]:
    """File name -> expected failure reason fragment (None: must be converted)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = _good_jpeg(folder / "good.jpg")
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("this is not an image\n")
    Image.new("CMYK", (50, 40), (0, 128, 255, 10)).save(folder / "cmyk.jpg", "JPEG")
    Image.new("L", (50, 40), 128).save(folder / "gray.png")
    Image.new("RGBA", (50, 40), (255, 0, 0, 0)).save(folder / "alpha.png")
    Image.new("P", (30, 30), 3).save(folder / "palette.gif")
    Image.fromarray(np.full((20, 20), 40000, np.uint16)).save(folder / "sixteen.png")
    Image.new("RGB", (1, 1), (0, 255, 0)).save(folder / "tiny.png")
    Image.new("RGB", (9000, 7000), (10, 20, 30)).save(folder / "huge.jpg", "JPEG", quality=50)
    return {"good.jpg": None, "truncated.jpg": "cannot decode", "empty.jpg": "empty file",
            "text.jpg": "not an image", "cmyk.jpg": None, "gray.png": None, "alpha.png": None,
            "palette.gif": None, "sixteen.png": None, "tiny.png": None, "huge.jpg": None,
            "missing.jpg": "file not found"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, str | None]]:
    root = tmp_path_factory.mktemp("bad")
    expected = build_corpus(root / "images")
    entries = [karpathy_entry(i, "train", name) for i, name in enumerate(expected)]
    write_karpathy(root / "dataset.json", entries)
    return root, expected


def test_load_rgb_converts_or_explains(corpus) -> None:
    root, expected = corpus
    for name, reason in expected.items():
        if reason is None:
            image = load_rgb(root / "images" / name, target_size=64)
            assert image.mode == "RGB" and min(image.size) >= 1, name
        else:
            with pytest.raises(ImageError, match=reason):
                load_rgb(root / "images" / name)
    alpha = np.asarray(load_rgb(root / "images" / "alpha.png"))
    assert (alpha == 255).all()  # fully transparent composites onto white, not black
    assert max(load_rgb(root / "images" / "huge.jpg", target_size=64).size) < 9000


def test_extraction_completes_and_records_failures(corpus, tmp_path, tiny_checkpoint) -> None:
    root, expected = corpus
    sets = config_overrides(tmp_path, root, tiny_checkpoint, "store.rows_per_chunk=5")
    args = [sys.executable, "-m", "extract", "clip", "--config", str(DEMO_CONFIG)]
    args += [a for s in sets for a in ("--set", s)]
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True)
    failing = {n for n, r in expected.items() if r is not None}
    assert proc.returncode == 3, proc.stderr
    assert f"{len(failing)} failed" in proc.stdout

    store_file = tmp_path / "demo" / "features" / "clip.zarr"
    lines = store_file.with_name("clip.failures.jsonl").read_text().splitlines()
    failures = {Path(f["path"]).name: f["reason"] for f in map(json.loads, lines)}
    assert set(failures) == failing
    for name in failing:
        assert expected[name] in failures[name]
    with FeatureStore.open(store_file) as store:
        valid = store.read("valid")
        tokens = store.read("patch_tokens")
    names = list(expected)
    for row, name in enumerate(names):
        assert valid[row] == (name not in failing), name
        assert np.abs(tokens[row]).sum() > 0 if name not in failing else not tokens[row].any()

    again = subprocess.run(args, cwd=REPO, capture_output=True, text=True)
    assert again.returncode == 0 and "up to date" in again.stdout
