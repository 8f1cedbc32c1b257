"""`evaluate compare` over seeds: mean ± sd per row, paired-bootstrap intervals over the test
images, provenance, the JSON; on small eval folders built here (metrics.json, its manifest,
per_image.json, and the captions' and training manifests that lead to the seed)."""

from __future__ import annotations

import json
import statistics
import subprocess
from pathlib import Path

import numpy as np
import pytest
from pycocoevalcap.cider.cider import Cider
from scipy.stats import bootstrap
from typer.testing import CliRunner

from evaluate.__main__ import app
from evaluate.chair import chair_scores
from evaluate.chair_vocabulary import ChairVocabulary
from evaluate.compare import NoteSection, Variant, compare_runs
from evaluate.paired_bootstrap import (PerImage, corpus_value, paired_difference,
                                       read_per_image)
from shared.atomic_files import write_json_atomic
from shared.manifest import manifest_path
from tests.conftest import REPO

SIGNATURE = "train:xe|beam:5|maxlen:20|split:test(40)|refs:captions.json|chair:original"


def entries(cider: np.ndarray, mentions: np.ndarray, hallucinated: np.ndarray,
            ids: list[int] | None = None) -> list[dict]:
    """per_image.json entries with the given per-image CIDEr and CHAIR counts (mentioned:
    'dog' repeated, hallucinated ones 'cat', as evaluate.chair lists them)."""
    ids = ids if ids is not None else list(range(len(cider)))
    return [{"image_id": i, "caption": "a caption", "scores": {"CIDEr": float(c), "Bleu_4": 0.1},
             "chair": {"image_id": i, "mentioned": ["dog"] * int(m - h) + ["cat"] * int(h),
                       "hallucinated": ["cat"] * int(h), "covered": [], "ground_truth": ["dog"],
                       "hallucinated_words": []}}
            for i, c, m, h in zip(ids, cider, mentions, hallucinated)]


def corpus_metrics(per_image: list[dict]) -> dict[str, float]:
    """The corpus metrics `evaluate score` writes for these entries, counted here by hand."""
    mentions = sum(len(e["chair"]["mentioned"]) for e in per_image)
    hallucinations = sum(len(e["chair"]["hallucinated"]) for e in per_image)
    return {"CIDEr": float(np.mean([e["scores"]["CIDEr"] for e in per_image])),
            "CHAIRs": sum(bool(e["chair"]["hallucinated"]) for e in per_image) / len(per_image),
            "CHAIRi": hallucinations / mentions if mentions else 0.0}


def write_run(experiment: Path, per_image: list[dict], seed: int | None = None,
              metrics: dict[str, float] | None = None) -> Path:
    """`<experiment>/eval/test/` as `evaluate score` leaves it, and (with `seed`) the SCST
    checkpoint's manifest it was decoded from; returns the eval folder."""
    eval_dir = experiment / "eval" / "test"
    values = {**corpus_metrics(per_image), **(metrics or {})}
    write_json_atomic(eval_dir / "per_image.json", per_image)
    write_json_atomic(eval_dir / "metrics.json", {
        "split": "test", "images": len(per_image), "metrics": values, "not_computed": {},
        "memory": {}, "signature": {"line": SIGNATURE}})
    name = experiment.name
    write_json_atomic(manifest_path(eval_dir / "metrics.json"), {
        "stage": "evaluate.score", "config_hash": f"eval-hash-{name}",
        "identity": f"eval-id-{name}", "code_version": "abc1234", "config": {},
        "inputs": {"evaluate.captions": f"captions-{name}"}})
    if seed is not None:
        write_json_atomic(manifest_path(eval_dir / "captions.json"), {
            "stage": "evaluate.captions", "identity": f"captions-{name}",
            "inputs": {"train.scst": f"train-id-{name}"}})
        write_json_atomic(manifest_path(experiment / "train" / "scst" / "best.pt"), {
            "stage": "train.scst", "config_hash": f"train-hash-{name}",
            "identity": f"train-id-{name}", "code_version": "def5678",
            "config": {"train.seed": seed}})
    return eval_dir


def values(cider, mentions=None, hallucinated=None) -> PerImage:  # noqa: ANN001
    """PerImage of constructed values (no CHAIR counts: zeros)."""
    cider = np.asarray(cider, dtype=float)
    mentions = np.zeros_like(cider) if mentions is None else np.asarray(mentions, float)
    hallucinated = np.zeros_like(cider) if hallucinated is None else \
        np.asarray(hallucinated, float)
    return PerImage(np.arange(len(cider)), {"cider": cider, "mentions": mentions,
                                            "hallucinated": hallucinated,
                                            "hallucinating": (hallucinated > 0).astype(float)})


