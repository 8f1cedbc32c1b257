"""`python -m evaluate` on the small demo run: score, CHAIR, CLIP-S, report, caption, compare."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

import evaluate.coco_metrics as coco_metrics
from evaluate.__main__ import app
from evaluate.checkpoint import load_trained_decoder
from evaluate.report_inputs import build_report
from evaluate.score import score
from shared.config import load_config
from shared.karpathy import load_karpathy, split_records
from shared.manifest import manifest_path
from shared.stages import eval_dir, train_dir
from tests.conftest import DEMO_CONFIG, EVAL_TRAIN_SETS
from train.trainer import train

CAPTION_METRICS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")


@pytest.fixture(scope="module")
def scored(scored_run):
    """The demo run trained briefly, its test split decoded and scored (with CLIP-S)."""
    return scored_run


def test_metrics_json_keys_and_ranges(scored) -> None:
    config, _, lines = scored
    folder = eval_dir(config)
    metrics = json.loads((folder / "metrics.json").read_text())
    test_ids = {r.image_id for r in split_records(
        load_karpathy(config.data.karpathy_json, config.data.image_root), "test")}
    assert metrics["split"] == "test" and metrics["images"] == len(test_ids) == 30
    values = metrics["metrics"]
    for name in CAPTION_METRICS:
        assert 0.0 <= values[name] <= (10.0 if name == "CIDEr" else 1.0), name
    assert values["Bleu_1"] > 0.3 and values["CIDEr"] > 0.05  # it learned something
    assert 0.0 <= values["CHAIRi"] <= 1.0 and 0.0 <= values["CHAIRs"] <= 1.0
    # CLIP-S of the reference ViT-B-32 with random weights (tests/test_clip_score.py checks
    # the values): in range, the text side of RefCLIP-S is not clipped at 0
    assert 0.0 <= values["CLIP-S"] <= 2.5 and values["RefCLIP-S"] <= 2.5
    assert "SPICE" not in values and any(n.startswith("SPICE skipped") for n in metrics["notes"])
    assert metrics["decoding"] == {"beam_size": 5, "max_length": 20}
    signature = metrics["signature"]
    assert signature["line"] == (
        "train:xe|beam:5|maxlen:20|split:test(30)|refs:captions_demo.json|chair:original")
    assert signature["split_images"] == 30 and signature["training"] == "xe"
    assert any(line == f"signature: {signature['line']}" for line in lines)
    assert metrics["not_computed"] == {"SPICE": next(
        n for n in metrics["notes"] if n.startswith("SPICE skipped"))}
    assert metrics["warnings"] == [] and metrics["caption_stats"]["captions"] == 30
    layers = config.decoder.n_dec_layers
    assert metrics["memory"] == {"self": True, "prototypes": 16, "n_prototypes": 16,
                                 "prototypes_per_layer": [16] * layers, "cross": False,
                                 "cross_prototypes": 0}
    printed = "\n".join(lines).splitlines()
    header = next(line for line in printed if line.startswith("| run |"))
    row = next(line for line in printed if line.startswith("| scored/test |"))
    assert " S |" in header and "| not computed |" in row  # SPICE: offline
    captions = json.loads((folder / "captions.json").read_text())
    assert {c["image_id"] for c in captions} == test_ids
    assert all(isinstance(c["caption"], str) and c["caption"] for c in captions)
    assert all(len(c["caption"].split()) <= 20 for c in captions)
    per_image = json.loads((folder / "per_image.json").read_text())
    assert {e["image_id"] for e in per_image} == test_ids
    entry = per_image[0]
    assert set(entry["scores"]) >= {*CAPTION_METRICS, "CLIP-S", "RefCLIP-S"}
    assert set(entry["chair"]) >= {"mentioned", "hallucinated", "covered", "ground_truth"}
    assert entry["chair"]["ground_truth"], "every demo image has annotated objects"
    assert any("| scored/test |" in line for line in lines)


def test_rerun_skips_and_changed_beam_redecodes(scored) -> None:
    config, sets, _ = scored
    lines = score(config, progress=False).lines
    assert lines[0].startswith("evaluate captions: up to date")
    assert lines[1].startswith("evaluate score: up to date")
    greedy = load_config(DEMO_CONFIG, [*sets, "eval.beam_size=1"])
    lines = score(greedy, progress=False).lines
    assert "beam 1" in lines[0]
    score(config, progress=False)  # back to beam 5 for the other tests


def test_missing_caption_file_stops_before_decoding(scored, tmp_path) -> None:
    config, sets, _ = scored
    captions = eval_dir(config) / "captions.json"
    before = captions.stat().st_mtime_ns
    broken = load_config(DEMO_CONFIG, [*sets, "eval.beam_size=2",
                                       f"data.captions_json=[{json.dumps(str(tmp_path / 'x'))}]"])
    with pytest.raises(ValueError,
                       match=r"x \(data.captions_json; or --set data.captions_json=\[\]"):
        score(broken, progress=False)
    assert captions.stat().st_mtime_ns == before  # nothing was decoded


def test_bad_instances_file_stops_before_decoding(scored, tmp_path) -> None:
    config, sets, _ = scored
    captions = eval_dir(config) / "captions.json"
    before = captions.stat().st_mtime_ns
    data = json.loads(Path(config.data.instances_json[0]).read_text())
    data["annotations"][3]["category_id"] = 999
    broken = tmp_path / "instances.json"
    broken.write_text(json.dumps(data))
    config = load_config(DEMO_CONFIG, [*sets, "eval.beam_size=2",
                                       f"data.instances_json=[{json.dumps(str(broken))}]"])
    with pytest.raises(ValueError) as info:
        score(config, progress=False)
    assert str(info.value) == (
        f"{broken}: annotations[3].category_id 999 is not the id of any entry of 'categories' "
        "(data.instances_json; or --set data.instances_json=[] to skip CHAIR)")
    assert captions.stat().st_mtime_ns == before  # nothing was decoded


def test_spice_missing_is_one_line_and_other_metrics_stay(tmp_path, monkeypatch) -> None:
    assert "not found in" in coco_metrics.spice_missing(tmp_path)
    for jar in coco_metrics.CORENLP_JARS:
        (tmp_path / jar).write_bytes(b"")
    assert coco_metrics.spice_missing(tmp_path) == ""
    monkeypatch.setattr(coco_metrics, "SPICE_LIB", tmp_path / "empty")
    result = coco_metrics.score_captions(
        {1: "a red circle on the left"},
        {1: ["A red circle on the left.", "a red ball at the left side"]}, spice=True)
    assert len(result.notes) == 1 and result.notes[0].startswith("SPICE skipped:")
    assert "\n" not in result.notes[0]
    assert set(result.corpus) == set(CAPTION_METRICS) and result.corpus["Bleu_1"] > 0.5


def test_one_scorer_scores_subsets_as_separate_runs_would(monkeypatch) -> None:
    """`CaptionScorer`: one PTB run and one METEOR process for the split and its subsets,
    values identical to pycocoevalcap run on each subset's captions alone (real Java)."""
    candidates = {1: "a red circle on the left.", 2: "two blue squares", 3: "A green star",
                  4: "a star and a heart", 5: "", 6: "a yellow cross above a diamond"}
    references = {1: ["A red circle on the left.", "a red ball at the left side"],
                  2: ["Two blue squares side by side.", "blue boxes"],
                  3: ["a green star", "a small green star at the top"],
                  4: ["A star next to a heart.", "a heart and a star"],
                  5: ["a purple triangle", "one triangle"],
                  6: ["a yellow cross above a diamond", "a cross and a diamond"]}
    subsets = [[1, 2, 3, 4, 5, 6], [2, 4, 6], [5, 1]]
    alone = [coco_metrics.score_captions({i: candidates[i] for i in ids},
                                         {i: references[i] for i in ids}, spice=False)
             for ids in subsets]
    starts = {"ptb": 0, "meteor": 0}
    tokenize, meteor = coco_metrics.ptb_tokenize, coco_metrics.Meteor

    def counted_tokenize(captions):  # noqa: ANN001, ANN202
        starts["ptb"] += 1
        return tokenize(captions)

    def counted_meteor():  # noqa: ANN202
        starts["meteor"] += 1
        return meteor()

    monkeypatch.setattr(coco_metrics, "ptb_tokenize", counted_tokenize)
    monkeypatch.setattr(coco_metrics, "Meteor", counted_meteor)
    with coco_metrics.CaptionScorer(candidates, references, spice=False) as scorer:
        shared = [scorer.score(ids) for ids in subsets]
    assert starts == {"ptb": 1, "meteor": 1}
    for own, reused in zip(alone, shared):
        assert reused.corpus == own.corpus and reused.per_image == own.per_image
        assert set(own.corpus) == set(CAPTION_METRICS)
    assert shared[1].corpus["CIDEr"] != shared[0].corpus["CIDEr"]
    with pytest.raises(ValueError, match="image id 7 is not among the scored captions"):
        coco_metrics.CaptionScorer(candidates, references, spice=False).score([1, 7])


