"""One process per output: a second writer stops at once naming the holder's pid; the shards of
one store share it and claim chunks, so every chunk is computed exactly once; the locks and
claims of a killed process never block the next run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import cluster.__main__ as cluster_main
import evaluate.__main__ as evaluate_main
import extract.__main__ as extract_main
import train.__main__ as train_main
from extract.clip_features import extract_clip
from shared.feature_store import CommitLog, FeatureStore
from shared.manifest import read_manifest
from shared.output_lock import OutputBusy, lock_path, output_lock
from shared.stages import (clip_stage, cluster_activations_stage, eval_dir, fit_stage,
                           prototypes_dir, train_dir, vocab_stage)
from tests.conftest import DEMO_CONFIG, REPO, config_overrides, make_config

_HOLD = """
import sys, time
from contextlib import ExitStack
from pathlib import Path
from shared.output_lock import output_lock, try_flock
mode, paths = sys.argv[1], sys.argv[2:]
with ExitStack() as stack:
    for path in paths:
        if path.endswith(".lock"):  # a chunk claim
            assert try_flock(Path(path)) is not None
        else:
            stack.enter_context(output_lock(Path(path), "holder", shared=mode == "shared"))
    print("held", flush=True)
    time.sleep(600)
"""

_COUNTED = """
import os, sys, time
import shared.chunked_stage as cs
log, original = sys.argv[1], cs.ChunkedOutput.write_chunk
def counted(self, chunk, values, failures):
    with open(log, "a") as fh:
        fh.write(f"{chunk} {os.getpid()}\\n")
    time.sleep(0.3)  # hold the claim a while, so the shard processes overlap
    original(self, chunk, values, failures)
cs.ChunkedOutput.write_chunk = counted
from extract.__main__ import app
app(sys.argv[2:])
"""


def hold(mode: str, *paths: Path) -> subprocess.Popen:
    """A process holding the locks (output paths) and claims (`*.lock` paths) until killed."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, mode, *map(str, paths)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def options(sets: list[str]) -> list[str]:
    return ["--config", str(DEMO_CONFIG), *(a for s in sets for a in ("--set", s))]


def test_second_writer_stops_at_once_naming_the_holder(tmp_path, image_dataset,
                                                       tiny_checkpoint) -> None:
    sets = config_overrides(tmp_path, image_dataset, tiny_checkpoint)
    config = make_config(tmp_path, image_dataset, tiny_checkpoint)
    checks = [(train_main.app, [], "train", train_dir(config)),
              (evaluate_main.app, ["score"], "evaluate score", eval_dir(config)),
              (evaluate_main.app, ["report"], "evaluate report", eval_dir(config)),
              (cluster_main.app, ["features"], "cluster features", prototypes_dir(config)),
              (cluster_main.app, ["activations"], "cluster activations",
               cluster_activations_stage(config).output.parent),
              (extract_main.app, ["vocab"], "extract vocab", vocab_stage(config).output),
              (extract_main.app, ["fit"], "extract fit", fit_stage(config).output),
              (extract_main.app, ["clip"], "extract clip", clip_stage(config).output)]
    holder = hold("exclusive", *{path for *_, path in checks})
    try:
        for app, command, what, path in checks:
            result = CliRunner().invoke(app, [*command, *options(sets)])
            assert result.exit_code == 2, (what, result.output)
            assert result.stderr.splitlines() == [
                f"error: {what}: another process (pid {holder.pid}) is writing {path}"]
        assert not clip_stage(config).output.exists()
    finally:
        kill(holder)
    result = CliRunner().invoke(extract_main.app, ["vocab", *options(sets)])
    assert result.exit_code == 0 and read_manifest(vocab_stage(config).output) is not None


def test_a_killed_holder_blocks_nothing(tmp_path, image_dataset, tiny_checkpoint) -> None:
    config = make_config(tmp_path, image_dataset, tiny_checkpoint)
    store = clip_stage(config).output
    claims = [CommitLog(store).claim_path(chunk) for chunk in range(5)]
    holder = hold("exclusive", store, *claims)
    with pytest.raises(OutputBusy, match=rf"another process \(pid {holder.pid}\) is writing"):
        extract_clip(config, progress=False)
    kill(holder)
    assert lock_path(store).read_text().strip() == str(holder.pid)  # stale pid, no lock
    result = extract_clip(config, progress=False)
    assert result.complete and result.summary["processed"] == 40
    assert len(CommitLog(store).committed()) == 5
    with output_lock(store, "test"):  # released again after the run
        pass


def test_whole_store_writer_waits_for_no_shard(tmp_path, image_dataset,
                                               tiny_checkpoint) -> None:
    """Shards hold the store's lock together; a whole-store run is refused while they do."""
    sets = config_overrides(tmp_path, image_dataset, tiny_checkpoint)
    store = clip_stage(make_config(tmp_path, image_dataset, tiny_checkpoint)).output
    shard = hold("shared", store)
    try:
        with output_lock(store, "another shard", shared=True):
            pass
        result = CliRunner().invoke(extract_main.app, ["clip", *options(sets)])
        assert result.exit_code == 2
        assert f"another process (pid {shard.pid}) is writing {store}" in result.stderr
    finally:
        kill(shard)


def test_shard_processes_compute_every_chunk_once(tmp_path, image_dataset,
                                                  tiny_checkpoint) -> None:
    reference = extract_clip(make_config(tmp_path / "reference", image_dataset,
                                         tiny_checkpoint), progress=False)
    sets = config_overrides(tmp_path / "runs", image_dataset, tiny_checkpoint)
    log = tmp_path / "computed.log"
    procs = [subprocess.Popen([sys.executable, "-c", _COUNTED, str(log), "clip", *options(sets),
                               "--shard", shard], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
             for shard in ("0/2", "1/2", "1/2")]  # the last one duplicates the second
    outputs = [proc.communicate(timeout=600)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0], outputs
    computed = sorted(int(line.split()[0]) for line in log.read_text().splitlines())
    assert computed == [0, 1, 2, 3, 4]
    store = clip_stage(make_config(tmp_path / "runs", image_dataset, tiny_checkpoint)).output
    assert sorted(CommitLog(store).committed()) == [0, 1, 2, 3, 4]
    assert read_manifest(store) is not None
    with FeatureStore.open(store) as sharded, FeatureStore.open(reference.output) as full:
        for name in ("patch_tokens", "image_embed", "image_ids", "valid"):
            np.testing.assert_array_equal(sharded.read(name), full.read(name), err_msg=name)
    assert not extract_clip(make_config(tmp_path / "runs", image_dataset, tiny_checkpoint),
                            progress=False).ran