def test_full_sample_values_are_the_corpus_metrics(tmp_path: Path) -> None:
    """On a run's own per_image.json (pycocoevalcap's CIDEr-D, evaluate.chair's counts) the
    bootstrap's full-sample CIDEr, CHAIRs and CHAIRi are the corpus metrics."""
    captions = {1: "a dog and a dog and a cat", 2: "a man riding a horse on a beach",
                3: "a cat on a couch next to a remote", 4: "a plate of food with a fork",
                5: "two people with surfboards", 6: "a dog chasing a frisbee"}
    references = {1: ["a dog lying next to another dog", "two dogs on a rug"],
                  2: ["a person rides a horse near the sea", "a man on a horse"],
                  3: ["a cat sleeping on a sofa", "a cat on a couch"],
                  4: ["a plate with food and a fork", "food on a plate"],
                  5: ["surfers on the beach", "two people carrying boards"],
                  6: ["a dog catching a frisbee", "a dog in a park"]}
    truth = {1: {"dog"}, 2: {"person", "horse"}, 3: {"cat", "couch"}, 4: {"dining table", "fork"},
             5: {"person", "surfboard"}, 6: {"dog"}}
    cider, per_image_cider = Cider().compute_score(references, {i: [c] for i, c in
                                                                captions.items()})
    chair, images = chair_scores(captions, truth, ChairVocabulary.coco())
    per_image = [{"image_id": i, "scores": {"CIDEr": float(score)},
                  "chair": images[i].to_json()} for i, score in zip(references, per_image_cider)]
    metrics = {"CIDEr": float(cider), "CHAIRs": chair["CHAIRs"], "CHAIRi": chair["CHAIRi"]}
    assert chair["mentions"] > chair["hallucinations"] > 0  # a real case: repeats, misses
    run = write_run(tmp_path / "main", per_image, metrics=metrics)
    loaded = read_per_image(run / "per_image.json")
    for name, value in metrics.items():
        assert corpus_value(name, loaded) == pytest.approx(value, rel=1e-12, abs=1e-15), name
    result = compare_runs([f"A={run}", f"B={run}"])  # compare checks the same equality
    difference = result.payload["variants"][1]["difference_from_baseline"]
    assert {k: d["baseline"] for k, d in difference.items()} == pytest.approx(metrics)


def test_per_image_that_disagrees_with_metrics_is_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    per_image = entries(rng.uniform(0, 2, 20), np.full(20, 2), rng.integers(0, 2, 20))
    run = write_run(tmp_path / "main", per_image, metrics={"CIDEr": 0.5})
    result = CliRunner().invoke(app, ["compare", f"A={run}"])
    assert result.exit_code == 2
    assert result.output.startswith(f"error: {run / 'per_image.json'} does not reproduce "
                                    "metrics.json's CIDEr")
    assert len(result.output.strip().splitlines()) == 1


def test_no_difference_interval_covers_zero() -> None:
    rng = np.random.default_rng(1)
    n = 100
    x, y = rng.uniform(0, 2, n), rng.uniform(0, 2, n)
    mx, my = rng.integers(1, 5, n), rng.integers(1, 5, n)
    hx, hy = np.minimum(mx, rng.integers(0, 2, n)), np.minimum(my, rng.integers(0, 3, n))
    base = values(x, mx, hx)
    for metric in ("CIDEr", "CHAIRs", "CHAIRi"):
        same = paired_difference(metric, base, base)
        assert same.estimate == 0 and same.low == same.high == 0 and not same.excludes_zero
    # exchangeable: every pair of values appears once as (baseline, variant) and once swapped
    baseline = values(np.r_[x, y], np.r_[mx, my], np.r_[hx, hy])
    swapped = values(np.r_[y, x], np.r_[my, mx], np.r_[hy, hx])
    for metric in ("CIDEr", "CHAIRs", "CHAIRi"):
        difference = paired_difference(metric, baseline, swapped)
        assert difference.estimate == pytest.approx(0, abs=1e-12)
        assert difference.low < 0 < difference.high, metric
        assert not difference.excludes_zero


def test_clear_difference_excludes_zero_with_the_known_estimate() -> None:
    n = 300
    rng = np.random.default_rng(2)
    cider = rng.uniform(0, 2, n)
    noise = np.where(np.arange(n) % 2 == 0, 0.05, -0.05)  # sums to 0: difference exactly 0.1
    mentions = np.full(n, 4)
    hallucinated = np.where(np.arange(n) % 2 == 0, 2, 0)  # half the captions, 2 of 4 mentions
    baseline = values(cider, mentions, hallucinated)
    better = values(cider + 0.1 + noise, mentions, np.zeros(n))
    known = {"CIDEr": 0.1, "CHAIRs": -0.5, "CHAIRi": -0.25}
    for metric, expected in known.items():
        difference = paired_difference(metric, baseline, better, resamples=1000, seed=0)
        assert difference.estimate == pytest.approx(expected, abs=1e-12)
        assert difference.excludes_zero, metric
        assert difference.low <= difference.estimate <= difference.high
        assert difference.method == "BCa"