def test_report_has_every_image(scored) -> None:
    config, _, _ = scored
    path = build_report(config)
    html = path.read_text()
    per_image = json.loads((eval_dir(config) / "per_image.json").read_text())
    for entry in per_image:
        assert f'id="img-{entry["image_id"]}"' in html
    assert html.count('class="cell') >= len(per_image) * 64  # 8x8 FSGR concept grid each
    assert "data:image/png;base64," in html  # the training curve
    layers = "/".join(["16"] * config.decoder.n_dec_layers)
    assert f"memory self=True cross=False ({layers} self-attention prototypes per layer in " \
        "the checkpoint)" in html
    items = banner_items(html)
    assert items[0].startswith("not computed: SPICE (SPICE skipped: ")  # offline
    assert not any("memory" in item for item in items)


def banner_items(html: str) -> list[str]:
    """The warnings the report's banner lists (checked against the count in its heading)."""
    banner = html[html.index('<section class="banner"'):html.index("</section>")]
    items = [item.split("</li>")[0] for item in banner.split("<li>")[1:]]
    noun = "warning" if len(items) == 1 else "warnings"
    assert f"<h2>{len(items)} {noun}: read before using these results</h2>" in banner
    return items


def test_caption_folder_with_a_corrupt_file(scored, tmp_path) -> None:
    config, sets, _ = scored
    folder = tmp_path / "mine"
    folder.mkdir()
    captions = {c["image_id"]: c["caption"] for c in
                json.loads((eval_dir(config) / "captions.json").read_text())}
    records = [r for r in load_karpathy(config.data.karpathy_json, config.data.image_root)
               if r.image_id in captions][:3]
    for r in records:
        shutil.copy(r.path, folder / r.path.name)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    args = ["caption", str(folder), "--config", str(DEMO_CONFIG)]
    for s in sets:
        args += ["--set", s]
    out = tmp_path / "captions.json"
    result = CliRunner().invoke(app, [*args, "--output", str(out)])
    assert result.exit_code == 3, result.output
    assert "broken.jpg" in result.output
    written = {e["file"]: e["caption"] for e in json.loads(out.read_text())}
    assert len(written) == 3
    for r in records:  # end to end from the raw file == the cached pipeline
        assert written[str(folder / r.path.name)] == captions[r.image_id]


