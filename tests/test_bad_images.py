"""A corpus of awkward and broken image files: converted where possible, else recorded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import extract.__main__ as extract_main
from shared.feature_store import FeatureStore
from shared.images import ImageError, load_rgb
from shared.manifest import read_manifest
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


def test_failures_beyond_the_limit_are_recorded_not_completed(corpus, tmp_path,
                                                              tiny_checkpoint) -> None:
    """4 of 12 images unreadable: far beyond `clip.max_failed_fraction` (0.001): exit 2 with
    one line naming the count, the key and the failure list; rows written but no manifest.
    With a lenient limit the next run retries the 4 rows and completes (exit 3), then skips."""
    root, expected = corpus
    sets = config_overrides(tmp_path, root, tiny_checkpoint, "store.rows_per_chunk=5")
    options = ["clip", "--config", str(DEMO_CONFIG), *(a for s in sets for a in ("--set", s))]
    proc = subprocess.run([sys.executable, "-m", "extract", *options], cwd=REPO,
                          capture_output=True, text=True)
    failing = {n for n, r in expected.items() if r is not None}
    store_file = tmp_path / "demo" / "features" / "clip.zarr"
    failures_file = store_file.with_name("clip.failures.jsonl")
    assert proc.returncode == 2, proc.stderr
    assert [line for line in proc.stderr.splitlines() if "error" in line] == [
        f"error: extract clip: {len(failing)} of {len(expected)} images failed, more than "
        f"clip.max_failed_fraction = 0.001 allows; not marked complete (a re-run retries only "
        f"the failed ones); failure list: {failures_file}"]
    assert read_manifest(store_file) is None

    failures = {Path(f["path"]).name: f["reason"]
                for f in map(json.loads, failures_file.read_text().splitlines())}
    assert set(failures) == failing
    for name in failing:
        assert expected[name] in failures[name]
    with FeatureStore.open(store_file) as store:
        valid = store.read("valid")
        tokens = store.read("patch_tokens")
    for row, name in enumerate(expected):
        assert valid[row] == (name not in failing), name
        assert np.abs(tokens[row]).sum() > 0 if name not in failing else not tokens[row].any()

    retry = CliRunner().invoke(extract_main.app,
                               [*options, "--set", "clip.max_failed_fraction=0.5"])
    assert retry.exit_code == 3, retry.output
    assert (f"resuming {store_file} (3 chunks already done, {len(failing)} failed rows to "
            f"retry)") in retry.stdout
    assert f"{len(failing)} images in" in retry.stdout and f"{len(failing)} retried" in retry.stdout
    assert (f"warning: extract clip: {len(failing)} of {len(expected)} images could not be read "
            f"(within clip.max_failed_fraction = 0.5)") in retry.stdout
    assert read_manifest(store_file)["summary"]["failed"] == len(failing)
    assert len(failures_file.read_text().splitlines()) == len(failing)
    again = CliRunner().invoke(extract_main.app, options)
    assert again.exit_code == 0 and "up to date" in again.stdout