def test_pairing_narrows_the_interval() -> None:
    """Per-image CIDEr varies far more between images than between the variants: resampling
    the variants independently cannot tell them apart, the paired bootstrap can."""
    n = 200
    rng = np.random.default_rng(3)
    cider = rng.uniform(0, 2, n)
    variant = cider + 0.03 + rng.normal(0, 0.01, n)
    paired = paired_difference("CIDEr", values(cider), values(variant), seed=0)
    assert paired.excludes_zero and paired.low > 0
    unpaired = bootstrap((variant, cider), lambda v, b, axis=-1: v.mean(axis) - b.mean(axis),
                         n_resamples=1000, paired=False, vectorized=True,
                         rng=np.random.default_rng(0)).confidence_interval
    assert unpaired.low < 0 < unpaired.high
    assert paired.high - paired.low < (unpaired.high - unpaired.low) / 5


def test_seeds_give_mean_sd_pooled_intervals_provenance_and_json(tmp_path: Path) -> None:
    n = 40
    rng = np.random.default_rng(4)
    cider = rng.uniform(0, 2, n)
    mentions = rng.integers(1, 4, n)
    runs: dict[str, list[Path]] = {"base": [], "pma": []}
    bleu = {"base": [0.30, 0.34], "pma": [0.40, 0.41, 0.45]}
    for label, scores in bleu.items():
        for seed, b4 in enumerate(scores):
            shift = 0.0 if label == "base" else 0.2 + 0.01 * seed
            hallucinated = np.minimum(mentions, rng.integers(0, 2, n)) if label == "base" \
                else np.zeros(n, dtype=int)
            name = label if seed == 0 else f"{label}_s{seed}"
            runs[label].append(write_run(tmp_path / name, entries(cider + shift, mentions,
                                                                  hallucinated),
                                         seed=seed, metrics={"Bleu_4": b4}))
    output = tmp_path / "out" / "table"
    result = CliRunner().invoke(app, [
        "compare", "BASE=" + ",".join(map(str, runs["base"])),
        "PMA=" + ",".join(map(str, runs["pma"])), "-o", str(output), "--resamples", "1000",
        "--seed", "7", "--confidence", "0.9"])
    assert result.exit_code == 0, result.output
    markdown = output.with_suffix(".md").read_text()
    sd = statistics.stdev(bleu["pma"])
    assert f"| PMA | **{100 * statistics.fmean(bleu['pma']):.1f} ± {100 * sd:.1f}** |" in markdown
    assert r"$\pm$" in output.with_suffix(".tex").read_text()
    payload = json.loads(output.with_suffix(".json").read_text())
    assert payload["bootstrap"] | {"interval": None} == {
        "resamples": 1000, "seed": 7, "confidence_level": 0.9, "paired": True,
        "unit": "test image", "images": n, "metrics": ["CIDEr", "CHAIRs", "CHAIRi"],
        "interval": None, "seeds": "per-image values averaged over a variant's seeds"}
    base, pma = payload["variants"]
    assert base["seeds"] == [0, 1] and pma["seeds"] == [0, 1, 2]
    assert pma["mean"]["Bleu_4"] == pytest.approx(statistics.fmean(bleu["pma"]))
    assert pma["std"]["Bleu_4"] == pytest.approx(sd)
    assert [r["metrics"]["Bleu_4"] for r in pma["runs"]] == bleu["pma"]
    assert base["difference_from_baseline"] is None
    cider_difference = pma["difference_from_baseline"]["CIDEr"]
    assert cider_difference["estimate"] == pytest.approx(0.21)  # seeds' shifts 0.20..0.22
    assert cider_difference["excludes_zero"] and "0.21" not in markdown
    assert pma["difference_from_baseline"]["CHAIRi"]["variant"] == 0.0
    assert f"| PMA | +21.0 [{100 * cider_difference['low']:+.1f}, " \
        f"{100 * cider_difference['high']:+.1f}] * |" in markdown
    assert "Difference from BASE, paired bootstrap over the 40 test images" in markdown
    assert "document frequencies stay those of the full test set" in markdown
    assert f"- `BASE: {SIGNATURE}`" in markdown and f"- `PMA: {SIGNATURE}`" in markdown
    line = (f"- `PMA seed 2: {runs['pma'][2] / 'metrics.json'} | evaluate.score config "
            "eval-hash-pma_s2 identity eval-id-pma_s2 code abc1234 | train.scst config "
            "train-hash-pma_s2 identity train-id-pma_s2 code def5678 seed 2`")
    assert line in markdown
    assert pma["runs"][2]["provenance"]["training"]["config_hash"] == "train-hash-pma_s2"


