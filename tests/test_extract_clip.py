"""`extract clip` on real image files with a real (tiny) open_clip model, Zarr and HDF5."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from extract.clip_features import chunk_batches, extract_clip
from shared.chunked_stage import Shard
from shared.clip_model import create_clip, encode_images
from shared.feature_store import FeatureStore
from shared.images import load_rgb
from shared.karpathy import load_karpathy
from shared.manifest import StageSpec, decide, read_manifest
from shared.stages import clip_stage
from tests.conftest import DEMO_CONFIG, REPO, config_overrides, make_config

ARRAYS = ("patch_tokens", "image_embed", "image_ids", "valid", "visual_proj")


def read_all(path: Path) -> dict[str, np.ndarray]:
    with FeatureStore.open(path) as store:
        return {name: store.read(name) for name in ARRAYS}


@pytest.fixture(scope="module", params=["zarr", "hdf5"])
def extracted(request, tmp_path_factory, image_dataset, tiny_checkpoint):
    """An uninterrupted extraction of the 40-image dataset in each store format."""
    fmt = request.param
    config = make_config(tmp_path_factory.mktemp(f"run_{fmt}"), image_dataset, tiny_checkpoint,
                         f'store.format="{fmt}"')
    result = extract_clip(config, progress=False)
    return fmt, config, result


def test_store_layout_and_values_match_open_clip(extracted, tiny_checkpoint) -> None:
    fmt, config, result = extracted
    assert result.complete and result.ran and result.summary["failed"] == 0
    assert result.output.suffix == (".zarr" if fmt == "zarr" else ".h5")
    bundle = create_clip(config.clip.model, str(tiny_checkpoint))
    rows, cols = bundle.grid_size
    arrays = read_all(result.output)
    assert arrays["patch_tokens"].shape == (40, rows * cols, bundle.width)
    assert arrays["patch_tokens"].dtype == np.float16
    assert arrays["image_embed"].shape == (40, bundle.embed_dim)
    records = load_karpathy(config.data.karpathy_json, config.data.image_root)
    assert arrays["image_ids"].tolist() == [r.image_id for r in records]
    assert arrays["valid"].tolist() == [1] * 40
    np.testing.assert_array_equal(arrays["visual_proj"],
                                  bundle.model.visual.proj.detach().numpy())

    picks = [0, 9, 31]
    images = torch.stack([bundle.preprocess(load_rgb(records[i].path)) for i in picks])
    with torch.no_grad():
        pooled = bundle.model.encode_image(images)
        inter = bundle.model.visual.forward_intermediates(
            images, indices=1, normalize_intermediates=True, output_fmt="NLC")
    tokens = inter["image_intermediates"][-1]
    np.testing.assert_allclose(arrays["image_embed"][picks].astype(np.float32), pooled.numpy(),
                               rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(arrays["patch_tokens"][picks].astype(np.float32), tokens.numpy(),
                               rtol=2e-3, atol=2e-3)

    with FeatureStore.open(result.output) as store:
        assert store.attrs["grid"] == [rows, cols] and store.attrs["model"] == config.clip.model
    manifest = read_manifest(result.output)
    assert manifest["summary"]["images"] == 40 and manifest["summary"]["failed"] == 0


def test_second_run_skips_and_config_change_reruns(extracted, tmp_path) -> None:
    fmt, config, result = extracted
    again = extract_clip(config, progress=False)
    assert not again.ran and "up to date" in again.lines[0]
    downstream = StageSpec("test.downstream", tmp_path / "down.json", ["data.name"],
                           [result.output])
    from shared.manifest import write_manifest
    downstream.output.write_text("{}")
    write_manifest(downstream, config)
    assert decide(downstream, config).up_to_date

    changed = make_config(Path(config.data.run_root), *_sources(config),
                          f'store.format="{fmt}"', "store.rows_per_chunk=16")
    decision = decide(clip_stage(changed), changed)
    assert not decision.up_to_date and "store.rows_per_chunk: 8 -> 16" in decision.reason
    rebuilt = extract_clip(changed, progress=False)
    assert rebuilt.ran and "rebuilding" in rebuilt.lines[0]
    assert not decide(downstream, changed).up_to_date  # its input got a new identity
    np.testing.assert_array_equal(read_all(rebuilt.output)["image_ids"],
                                  read_all(result.output)["image_ids"])
    # restore the module fixture's state for other tests
    extract_clip(config, progress=False)


def test_csa_store_reruns_and_keeps_the_pooled_embedding(extracted) -> None:
    """`clip.patch_attention = "csa"`: `extract clip` re-runs (own identity), the patch tokens
    are the CSA ones of `encode_images`, the pooled embedding and the layout are unchanged."""
    fmt, config, result = extracted
    if fmt != "zarr":
        return
    standard = read_all(result.output)
    csa_config = make_config(Path(config.data.run_root), *_sources(config),
                             'clip.patch_attention="csa"')
    decision = decide(clip_stage(csa_config), csa_config)
    assert not decision.up_to_date
    assert "clip.patch_attention: 'standard' -> 'csa'" in decision.reason
    rebuilt = extract_clip(csa_config, progress=False)
    assert rebuilt.ran and "rebuilding" in rebuilt.lines[0]
    csa = read_all(rebuilt.output)
    with FeatureStore.open(rebuilt.output) as store:
        assert store.attrs["patch_attention"] == "csa"
    assert read_manifest(rebuilt.output)["summary"]["patch_attention"] == "csa"
    for name in ("image_embed", "image_ids", "valid", "visual_proj"):
        np.testing.assert_array_equal(csa[name], standard[name], err_msg=name)
    assert csa["patch_tokens"].shape == standard["patch_tokens"].shape
    assert not np.array_equal(csa["patch_tokens"], standard["patch_tokens"])
    bundle = create_clip(config.clip.model, str(_sources(config)[1]), patch_attention="csa")
    records = load_karpathy(config.data.karpathy_json, config.data.image_root)
    picks = [0, 17, 39]
    images = torch.stack([bundle.preprocess(load_rgb(records[i].path)) for i in picks])
    _, tokens = encode_images(bundle, images)
    np.testing.assert_allclose(csa["patch_tokens"][picks].astype(np.float32), tokens.numpy(),
                               rtol=2e-3, atol=2e-3)
    assert not extract_clip(csa_config, progress=False).ran
    # restore the module fixture's state for other tests
    assert extract_clip(config, progress=False).ran


def _sources(config) -> tuple[Path, Path]:
    dataset = Path(config.data.karpathy_json).parent
    return dataset, Path(config.clip.pretrained)


def test_chunk_batches_never_straddle_chunks() -> None:
    assert chunk_batches([0, 2], 8, 20, 3) == [[0, 1, 2], [3, 4, 5], [6, 7],
                                               [16, 17, 18], [19]]
    assert chunk_batches([0, 1, 3, 4], 4, 18, 8) == [list(range(8)), [12, 13, 14, 15, 16, 17]]


_THROTTLED = """
import sys, time
import shared.chunked_stage as cs
original = cs.ChunkedOutput.write_chunk
def slow(self, chunk, values, failures):
    self.store.write_rows(self.store.chunk_rows(chunk)[0], values)  # data on disk, no marker
    time.sleep(0.4)
    original(self, chunk, values, failures)
