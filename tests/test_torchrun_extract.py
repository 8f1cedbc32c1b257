"""`extract clip` / `extract encode` scaled out with torchrun's environment (RANK / WORLD_SIZE /
LOCAL_RANK) on the CPU: each process fills its shard of one store, and the store equals a
single-process one; `--shard` beside torchrun's environment must agree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from extract.clip_features import extract_clip
from extract.concepts import build_concepts
from extract.fsgr_encode import encode_fsgr
from extract.fsgr_fit import fit_fsgr
from extract.vocab_stage import build_vocab
from shared.chunked_stage import Shard, launcher_shard, rank_device, resolve_shard
from shared.feature_store import FeatureStore, remove_store
from shared.manifest import manifest_path, read_manifest
from tests.conftest import DEMO_CONFIG, REPO, config_overrides, make_config

TORCHRUN = Path(sys.executable).with_name("torchrun")
FIT_SETS = ("fsgr.epochs=1", "fsgr.concept_min_count=2", "fsgr.warmup_steps=0",
            "fsgr.batch_size=8")


CLIP_ARRAYS = ("patch_tokens", "image_embed", "image_ids", "valid", "visual_proj")
FSGR_ARRAYS = ("features", "codebook_index", "topk_ids", "image_ids", "valid")


def read_all(path: Path, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    with FeatureStore.open(path) as store:
        return {name: store.read(name) for name in names}


def test_shard_from_the_launcher_environment() -> None:
    env = {"RANK": "1", "WORLD_SIZE": "3", "LOCAL_RANK": "1"}
    assert launcher_shard({}) is None and resolve_shard(None, {}) == Shard()
    assert resolve_shard("2/4", {}) == Shard(2, 4)
    assert resolve_shard(None, env) == Shard(1, 3) == resolve_shard("1/3", env)
    with pytest.raises(ValueError) as info:
        resolve_shard("0/3", env)
    assert str(info.value) == ("--shard 0/3 disagrees with torchrun's RANK=1 WORLD_SIZE=3: "
                               "leave --shard out under torchrun")
    with pytest.raises(ValueError, match="RANK=5 is not below WORLD_SIZE=3"):
        launcher_shard({"RANK": "5", "WORLD_SIZE": "3"})
    with pytest.raises(ValueError, match="not integers"):
        launcher_shard({"WORLD_SIZE": "3"})
    cpu = torch.device("cpu")
    assert rank_device(cpu, env) == cpu  # only CUDA devices follow LOCAL_RANK


def _env(rank: int, world: int, port: int = 29511) -> dict[str, str]:
    return {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}


def _args(command: str, sets: list[str]) -> list[str]:
    return [command, "--config", str(DEMO_CONFIG), *[a for s in sets for a in ("--set", s)]]


def test_shard_option_disagreeing_with_torchrun_is_one_line(tmp_path, image_dataset,
                                                            tiny_checkpoint, monkeypatch) -> None:
    from typer.testing import CliRunner

    from extract.__main__ import app
    sets = config_overrides(tmp_path, image_dataset, tiny_checkpoint)
    for key, value in _env(1, 2).items():
        monkeypatch.setenv(key, value)
    for command in ("clip", "encode"):
        result = CliRunner().invoke(app, [*_args(command, sets), "--shard", "0/2"])
        assert result.exit_code == 2
        assert result.stderr.strip() == ("error: --shard 0/2 disagrees with torchrun's RANK=1 "
                                         "WORLD_SIZE=2: leave --shard out under torchrun")
    result = CliRunner().invoke(app, _args("all", sets))
    assert result.exit_code == 2 and result.stderr.startswith(
        "error: extract all does not run under torchrun")


@pytest.mark.skipif(not TORCHRUN.exists(), reason="no torchrun beside this Python")
def test_torchrun_clip_equals_one_process(tmp_path, image_dataset, tiny_checkpoint) -> None:
    single = extract_clip(make_config(tmp_path / "one", image_dataset, tiny_checkpoint),
                          progress=False)
    sets = config_overrides(tmp_path / "two", image_dataset, tiny_checkpoint)
    proc = subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node", "2",
                           "-m", "extract", *_args("clip", sets)], cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    store = tmp_path / "two" / "demo" / "features" / "clip.zarr"
    manifest = read_manifest(store)
    assert manifest is not None and manifest["identity"] == read_manifest(single.output)["identity"]
    assert "other shards still running" in proc.stdout  # the first rank to finish said so
    full, sharded = read_all(single.output, CLIP_ARRAYS), read_all(store, CLIP_ARRAYS)
    for name in full:
        np.testing.assert_array_equal(sharded[name], full[name], err_msg=name)


def test_encode_shards_from_the_environment_equal_one_process(tmp_path, image_dataset,
                                                              tiny_checkpoint) -> None:
    config = make_config(tmp_path, image_dataset, tiny_checkpoint, *FIT_SETS)
    build_vocab(config)
    assert extract_clip(config, progress=False).complete
    build_concepts(config)
    fit_fsgr(config, progress=False)
    single = encode_fsgr(config, progress=False)
    assert single.complete
    expected = read_all(single.output, FSGR_ARRAYS)
    remove_store(single.output)
    manifest_path(single.output).unlink()
    shutil.rmtree(single.output.with_name(single.output.name + ".progress"), ignore_errors=True)

    sets = config_overrides(tmp_path, image_dataset, tiny_checkpoint, *FIT_SETS)
    procs = [subprocess.Popen([sys.executable, "-m", "extract", *_args("encode", sets)],
                              cwd=REPO, env=_env(rank, 2), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for rank in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert read_manifest(single.output) is not None
    again = read_all(single.output, FSGR_ARRAYS)
    for name in expected:
        np.testing.assert_array_equal(again[name], expected[name], err_msg=name)