def copy_metrics(config, target: Path, change: Callable[[dict], None]) -> dict:
    """The run's metrics.json, changed, written to `target` with a copy of its manifest."""
    metrics = json.loads((eval_dir(config) / "metrics.json").read_text())
    change(metrics)
    target.write_text(json.dumps(metrics))
    manifest = manifest_path(eval_dir(config) / "metrics.json")
    shutil.copy(manifest, manifest_path(target))
    return metrics


def test_compare_two_runs(scored, tmp_path) -> None:
    config, _, _ = scored
    other = tmp_path / "other.json"
    metrics = copy_metrics(config, other, lambda m: m.update(
        metrics={k: v / 2 for k, v in m["metrics"].items()}))
    result = CliRunner().invoke(app, ["compare", f"PMA={eval_dir(config)}", f"half={other}",
                                      "--output", str(tmp_path / "table")])
    assert result.exit_code == 0, result.output
    markdown = (tmp_path / "table.md").read_text()
    assert "| PMA |" in markdown and "| half |" in markdown and "**" in markdown
    latex = (tmp_path / "table.tex").read_text()
    assert latex.startswith(r"\begin{tabular}") and r"\textbf{" in latex
    cider = metrics["metrics"]["CIDEr"] * 2
    assert f"{100 * cider:.1f}" in markdown
    line = metrics["signature"]["line"]
    assert f"- `PMA: {line}`" in markdown and f"% half: {line}" in latex
    assert "†" not in markdown  # both runs have their prototypes
    missing = CliRunner().invoke(app, ["compare", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "no metrics.json" in missing.output


def test_compare_refuses_metrics_without_manifest(scored, tmp_path) -> None:
    config, _, _ = scored
    lone = tmp_path / "lone.json"
    copy_metrics(config, lone, lambda m: None)
    manifest_path(lone).unlink()
    result = CliRunner().invoke(app, ["compare", f"PMA={eval_dir(config)}", str(lone)])
    assert result.exit_code == 2
    assert result.output.strip() == (
        f"error: {lone} has no readable manifest (lone.json.manifest.json), so it is no "
        "complete evaluation: make it with `python -m evaluate score` (the run's --config/--set)")


@pytest.fixture(scope="module")
def memoryless(demo_run, scored):
    """A "PMA" run shorter than memory.warmup_iterations: trained and scored with 0
    prototypes; its train manifest carries a warning (as the trainer writes them)."""
    _, sets = demo_run
    sets = [*sets, *EVAL_TRAIN_SETS, "train.max_epochs=1", "memory.warmup_iterations=100000",
            'train.experiment="short"']
    config = load_config(DEMO_CONFIG, sets)
    train(config, progress=False)
    manifest = json.loads(manifest_path(train_dir(config) / "best.pt").read_text())
    manifest["summary"]["warnings"] = ["warning: made up by the test"]
    manifest_path(train_dir(config) / "best.pt").write_text(json.dumps(manifest))
    lines = score(config, progress=False).lines
    return config, lines


def test_pma_without_prototypes_is_stated_everywhere(scored, memoryless, tmp_path) -> None:
    config, lines = memoryless
    metrics = json.loads((eval_dir(config) / "metrics.json").read_text())
    assert metrics["memory"]["self"] is True and metrics["memory"]["prototypes"] == 0
    warning = next(w for w in metrics["warnings"] if "0 memory prototypes" in w)
    assert "not PMA's" in warning and warning in lines  # printed by `evaluate score` too
    result = CliRunner().invoke(app, ["compare", f"PMA={eval_dir(scored[0])}",
                                      f"short={eval_dir(config)}"])
    assert result.exit_code == 0, result.output
    assert "| short † |" in result.output and "| PMA |" in result.output
    assert ("- **† short: memory.self is on but its checkpoint has 0 memory prototypes (saved "
            "before the first refresh): a plain transformer's result, not PMA's**") \
        in result.output
    assert r"short$^\dagger$ &" in result.output and "% † short: memory.self" in result.output
    html = build_report(config).read_text()
    assert "<title>short (demo) / test: captions and metrics</title>" in html
    items = banner_items(html)
    memory = next(i for i, item in enumerate(items) if "0 memory prototypes" in item)
    spice = next(i for i, item in enumerate(items) if item.startswith("not computed: SPICE"))
    assert memory < spice  # warnings (a degenerate-caption one may come first), then gaps
    assert "train: warning: made up by the test" in items[spice + 1:]
    zeros = "/".join(["0"] * config.decoder.n_dec_layers)
    assert f"({zeros} self-attention prototypes per layer in the checkpoint)" in html


def test_untrained_run_is_refused(demo_run, tmp_path) -> None:
    _, sets = demo_run
    config = load_config(DEMO_CONFIG, [*sets, f"data.run_root={json.dumps(str(tmp_path))}"])
    with pytest.raises(RuntimeError, match="`python -m [a-z]+"):
        load_trained_decoder(config, __import__("torch").device("cpu"))
