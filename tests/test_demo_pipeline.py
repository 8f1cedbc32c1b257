"""`make demo`'s pipeline at test scale, through the Makefile, in a fresh run folder: `make
ablation` runs `make all` (data, extract, cluster, train with SCST, eval) on a small demo set
with few steps, then three more decoders and their comparison."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys

import torch

from tests.conftest import REPO

PIPELINE_SETS = ["train.max_epochs=1", "train.batch_size=25", "train.warmup_steps=10",
                 "memory.warmup_iterations=20", "memory.refresh_stride=15",
                 "memory.bank_iterations=20", "memory.bank_cap=2000", "memory.n_prototypes=16",
                 "memory.knn=4", "cluster.n_iter=5", "memory.n_cross_prototypes=16",
                 "eval.batch_size=10", "scst.max_epochs=1"]


def test_make_ablation_on_a_small_demo(demo_run, tmp_path) -> None:
    """`make ablation` = `make all` (the main FSGR + PMA run, up to its report), then the CLIP,
    CLIP + PMA and FSGR decoders on the same caches, then one comparison table."""
    _, sets = demo_run  # the demo data and tiny CLIP exist: `make data` must skip them
    runs = tmp_path / "runs" / "demo"
    sets = [*sets, f"data.run_root={json.dumps(str(tmp_path / 'runs'))}", *PIPELINE_SETS]
    args = " ".join(f"--set {shlex.quote(s)}" for s in sets)
    # --no-print-directory: under `make test` this make is a sub-make, which would otherwise
    # print "make[1]: Leaving directory ..." lines
    result = subprocess.run(["make", "--no-print-directory", "ablation", "DATASET=demo",
                             f"ARGS={args}", f"RUNS={runs}"], cwd=REPO, capture_output=True,
                            text=True, timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "demo data: up to date" in output and "tiny CLIP: up to date" in output
    for stage in ("extract encode", "cluster", "train: ", "train scst: ", "evaluate captions"):
        assert stage in output, stage
    assert output.count("extract clip: creating") == output.count("extract encode: creating") \
        == 1  # the three extra decoders reuse the caches

    lines = result.stdout.strip().splitlines()
    reports = [line for line in lines if line.startswith("evaluate report: ")]
    assert len(reports) == 1 and reports[0].endswith("report.html")
    report = reports[0].removeprefix("evaluate report: ")
    assert (runs / "eval" / "test" / "report.html").samefile(report)
    assert any(line.startswith("| demo/test |") for line in lines), "metrics table printed"
    metrics = json.loads((runs / "eval" / "test" / "metrics.json").read_text())["metrics"]
    assert {"Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "CHAIRi", "CHAIRs"} <= set(metrics)

    labels = ["CLIP", "CLIP+PMA", "FSGR", "FSGR+PMA"]
    blocks = (runs / "ablation.md").read_text().strip().split("\n\n")
    table, heading, differences, notes = blocks[:4]
    provenance = next(b for b in blocks if b.startswith("Provenance"))
    subsets = [b for b in blocks[4:blocks.index(provenance)] if b.startswith("**Subset ")]
    assert [b.split(" (")[0] for b in subsets] == ["**Subset counter_prior",
                                                   "**Subset in_prior"]  # demo.toml's subsets
    assert [row.split("|")[1].strip() for row in table.splitlines()[2:]] == labels
    assert "±" not in table  # one seed: the values as they are
    images = json.loads((runs / "eval" / "test" / "metrics.json").read_text())["images"]
    assert heading.startswith(f"Difference from CLIP, paired bootstrap over the {images} test "
                              "images (seeds pooled per image): 1000 resamples, seed 0, 95%")
    assert [row.split("|")[1].strip() for row in differences.splitlines()[2:]] == labels[1:]
    signatures = [line for line in notes.splitlines() if line.startswith("- `")]
    assert [line.split(":")[0] for line in signatures] == [f"- `{label}" for label in labels]
    assert all("train:xe+scst|cand:beam5|base:mean|eos:loss|norm:max_length" in line
               for line in signatures)
    sources = provenance.splitlines()[1:]
    assert [line.split(":")[0] for line in sources] == [f"- `{label}" for label in labels]
    assert all(" | evaluate.score config " in line and " | train.scst config " in line
               and line.endswith(" seed 0`") for line in sources), sources
    summary = json.loads((runs / "ablation.json").read_text())
    assert [row["label"] for row in summary["variants"]] == labels
    assert set(summary["variants"][3]["difference_from_baseline"]) == \
        {"CIDEr", "CHAIRs", "CHAIRi"}
    assert set(summary["subsets"]) == {"in_prior", "counter_prior"}
    assert (runs / "ablation.tex").is_file() and lines[-1].endswith("ablation.tex")
    for name, visual_input, memory in (("clip", "clip", False), ("clip_pma", "clip", True),
                                       ("fsgr", "fsgr", False)):
        experiment = runs / "experiments" / name
        assert (experiment / "eval" / "test" / "metrics.json").is_file()
        meta = torch.load(experiment / "train" / "scst" / "best.pt", weights_only=True)["meta"]
        assert meta["visual_input"] == visual_input
        has_memory = any("memory_keys" in key for key in torch.load(
            experiment / "train" / "best.pt", weights_only=True)["model"])
        assert has_memory == memory

    _staleness_through_the_programs(sets, tmp_path)


def _staleness_through_the_programs(sets: list[str], tmp_path) -> None:
    """On the finished pipeline: a changed FSGR key makes `train` refuse (naming the stage to
    rebuild) and `make status` report everything below it stale; moving the run folder keeps
    every stage current."""
    options = [arg for s in sets for arg in ("--set", s)]
    refused = subprocess.run([sys.executable, "-m", "train", "--config", "configs/demo.toml",
                              *options, "--set", "fsgr.top_k=5"],
                             cwd=REPO, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert refused.stderr.startswith("error: ") and " its input extract.fit " in refused.stderr \
        and \
        refused.stderr.count("\n") == 1 and "python -m extract fit" in refused.stderr

    def status(*extra: str) -> dict[str, str]:
        args = " ".join(f"--set {shlex.quote(s)}" for s in [*sets, *extra])
        done = subprocess.run(["make", "--no-print-directory", "status", f"ARGS={args}"],
                              cwd=REPO, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        return {line.split()[1]: line.split()[0] for line in done.stdout.splitlines()
                if line.split() and line.split()[0] in ("ok", "stale", "todo")}

    before = status()
    assert set(before.values()) == {"ok"}, before
    changed = status("fsgr.top_k=5")
    assert changed["extract.clip"] == changed["extract.concepts"] == "ok"
    assert changed["extract.fit"] == "stale"
    assert {changed[name] for name in ("extract.encode", "train", "train.scst",
                                       "evaluate.captions", "evaluate.score",
                                       "evaluate.report")} == {"stale"}

    moved = tmp_path / "moved" / "runs"
    shutil.move(tmp_path / "runs", moved)
    after_move = status(f"data.run_root={json.dumps(str(moved))}")
    assert after_move == before, after_move
