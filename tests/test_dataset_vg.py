"""Visual Genome (+ Krause paragraphs): conversion, leakage guard, CHAIR instances, VG concepts,
and the miniature dataset through prepare -> extract -> one training step -> score."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from extract.concepts import concept_words
from shared.config import Config, ConfigError, load_config
from shared.datasets.__main__ import app
from shared.datasets.visual_genome import (LEAKAGE_NAME, VgFormatError, leakage_guard,
                                           prepare_visual_genome, vg_concept_words)
from shared.karpathy import load_karpathy
from shared.stages import concepts_stage
from tests.dataset_fixtures import (COCO_TRAIN_ONLY, LEAKED, SMALL_MODEL, VG_TEST, VG_TRAIN,
                                    VG_VAL, path_set, run_pipeline, write_visual_genome)


def vg_sets(tmp: Path, *extra: str) -> list[str]:
    data = tmp / "out"
    return [path_set("vg.root", tmp / "vg"), path_set("data.image_root", tmp / "vg"),
            path_set("vg.coco_karpathy_json", tmp / "dataset_coco.json"),
            path_set("data.karpathy_json", data / "dataset_vg.json"),
            path_set("data.captions_json", [data / "captions_vg.json"]),
            path_set("data.instances_json", [data / "instances_vg.json"]),
            path_set("vg.concepts_json", data / "vg_concepts.json"),
            path_set("data.run_root", tmp / "runs"), *extra]


@pytest.fixture(scope="module")
def vg_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("vg_fixture")
    write_visual_genome(root / "vg", root / "dataset_coco.json")
    return root


def prepared(root: Path, *extra: str) -> tuple[Config, list[str]]:
    config = load_config("vg", vg_sets(root, *extra))
    return config, prepare_visual_genome(config)


def splits_of(config: Config) -> dict[int, str]:
    return {r.image_id: r.split for r in load_karpathy(config.data.karpathy_json,
                                                        config.data.image_root,
                                                        check_images=True)}


def test_leakage_guard_drops_planted_coco_val_test_images_from_train(vg_root, tmp_path) -> None:
    (tmp_path / "vg").symlink_to(vg_root / "vg")
    (tmp_path / "dataset_coco.json").symlink_to(vg_root / "dataset_coco.json")
    config, lines = prepared(tmp_path)
    splits = splits_of(config)
    assert not set(LEAKED) & set(splits)  # VG 3 and 7 are COCO val / test images
    assert set(COCO_TRAIN_ONLY) <= {i for i, s in splits.items() if s == "train"}
    assert sorted(splits) == sorted(set(VG_TRAIN + VG_VAL + VG_TEST) - set(LEAKED))
    assert {i for i, s in splits.items() if s == "test"} == set(VG_TEST)
    report = json.loads((Path(config.data.karpathy_json).parent / LEAKAGE_NAME).read_text())
    assert report["excluded_from_train"] == 2 and report["vg_image_ids"] == [3, 7]
    assert report["coco_ids"] == [LEAKED[3], LEAKED[7]]
    assert any("leakage guard: 2 training images" in line for line in lines)
    # regions: a random split; a planted image is never in train whatever it draws
    config, _ = prepared(tmp_path, 'vg.caption_source="regions"', "vg.n_val=3", "vg.n_test=3")
    splits = splits_of(config)
    assert not {i for i, s in splits.items() if s == "train"} & set(LEAKED)
    # the guard off is said, not silent
    config, lines = prepared(tmp_path, 'vg.coco_karpathy_json=""')
    assert set(LEAKED) <= set(splits_of(config)) and "leakage guard off" in lines[0]


def test_leakage_guard_unit() -> None:
    splits = {1: "train", 2: "train", 3: "val", 4: "train"}
    kept, leaked = leakage_guard(splits, {1: 10, 2: None, 3: 30, 4: 40}, {10, 30})
    assert leaked == [1] and kept == {2: "train", 3: "val", 4: "train"}


def test_paragraphs_regions_and_instances(vg_root, tmp_path) -> None:
    (tmp_path / "vg").symlink_to(vg_root / "vg")
    (tmp_path / "dataset_coco.json").symlink_to(vg_root / "dataset_coco.json")
    config, _ = prepared(tmp_path)
    records = {r.image_id: r for r in load_karpathy(config.data.karpathy_json,
                                                     config.data.image_root)}
    assert len(records[1].captions) == 1 and records[1].captions[0].startswith("There is a")
    assert records[1].path.parent.name == "VG_100K" and records[2].path.parent.name == "VG_100K_2"
    assert len(records[1].tokens[0]) > 15  # a paragraph, not a sentence
    coco = json.loads(Path(config.data.captions_json[0]).read_text())
    assert {a["image_id"] for a in coco["annotations"]} == set(records)
    instances = json.loads(Path(config.data.instances_json[0]).read_text())
    names = {c["name"]: c for c in instances["categories"]}
    assert set(names) == {"dog", "cat", "tree", "car"}
    assert names["dog"]["synonyms"] == ["dog", "doggy", "puppy"]
    assert "automobile" in names["car"]["synonyms"]
    dog = names["dog"]["id"]
    # image 3 is leaked; image 6's "doggy" object counts as a dog (alias)
    assert any(a["image_id"] == 6 and a["category_id"] == dog and a["bbox"] == [0, 0, 5, 5]
               for a in instances["annotations"])
    assert all(isinstance(a["image_id"], int) for a in instances["annotations"])
    # regions: the 3 largest distinct phrases ("A blue  cat." repeats "a blue cat")
    config, _ = prepared(tmp_path, 'vg.caption_source="regions"', "vg.regions_per_image=3",
                         "vg.n_val=3", "vg.n_test=3")
    record = next(r for r in load_karpathy(config.data.karpathy_json, config.data.image_root)
                  if r.image_id == 1)
    assert record.captions == ("a blue cat", "blue cat on the left", "a tree in the corner")


def test_vg_concepts_objects_then_attributes(vg_root, tmp_path) -> None:
    (tmp_path / "vg").symlink_to(vg_root / "vg")
    (tmp_path / "dataset_coco.json").symlink_to(vg_root / "dataset_coco.json")
    config, _ = prepared(tmp_path, 'fsgr.concept_source="vg"', "fsgr.concept_min_count=1")
    words = concept_words(config)
    assert set(words[:4]) == {"dog", "cat", "tree", "car"} and "small" in words[4:]
    assert vg_concept_words(config.vg.concepts_json, 2, 1, 1)[2:] == ["small"]
    spec = concepts_stage(config)
    assert Path(config.vg.concepts_json) in spec.inputs and "vg.concept_objects" in \
        spec.config_keys
    with pytest.raises(ConfigError, match="fsgr.concept_list"):
        load_config("vg", vg_sets(tmp_path, 'fsgr.concept_source="vg"',
                                  'fsgr.concept_list="words.txt"'))


def test_malformed_vg_file_is_one_line_naming_file_and_field(vg_root, tmp_path) -> None:
    (tmp_path / "vg").mkdir()
    for path in (vg_root / "vg").iterdir():
        (tmp_path / "vg" / path.name).symlink_to(path)
    (tmp_path / "dataset_coco.json").symlink_to(vg_root / "dataset_coco.json")
    images = json.loads((vg_root / "vg" / "image_data.json").read_text())
    images[4]["image_id"] = "5"  # a string id, as no published file has it
    (tmp_path / "vg" / "image_data.json").unlink()
    (tmp_path / "vg" / "image_data.json").write_text(json.dumps(images))
    with pytest.raises(VgFormatError, match=r"image_data.json: \[4\].image_id is '5', "
                                            r"expected int$"):
        prepared(tmp_path)
    result = CliRunner().invoke(app, ["prepare", "--config", "vg", *[
        a for s in vg_sets(tmp_path) for a in ("--set", s)]])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1


def test_vg_fixture_prepare_extract_train_score(vg_root, tmp_path, tiny_checkpoint) -> None:
    (tmp_path / "vg").symlink_to(vg_root / "vg")
    (tmp_path / "dataset_coco.json").symlink_to(vg_root / "dataset_coco.json")
    sets = vg_sets(tmp_path, *SMALL_MODEL, path_set("clip.pretrained", tiny_checkpoint),
                   'fsgr.concept_source="vg"', "data.max_caption_words=40",
                   "eval.max_length=40")
    result = CliRunner().invoke(app, ["prepare", "--config", "vg",
                                      *[a for s in sets for a in ("--set", s)]])
    assert result.exit_code == 0, result.output
    metrics = run_pipeline(load_config("vg", sets))
    assert metrics["images"] == len(VG_TEST)
    assert "CIDEr" in metrics["metrics"] and "CHAIRi" in metrics["metrics"]  # VG objects
    assert "CHAIRi" not in metrics["not_computed"]


def test_chair_categories_stay_matchable_by_chairs_rules() -> None:
    from collections import Counter

    from evaluate.chair_vocabulary import vocabulary_for
    from shared.datasets.visual_genome import chair_categories

    counts = Counter({"glass": 9, "glasses": 8, "man": 7, "pair of shoes": 6, "bus": 5,
                      "buses": 4, "hot dog": 3})
    aliases = {"glass": "glass", "wine glass": "glass", "man": "man", "men": "man",
               "guy": "man", "sneakers": "pair of shoes"}
    categories = chair_categories(counts, aliases, limit=10)
    names = [c["name"] for c in categories]
    # "glasses" singularises to "glass" (taken); "pair of shoes" has three words; Pattern
    # turns "bus" into "bu", so "buses" -> "bus" collides with nothing but "bus" itself
    assert names == ["glass", "man", "bus", "hot dog"]
    assert categories[1]["synonyms"] == ["man", "men", "guy"]
    vocab = vocabulary_for(categories)  # the original CHAIR rules accept every entry
    assert [m.category for m in vocab.mentions("a guy with a wine glass and a hot dog")] == [
        "man", "glass", "hot dog"]
    assert len(chair_categories(counts, aliases, limit=2)) == 2
