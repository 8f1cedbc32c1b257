"""Named image-id subsets (`eval.subsets`): subset files, the config key, `evaluate score`'s
per-subset metrics on the small demo run, `evaluate compare`'s subset tables and intervals on
constructed eval folders, and the report's "Subsets" table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocoevalcap.cider.cider import Cider

from evaluate.chair import ImageChair, chair_scores, corpus_chair
from evaluate.chair_vocabulary import ChairVocabulary
from evaluate.coco_metrics import ptb_tokenize
from evaluate.compare import SUBSET_CIDER_NOTE, compare_runs
from evaluate.report import SubsetRow, render_subsets
from evaluate.report_inputs import build_report
from evaluate.score import score
from evaluate.subsets import load_subsets, read_subset_file
from shared.config import Config, ConfigError, load_config, require_paths
from shared.karpathy import load_karpathy, split_records
from shared.manifest import decide
from shared.stages import eval_dir, eval_stage
from tests.conftest import DEMO_CONFIG, EVAL_TRAIN_SETS
from tests.test_compare_statistics import corpus_metrics, entries, write_run
from train.trainer import train

# ----------------------------------------------------------------------------- subset files


@pytest.mark.parametrize("name, text", [
    ("ids.json", "[3, 1, 2]"),
    ("ids.json", '{"image_ids": [3, 1, 2], "source": "nocaps in-domain"}'),
    ("ids.txt", "# in-domain images\n3\n\n1  # a comment\n   2\n"),
    ("ids", "3\n1\n2"),
])
def test_subset_file_formats(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    assert read_subset_file(path) == [3, 1, 2]


@pytest.mark.parametrize("name, text, message", [
    ("s.json", '[1, "2"]', "entry 1 is not an integer image id: '2'"),
    ("s.json", "[1, true]", "entry 1 is not an integer image id: True"),
    ("s.json", "[1.5]", "entry 0 is not an integer image id: 1.5"),
    ("s.json", '{"image_ids": [1, null]}', '"image_ids" entry 1 is not an integer image id: '
                                           "None"),
    ("s.json", '{"ids": [1]}', 'a json object needs an "image_ids" list, has keys [\'ids\']'),
    ("s.json", '"1, 2"', 'expected a json list of image ids or {"image_ids": [...]}, got str'),
    ("s.json", "[1, 2", "not valid json"),
    ("s.json", "[1, 2, 1]", "image id 1 is listed twice"),
    ("s.txt", "1\n2\nthree\n", "line 3 is not an integer image id: 'three'"),
    ("s.txt", "1\n1.0\n", "line 2 is not an integer image id: '1.0'"),
    ("s.txt", "7\n# again\n7\n", "image id 7 is listed twice"),
])
def test_bad_subset_files_are_one_line_naming_file_and_entry(tmp_path: Path, name: str,
                                                            text: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError) as info:
        read_subset_file(path)
    assert str(info.value).startswith(f"{path}: {message}"), str(info.value)
    assert "\n" not in str(info.value)


def test_unreadable_subset_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"absent\.json: cannot read subset file "
                                         r"\(FileNotFoundError"):
        read_subset_file(tmp_path / "absent.json")


def subset_config(tmp_path: Path, files: dict[str, str]):  # noqa: ANN201
    """The demo config with `eval.subsets` naming files written under tmp_path."""
    table = {}
    for name, text in files.items():
        path = tmp_path / f"{name}.json"
        path.write_text(text)
        table[name] = str(path)
    inline = ", ".join(f"{name} = {json.dumps(path)}" for name, path in table.items())
    return load_config(DEMO_CONFIG, [f"eval.subsets={{{inline}}}"]), table


def test_load_subsets_in_config_order(tmp_path: Path) -> None:
    config, _ = subset_config(tmp_path, {"b": "[1, 2]", "a": '{"image_ids": [2, 3]}'})
    subsets = load_subsets(config, range(10))
    assert list(subsets) == ["b", "a"] and subsets == {"b": {1, 2}, "a": {2, 3}}
    assert all(isinstance(ids, frozenset) for ids in subsets.values())


def test_subset_outside_the_split_or_empty_is_refused(tmp_path: Path) -> None:
    config, files = subset_config(tmp_path, {"near": "[1, 2, 50, 60, 70]"})
    with pytest.raises(ValueError) as info:
        load_subsets(config, range(10))
    assert str(info.value) == (f"subset 'near' ({files['near']}): 3 of its 5 image ids are not "
                               "in split 'test' (10 images), e.g. 50")
    config, files = subset_config(tmp_path, {"none": "[]"})
    with pytest.raises(ValueError, match=r"^subset 'none' \(.*none\.json\) lists no image ids$"):
        load_subsets(config, range(10))


# ----------------------------------------------------------------------------- config


def test_config_reads_a_table_from_toml_and_set(tmp_path: Path) -> None:
    assert load_config(DEMO_CONFIG).eval.subsets == {
        "in_prior": "data/demo/subsets/in_prior.json",
        "counter_prior": "data/demo/subsets/counter_prior.json"}
    assert Config().eval.subsets == {}
    toml = tmp_path / "c.toml"
    toml.write_text('[eval]\nsubsets = {in_domain = "a.json", "out-domain_2" = "b.txt"}\n')
    assert load_config(toml).eval.subsets == {"in_domain": "a.json", "out-domain_2": "b.txt"}
    config = load_config(DEMO_CONFIG, ['eval.subsets={a="x.json"}'])
    assert config.eval.subsets == {"a": "x.json"}
    assert config.select(["eval.subsets"]) == {"eval.subsets": {"a": "x.json"}}


@pytest.mark.parametrize("literal, message", [
    ('"x.json"', "--set: config key 'eval.subsets' must be a table of strings "
                 "({name = \"value\", ...}), got 'x.json'"),
    ('["x.json"]', "--set: config key 'eval.subsets' must be a table of strings"),
    ("{a = 1}", "--set: config key 'eval.subsets.a' must be a string, got 1"),
    ('{"a b" = "x.json"}', "config key 'eval.subsets' must be a table of names "
                           "([A-Za-z0-9_-]+) to non-empty paths"),
    ('{"a/b" = "x.json"}', "config key 'eval.subsets' must be a table of names"),
    ('{a = " "}', "config key 'eval.subsets' must be a table of names"),
])
def test_bad_subsets_value_is_one_line(literal: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(DEMO_CONFIG, [f"eval.subsets={literal}"])
    assert str(info.value).startswith(message), str(info.value)
    assert "\n" not in str(info.value)


def test_require_paths_names_the_missing_subset(tmp_path: Path) -> None:
    config, _ = subset_config(tmp_path, {"here": "[1]"})
    require_paths(config, "eval.subsets")
    absent = tmp_path / "absent.json"
    config = load_config(DEMO_CONFIG, [f"eval.subsets={{gone = {json.dumps(str(absent))}}}"])
    with pytest.raises(ConfigError) as info:
        require_paths(config, "eval.subsets")
    assert str(info.value) == (f"config key 'eval.subsets.gone' names no existing file: "
                               f"{absent} (fix the path)")


# ----------------------------------------------------------------------------- CHAIR


def test_corpus_chair_on_all_images_is_chair_scores_and_on_a_subset_counts_its_captions() -> None:
    captions = {1: "a dog and a dog and a cat", 2: "a man riding a horse on a beach",
                3: "a cat on a couch next to a remote", 4: "a plate of food with a fork",
                5: "two people with surfboards", 6: "a dog chasing a frisbee"}
    truth = {1: {"dog"}, 2: {"person"}, 3: {"cat", "couch"}, 4: {"dining table", "fork"},
             5: {"person", "surfboard"}, 6: {"cat"}}
    corpus, images = chair_scores(captions, truth, ChairVocabulary.coco())
    assert corpus_chair(images.values(), "original") == corpus
    subset: list[ImageChair] = [images[i] for i in (1, 2, 6)]
    mentioned = sum(len(r.mentioned) for r in subset)
    hallucinated = sum(len(r.hallucinated) for r in subset)
    assert (mentioned, hallucinated) == (7, 4)  # dog dog cat* | person horse* | dog* frisbee*
    counted = corpus_chair(subset, "original")
    assert counted["CHAIRs"] == 3 / 3 and counted["CHAIRi"] == 4 / 7
    assert counted["images"] == 3 and counted["mentions"] == 7
    assert set(corpus_chair(subset, "extended")) >= {"CHAIRs_extended", "CHAIRi_extended"}


# ----------------------------------------------------------------------------- evaluate score


@pytest.fixture(scope="module")
def subset_run(demo_run, tmp_path_factory):
    """The demo run's XE model (the one tests/test_evaluate.py scores) scored with two
    subsets: the first 10 test images (json) and every third (text, overlapping)."""
    _, sets = demo_run
    config = load_config(DEMO_CONFIG, [*sets, *EVAL_TRAIN_SETS])
    ids = sorted(r.image_id for r in split_records(
        load_karpathy(config.data.karpathy_json, config.data.image_root), "test"))
    folder = tmp_path_factory.mktemp("subsets")
    head, thirds = folder / "head.json", folder / "thirds.txt"
    head.write_text(json.dumps(ids[:10]))
    thirds.write_text("# every third test image\n" + "\n".join(map(str, ids[::3])) + "\n")
    sets = [*sets, *EVAL_TRAIN_SETS]
    config = load_config(DEMO_CONFIG, [*sets, f"eval.subsets={{head = {json.dumps(str(head))}, "
                                              f"thirds = {json.dumps(str(thirds))}}}"])
    train(config, progress=False)  # skipped when tests/test_evaluate.py made the same run
    lines = score(config, progress=False).lines
    return config, lines, {"head": set(ids[:10]), "thirds": set(ids[::3])}, sets


def test_score_writes_each_subset_scored_alone(subset_run) -> None:
    config, lines, expected, _ = subset_run
    folder = eval_dir(config)
    metrics = json.loads((folder / "metrics.json").read_text())
    per_image = json.loads((folder / "per_image.json").read_text())
    assert list(metrics["subsets"]) == ["head", "thirds"]
    for entry in per_image:
        assert entry["subsets"] == [n for n in ("head", "thirds")
                                    if entry["image_id"] in expected[n]]
    for name, ids in expected.items():
        subset = metrics["subsets"][name]
        assert subset["file"] == config.eval.subsets[name] and subset["images"] == len(ids)
        assert subset["not_computed"] == {"SPICE": metrics["not_computed"]["SPICE"]}
        members = [e for e in per_image if name in e["subsets"]]
        assert {e["image_id"] for e in members} == ids
        mentions = sum(len(e["chair"]["mentioned"]) for e in members)
        hallucinated = sum(len(e["chair"]["hallucinated"]) for e in members)
        values = subset["metrics"]
        assert values["CHAIRs"] == sum(bool(e["chair"]["hallucinated"]) for e in members) / len(
            members)
        assert values["CHAIRi"] == (hallucinated / mentions if mentions else 0.0)
        assert subset["chair_counts"]["mentions"] == mentions
        gts = ptb_tokenize({e["image_id"]: e["references"] for e in members})
        res = ptb_tokenize({e["image_id"]: [e["caption"]] for e in members})
        cider, _ = Cider().compute_score(gts, res)
        assert values["CIDEr"] == pytest.approx(cider, rel=1e-12)
        per_image_mean = np.mean([e["scores"]["CIDEr"] for e in members])
        assert values["CIDEr"] != pytest.approx(per_image_mean)  # its own document frequencies
    label = f"{config.train.experiment or config.data.name}/test"
    assert any(line.startswith(f"| {label}:head (10 images) |") for line in
               "\n".join(lines).splitlines())
    assert any(f"| {label}:thirds ({len(expected['thirds'])} images) |" in line
               for line in lines)


def test_changing_a_subset_file_makes_the_scores_stale(subset_run) -> None:
    config, _, expected, sets = subset_run
    spec = eval_stage(config)
    assert decide(spec, config).up_to_date
    path = Path(config.eval.subsets["head"])
    before = path.read_text()
    path.write_text(json.dumps(sorted(expected["head"])[:-1]))
    try:
        decision = decide(spec, config)
        assert not decision.up_to_date and decision.reason.startswith("input changed (")
        assert path.name in decision.reason
    finally:
        path.write_text(before)
    assert decide(spec, config).up_to_date
    without = load_config(DEMO_CONFIG, [*sets, "eval.subsets={}"])
    assert decide(eval_stage(without), without).reason.startswith(
        "config changed (eval.subsets: ")


def test_report_has_the_subsets_table(subset_run) -> None:
    config = subset_run[0]
    html = build_report(config, max_images=2).read_text()
    section = html[html.index('<section class="subsets"'):]
    section = section[:section.index("</section>")]
    metrics = json.loads((eval_dir(config) / "metrics.json").read_text())
    head = metrics["subsets"]["head"]
    assert ">head</th><td class=\"num\">10</td>" in section
    assert f"<td class=\"num\">{100 * head['metrics']['CIDEr']:.1f}</td>" in section
    assert ">CHs</th>" in section and ">CHi</th>" in section


def test_render_subsets_marks_what_was_not_computed() -> None:
    rows = [SubsetRow("in_prior", "a.json", 12, {"CIDEr": 0.5, "CHAIRs": 0.25},
                      {"SPICE": "SPICE skipped: offline"})]
    html = render_subsets(rows)
    assert '<td class="num">50.0</td>' in html and '<td class="num">25.0</td>' in html
    assert 'title="SPICE skipped: offline">n/a</td>' in html
    assert render_subsets([]) == ""


# ----------------------------------------------------------------------------- compare


def add_subsets(eval_folder: Path, subsets: dict[str, list[int]],
                cider: dict[str, float] | None = None) -> None:
    """Name each image's subsets in per_image.json and write metrics.json's "subsets" as
    `evaluate score` does (CHAIR counted by hand; CIDEr given: it is the subset's own)."""
    per_image_path = eval_folder / "per_image.json"
    per_image = json.loads(per_image_path.read_text())
    for entry in per_image:
        entry["subsets"] = [n for n, ids in subsets.items() if entry["image_id"] in ids]
    per_image_path.write_text(json.dumps(per_image))
    metrics_path = eval_folder / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    metrics["subsets"] = {}
    for name, ids in subsets.items():
        values = corpus_metrics([e for e in per_image if e["image_id"] in ids])
        values["CIDEr"] = (cider or {}).get(name, 0.5)
        metrics["subsets"][name] = {"file": f"{name}.json", "images": len(ids),
                                    "metrics": values, "not_computed": {}}
    metrics_path.write_text(json.dumps(metrics))


def two_runs(tmp_path: Path) -> tuple[Path, Path]:
    """A baseline and a variant that caption the 20 images of subset `inside` identically and
    hallucinate more on the 20 outside it."""
    rng = np.random.default_rng(3)
    cider, mentions = rng.uniform(0, 2, 40), np.full(40, 3)
    hallucinated = rng.integers(0, 2, 40)
    worse = hallucinated.copy()
    worse[20:] = 2
    base = write_run(tmp_path / "base", entries(cider, mentions, hallucinated))
    variant = write_run(tmp_path / "variant", entries(cider, mentions, worse))
    return base, variant


def test_compare_subset_table_and_interval_on_its_images_only(tmp_path: Path) -> None:
    base, variant = two_runs(tmp_path)
    add_subsets(base, {"inside": list(range(20))}, {"inside": 0.777})
    add_subsets(variant, {"inside": list(range(20))}, {"inside": 0.555})
    result = compare_runs([f"A={base}", f"B={variant}"])
    main = result.payload["variants"][1]["difference_from_baseline"]
    assert main["CHAIRs"]["estimate"] > 0.2 and main["CHAIRs"]["excludes_zero"]
    inside = result.payload["subsets"]["inside"]
    difference = inside["variants"][1]["difference_from_baseline"]
    assert set(difference) == {"CHAIRs", "CHAIRi"}  # no CIDEr on a subset
    for name in ("CHAIRs", "CHAIRi"):
        assert difference[name]["estimate"] == 0.0
        assert difference[name]["low"] == difference[name]["high"] == 0.0
    assert inside["bootstrap"]["images"] == 20
    assert inside["variants"][0]["mean"]["CIDEr"] == 0.777
    markdown = result.markdown
    assert "**Subset inside (20 images): each run's metrics on the subset alone" in markdown
    table = markdown[markdown.index("**Subset inside"):]
    assert "| A | " in table and "**77.7**" in table and "| 55.5 |" in table
    assert "Difference from A on subset inside, paired bootstrap over its 20 test images" in table
    assert "| B | +0.0 [+0.0, +0.0] | +0.0 [+0.0, +0.0] |" in table
    assert f"- {SUBSET_CIDER_NOTE}" in table
    assert markdown.index("**Subset inside") < markdown.index("Provenance")
    assert "% Subset inside (20 images)" in result.latex
    assert r"$+0.0$ [$+0.0$, $+0.0$]" in result.latex


def test_compare_refuses_subset_intervals_on_different_memberships(tmp_path: Path) -> None:
    base, variant = two_runs(tmp_path)
    add_subsets(base, {"inside": list(range(20)), "only_a": [1, 2]})
    add_subsets(variant, {"inside": list(range(1, 21))})
    result = compare_runs([f"A={base}", f"B={variant}"])
    inside = result.payload["subsets"]["inside"]
    assert inside["variants"][1]["difference_from_baseline"] is None
    assert ("no interval for B on subset inside: its inside images are not A's (20 vs 20, 19 "
            "in common)") in inside["notes"]
    assert "- subset only_a: not scored in every compared run, so not compared" \
        in result.markdown
    assert list(result.payload["subsets"]) == ["inside"]


def test_compare_subsets_over_seeds_and_without_membership(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    cider, mentions = rng.uniform(0, 2, 10), np.full(10, 2)
    runs = {}
    for name, seed, cider_inside in (("a", 0, 0.4), ("b0", 0, 0.5), ("b1", 1, 0.7)):
        runs[name] = write_run(tmp_path / name, entries(cider, mentions,
                                                        rng.integers(0, 2, 10)), seed=seed)
        add_subsets(runs[name], {"half": list(range(5))}, {"half": cider_inside})
    result = compare_runs([f"A={runs['a']}", f"B={runs['b0']},{runs['b1']}"])
    half = result.payload["subsets"]["half"]
    assert half["variants"][1]["mean"]["CIDEr"] == pytest.approx(0.6)
    assert half["variants"][1]["std"]["CIDEr"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert "60.0 ± 14.1" in result.markdown
    assert half["variants"][1]["difference_from_baseline"] is not None
    per_image = runs["b1"] / "per_image.json"
    stripped = [{k: v for k, v in e.items() if k != "subsets"}
                for e in json.loads(per_image.read_text())]
    per_image.write_text(json.dumps(stripped))
    result = compare_runs([f"A={runs['a']}", f"B={runs['b0']},{runs['b1']}"])
    assert (f"no interval for B on subset half: {per_image} records no membership of subset "
            "half") in result.payload["subsets"]["half"]["notes"]


def test_compare_without_subsets_has_no_subset_output(tmp_path: Path) -> None:
    base, variant = two_runs(tmp_path)
    result = compare_runs([f"A={base}", f"B={variant}"])
    assert "subsets" not in result.payload
    assert "**Subset" not in result.markdown and "% Subset" not in result.latex


def test_compare_refuses_a_subset_chair_that_per_image_does_not_reproduce(tmp_path: Path) -> None:
    base, variant = two_runs(tmp_path)
    add_subsets(base, {"inside": list(range(20))})
    add_subsets(variant, {"inside": list(range(20))})
    metrics = json.loads((variant / "metrics.json").read_text())
    metrics["subsets"]["inside"]["metrics"]["CHAIRi"] += 0.01
    (variant / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(ValueError) as info:
        compare_runs([f"A={base}", f"B={variant}"])
    assert str(info.value).startswith(f"{variant / 'per_image.json'} does not reproduce "
                                      "metrics.json's CHAIRi on subset inside (")
