"""`make demo`'s pipeline at test scale: `make all` (data, extract, cluster, train with SCST,
eval) on a small demo set with few steps, through the Makefile, in a fresh run folder."""

from __future__ import annotations

import json
import shlex
import subprocess

from tests.conftest import REPO

PIPELINE_SETS = ["train.max_epochs=1", "train.batch_size=25", "train.warmup_steps=10",
                 "memory.warmup_iterations=20", "memory.refresh_stride=15",
                 "memory.bank_iterations=20", "memory.bank_cap=2000", "memory.n_prototypes=16",
                 "memory.knn=4", "cluster.n_iter=5", "memory.n_cross_prototypes=16",
                 "eval.batch_size=10", "scst.max_epochs=1"]


def test_make_all_on_a_small_demo(demo_run, tmp_path) -> None:
    _, sets = demo_run  # the demo data and tiny CLIP exist: `make data` must skip them
    sets = [*sets, f"data.run_root={json.dumps(str(tmp_path / 'runs'))}", *PIPELINE_SETS]
    args = " ".join(f"--set {shlex.quote(s)}" for s in sets)
    # --no-print-directory: under `make test` this make is a sub-make, which would otherwise
    # print "make[1]: Leaving directory ..." after the report line
    result = subprocess.run(["make", "--no-print-directory", "all", "DATASET=demo",
                             f"ARGS={args}"], cwd=REPO, capture_output=True, text=True,
                            timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "up to date" in output  # demo data / tiny CLIP reused
    for stage in ("extract encode", "cluster", "train: ", "train scst: ", "evaluate captions"):
        assert stage in output, stage
    lines = result.stdout.strip().splitlines()
    assert lines[-1].startswith("evaluate report: ") and lines[-1].endswith("report.html")
    report = lines[-1].removeprefix("evaluate report: ")
    assert (tmp_path / "runs" / "demo" / "eval" / "test" / "report.html").samefile(report)
    table = [line for line in lines if line.startswith("| demo/test |")]
    assert table, "the metrics table is printed"
    metrics = json.loads((tmp_path / "runs" / "demo" / "eval" / "test" / "metrics.json"
                          ).read_text())["metrics"]
    assert {"BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "CHAIR_i", "CHAIR_s"} <= set(metrics)