cs.ChunkedOutput.write_chunk = slow
from extract.__main__ import app
app(sys.argv[1:])
"""


def test_resume_after_kill_equals_uninterrupted(extracted, tmp_path, image_dataset,
                                                tiny_checkpoint) -> None:
    fmt, config, result = extracted
    sets = config_overrides(tmp_path, image_dataset, tiny_checkpoint, f'store.format="{fmt}"')
    args = ["clip", "--config", str(DEMO_CONFIG)] + [a for s in sets for a in ("--set", s)]
    proc = subprocess.Popen([sys.executable, "-c", _THROTTLED, *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    store_file = tmp_path / "demo" / "features" / f"clip.{'zarr' if fmt == 'zarr' else 'h5'}"
    progress = store_file.with_name(store_file.name + ".progress")
    deadline = time.time() + 120
    while time.time() < deadline and len(list(progress.glob("chunk-*.json"))) < 2:
        assert proc.poll() is None, proc.stdout.read().decode()
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(list(progress.glob("chunk-*.json")))
    assert 2 <= done_before < 5 and read_manifest(store_file) is None

    resumed = extract_clip(make_config(tmp_path, image_dataset, tiny_checkpoint,
                                       f'store.format="{fmt}"'), progress=False)
    assert f"({done_before} chunks already done)" in resumed.lines[0]
    assert resumed.complete and resumed.summary["processed"] == 40 - 8 * done_before
    full, again = read_all(result.output), read_all(resumed.output)
    for name in ARRAYS:
        np.testing.assert_array_equal(again[name], full[name], err_msg=name)


def test_shards_fill_one_store(tmp_path, image_dataset, tiny_checkpoint, extracted) -> None:
    fmt, config, result = extracted
    if fmt != "zarr":
        cfg = make_config(tmp_path, image_dataset, tiny_checkpoint, f'store.format="{fmt}"')
        with pytest.raises(ValueError, match="--shard needs store.format = 'zarr'"):
            extract_clip(cfg, shard=Shard(0, 2), progress=False)
        return
    cfg = make_config(tmp_path, image_dataset, tiny_checkpoint)
    first = extract_clip(cfg, shard=Shard(0, 2), progress=False)
    assert not first.complete and first.summary["processed"] == 24 \
        and read_manifest(first.output) is None
    second = extract_clip(cfg, shard=Shard(1, 2), progress=False)
    assert second.complete and second.summary["processed"] == 16
    full, sharded = read_all(result.output), read_all(second.output)
    for name in ARRAYS:
        np.testing.assert_array_equal(sharded[name], full[name], err_msg=name)


def test_cli_errors_are_one_line(tmp_path, image_dataset, tiny_checkpoint) -> None:
    sets = config_overrides(tmp_path, image_dataset, tiny_checkpoint)
    base = [sys.executable, "-m", "extract", "clip", "--config", str(DEMO_CONFIG)]
    for extra, message in [("clip.batchsize=3", "unknown config key 'clip.batchsize'"),
                           ('clip.pretrained="nowhere/ckpt.pt"',
                            "extract.clip: input not found: nowhere/ckpt.pt")]:
        args = base + [a for s in [*sets, extra] for a in ("--set", s)]
        proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True)
        assert proc.returncode == 2
        assert proc.stderr.strip().splitlines() == [f"error: {proc.stderr.strip()[7:]}"]
        assert message in proc.stderr
