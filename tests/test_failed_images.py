"""Failed images are not cached for good: a missing image root stops before any work, too
many unreadable images leave the store incomplete, and a later run retries only those rows."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import extract.__main__ as extract_main
import extract.clip_features as clip_features
from extract.clip_features import extract_clip
from shared.chunked_stage import TooManyFailures
from shared.feature_store import FeatureStore
from shared.manifest import read_manifest
from shared.stages import clip_stage, vocab_stage
from tests.conftest import DEMO_CONFIG, config_overrides, make_config

ARRAYS = ("patch_tokens", "image_embed", "image_ids", "valid", "visual_proj")
BROKEN = {3: "deleted", 10: "deleted", 11: "truncated", 25: "deleted", 26: "not an image"}


def read_all(path: Path) -> dict[str, np.ndarray]:
    with FeatureStore.open(path) as store:
        return {name: store.read(name) for name in ARRAYS}


def file_bytes(store: Path) -> dict[str, bytes]:
    """Every file of a store (a Zarr folder or an HDF5 file), by relative path."""
    if store.is_file():
        return {store.name: store.read_bytes()}
    return {str(p.relative_to(store)): p.read_bytes() for p in store.rglob("*") if p.is_file()}


@pytest.fixture()
def dataset_copy(tmp_path, image_dataset) -> Path:
    """A private copy of the 40-image dataset, free to break and repair."""
    copy = tmp_path / "dataset"
    shutil.copytree(image_dataset, copy)
    return copy


def break_images(dataset: Path) -> dict[int, bytes]:
    """Delete or corrupt the images of BROKEN (by row); returns their original bytes."""
    files = sorted((dataset / "images" / "a").iterdir())
    originals = {}
    for row, how in BROKEN.items():
        originals[row] = files[row].read_bytes()
        if how == "deleted":
            files[row].unlink()
        elif how == "truncated":
            files[row].write_bytes(originals[row][:100])
        else:
            files[row].write_text("not an image\n")
    return originals


def restore_images(dataset: Path, originals: dict[int, bytes]) -> None:
    for row, data in originals.items():
        (dataset / "images" / "a" / f"img_{row:03d}.{'png' if row % 3 == 0 else 'jpg'}"
         ).write_bytes(data)


def cli(*args: str) -> object:
    return CliRunner().invoke(extract_main.app, list(args))


def test_missing_image_root_stops_before_any_store(tmp_path, image_dataset,
                                                   tiny_checkpoint) -> None:
    for root, what in [(tmp_path / "unmounted", "does not exist"),
                       (tmp_path / "empty", "is empty")]:
        (tmp_path / "empty").mkdir(exist_ok=True)
        sets = config_overrides(tmp_path, image_dataset, tiny_checkpoint,
                                f"data.image_root={json.dumps(str(root))}")
        options = ["--config", str(DEMO_CONFIG), *(a for s in sets for a in ("--set", s))]
        result = cli("clip", *options)
        assert result.exit_code == 2
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: data.image_root: {root} {what}")
        config = make_config(tmp_path, image_dataset, tiny_checkpoint,
                             f"data.image_root={json.dumps(str(root))}")
        store = clip_stage(config).output
        assert not store.exists() and read_manifest(store) is None

        every = cli("all", *options)  # `extract all` stops at clip: nothing after it runs
        assert every.exit_code == 2 and f"data.image_root: {root} {what}" in every.stderr
        assert read_manifest(vocab_stage(config).output) is not None and not store.exists()
        assert not (config.run_dir / "fsgr").exists()


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_failed_rows_are_retried_and_nothing_else(fmt, tmp_path, dataset_copy, image_dataset,
                                                  tiny_checkpoint, monkeypatch) -> None:
    reference = extract_clip(make_config(tmp_path / "reference", image_dataset, tiny_checkpoint,
                                         f'store.format="{fmt}"'), progress=False)
    originals = break_images(dataset_copy)
    sets = config_overrides(tmp_path / "runs", dataset_copy, tiny_checkpoint,
                            f'store.format="{fmt}"')
    result = cli("all", "--config", str(DEMO_CONFIG), *(a for s in sets for a in ("--set", s)))
    config = make_config(tmp_path / "runs", dataset_copy, tiny_checkpoint,
                         f'store.format="{fmt}"')
    store = clip_stage(config).output
    failures_file = store.with_name("clip.failures.jsonl")
    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1] == (
        f"error: extract clip: 5 of 40 images failed, more than clip.max_failed_fraction = "
        f"0.001 allows; not marked complete (a re-run retries only the failed ones); failure "
        f"list: {failures_file}")
    assert read_manifest(store) is None and not (config.run_dir / "fsgr").exists()
    listed = [json.loads(line) for line in failures_file.read_text().splitlines()]
    assert [f["row"] for f in listed] == sorted(BROKEN)
    assert [f["reason"].split(" ")[0] for f in listed] == [
        "file", "file", "cannot", "file", "not"]
    with pytest.raises(TooManyFailures, match="5 of 40 images failed"):
        extract_clip(config, progress=False)  # not "up to date": still broken, still refused
    before, before_files = read_all(store), file_bytes(store)

    restore_images(dataset_copy, originals)
    encoded = []
    real_encode = clip_features.encode_images
    monkeypatch.setattr(clip_features, "encode_images",
                        lambda bundle, images: (encoded.append(len(images)),
                                                real_encode(bundle, images))[1])
    retried = extract_clip(config, progress=False)
    assert retried.complete and retried.summary["failed"] == 0
    done = retried.summary
    assert done["retried"] == done["processed"] == sum(encoded) == len(BROKEN)
    assert read_manifest(store)["summary"]["failed"] == 0
    assert failures_file.read_text() == ""
    after, full = read_all(store), read_all(reference.output)
    fine = np.array([row not in BROKEN for row in range(40)])
    for name in ARRAYS:
        np.testing.assert_array_equal(after[name][fine] if name != "visual_proj" else after[name],
                                      before[name][fine] if name != "visual_proj"
                                      else before[name], err_msg=name)
        np.testing.assert_allclose(after[name].astype(np.float32),
                                   full[name].astype(np.float32), rtol=2e-3, atol=2e-3,
                                   err_msg=name)
    assert after["valid"].tolist() == [1] * 40
    if fmt == "zarr":  # chunks without a failed row were not even rewritten
        broken_chunks = {row // config.store.rows_per_chunk for row in BROKEN}
        changed = {name for name, data in file_bytes(store).items()
                   if before_files.get(name) != data}
        assert changed and all(int(Path(name).parts[2]) in broken_chunks for name in changed)

    assert not extract_clip(config, progress=False).ran
    assert sum(encoded) == len(BROKEN)


def test_failures_within_the_limit_complete_with_a_warning(tmp_path, dataset_copy,
                                                           tiny_checkpoint) -> None:
    break_images(dataset_copy)
    config = make_config(tmp_path, dataset_copy, tiny_checkpoint)
    config.clip.max_failed_fraction = 0.2
    result = extract_clip(config, progress=False)
    store = clip_stage(config).output
    assert result.complete and result.summary["failed"] == 5 and read_manifest(store) is not None
    assert result.lines[-1] == (
        f"warning: extract clip: 5 of 40 images could not be read (within "
        f"clip.max_failed_fraction = 0.2); they are kept as valid = 0 and listed in "
        f"{store.with_name('clip.failures.jsonl')}")
    again = extract_clip(config, progress=False)
    assert not again.ran and again.summary["failed"] == 5