def test_single_runs_print_as_before_and_missing_per_image_is_said(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    first = write_run(tmp_path / "a", entries(rng.uniform(0, 2, 10), np.ones(10), np.zeros(10)))
    second = write_run(tmp_path / "b", entries(rng.uniform(0, 2, 10), np.ones(10), np.ones(10)))
    (second / "per_image.json").unlink()
    result = compare_runs([f"A={first}", f"B={second}"])
    assert "±" not in result.markdown.split("\n\n")[0]
    assert result.payload["variants"][0]["std"] is None
    assert f"- no interval for B: {second / 'per_image.json'} does not exist" in result.markdown
    assert "Difference from" not in result.markdown
    assert "training: no captions.json manifest beside metrics.json" in result.markdown


def test_runs_of_one_variant_must_score_the_same_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    one = write_run(tmp_path / "s0", entries(rng.uniform(0, 2, 10), np.ones(10), np.zeros(10)),
                    seed=0)
    other = write_run(tmp_path / "s1", entries(rng.uniform(0, 2, 10), np.ones(10),
                                               np.zeros(10), ids=list(range(5, 15))), seed=1)
    result = CliRunner().invoke(app, ["compare", f"A={one},{other}"])
    assert result.exit_code == 2
    assert result.output == ("error: the runs of A do not cover the same test images: A seed 0 "
                             "has 10, A seed 1 has 10, 5 in common (score them on the same "
                             "split and images)\n")


@pytest.mark.parametrize("arguments, message", [
    (["{a},{b}"], "several runs make one row: name it"),
    (["A={a}", "A={b}"], "label 'A' is given twice"),
    (["A={a},{a}"], "lists the same run twice"),
    (["A={a},{b}"], "include training seed 0 twice"),
    (["A={a}", "--resamples", "999"], "--resamples must be at least 1000, got 999"),
])
def test_bad_arguments_are_refused_in_one_line(tmp_path: Path, arguments: list[str],
                                               message: str) -> None:
    rng = np.random.default_rng(7)
    runs = {name: write_run(tmp_path / name, entries(rng.uniform(0, 2, 5), np.ones(5),
                                                     np.zeros(5)), seed=0)
            for name in ("a", "b")}
    result = CliRunner().invoke(app, ["compare", *(a.format(**runs) for a in arguments)])
    assert result.exit_code == 2 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1


def test_make_ablation_gives_each_row_its_seeds(tmp_path: Path) -> None:
    """`make -n ablation SEEDS="0 3"` (nothing runs): every decoder trains per seed with
    train.seed, the first seed keeps the one-seed experiment names and the main run, and one
    compare gets each row's runs."""
    runs = tmp_path / "runs"
    result = subprocess.run(["make", "--no-print-directory", "-n", "ablation", "PY=python",
                             "SEEDS=0 3", f"RUNS={runs}"], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    trains = [line for line in lines if line.startswith("python -m train ")]
    assert trains[0] == "python -m train --config configs/demo.toml --set train.seed=0"  # make all
    experiments = [(line.split("train.experiment=")[1].split()[0],
                    line.rsplit("train.seed=", 1)[1].split()[0]) for line in trains[1:]]
    assert experiments == [("clip", "0"), ("clip_pma", "0"), ("fsgr", "0"), ("clip_s3", "3"),
                           ("clip_pma_s3", "3"), ("fsgr_s3", "3"), ("fsgr_pma_s3", "3")]
    scores = [line for line in lines if line.startswith("python -m evaluate score ")]
    assert len(scores) == len(trains)
    compare = " ".join(lines[lines.index(next(line for line in lines
                                              if "evaluate compare" in line)):])
    for label, first, other in (("CLIP", "experiments/clip", "experiments/clip_s3"),
                                ("FSGR+PMA", "", "experiments/fsgr_pma_s3")):
        assert f" {label}={runs / first if first else runs},{runs / other} " in compare + " "


def test_extra_note_sections_follow_the_provenance(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    run = write_run(tmp_path / "a", entries(rng.uniform(0, 2, 5), np.ones(5), np.zeros(5)))

    def section(variants: list[Variant]) -> NoteSection:
        return NoteSection("Per-category changes", [f"{v.label}: {len(v.runs)} run(s)"
                                                    for v in variants])

    result = compare_runs([f"A={run}"], sections=(section, lambda variants: None))
    assert result.markdown.endswith("\n\n**Per-category changes**\n- A: 1 run(s)")
    assert result.latex.endswith("% Per-category changes\n% A: 1 run(s)")
    assert result.payload["sections"] == [{"title": "Per-category changes",
                                           "lines": ["A: 1 run(s)"]}]
