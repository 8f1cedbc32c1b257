"""Annotation files checked before decoding; degenerate captions flagged; skipped metrics read
"not computed"."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evaluate.caption_checks import (caption_stats, check_annotation_files, checkpoint_memory,
                                     degeneracy_warnings, memory_warnings, memoryless)
from evaluate.metrics_table import latex_table, markdown_table
from shared.config import load_config
from tests.conftest import DEMO_CONFIG


def test_empty_and_constant_captions_are_flagged() -> None:
    stats = caption_stats({1: "", 2: " ", 3: "a dog"})
    assert stats["empty_share"] == pytest.approx(2 / 3)
    assert stats["duplicate_share"] == pytest.approx(1 / 3) and stats["distinct"] == 2
    warnings = degeneracy_warnings(stats)
    assert warnings[0] == "warning: 67% of the 3 captions are empty"
    constant = caption_stats({i: "a red ball  on a table" for i in range(10)} | {10: "a box"})
    assert constant["most_common"] == "a red ball on a table"
    assert constant["most_common_share"] == pytest.approx(10 / 11)
    (line,) = degeneracy_warnings(constant)
    assert "91% of the 11 images get the same caption 'a red ball on a table'" in line


def test_varied_captions_give_no_warning() -> None:
    stats = caption_stats({1: "a dog", 2: "a cat", 3: "a dog", 4: "a bird"})
    assert degeneracy_warnings(stats) == []
    assert stats["duplicate_share"] == 0.25 and stats["empty_share"] == 0.0


@pytest.mark.parametrize("key, content, fix", [
    ("captions_json", None, "--set data.captions_json=[]"),
    ("captions_json", "{broken", "--set data.captions_json=[]"),
    ("captions_json", json.dumps({"images": []}), "--set data.captions_json=[]"),
    ("instances_json", None, "--set data.instances_json=[]"),
    ("instances_json", json.dumps({"categories": []}), "--set data.instances_json=[]"),
    ("instances_json", json.dumps({"categories": [], "annotations": []}),
     "--set data.instances_json=[]"),
])
def test_bad_annotation_files_name_the_file_and_the_fix(tmp_path: Path, key: str,
                                                        content: str | None, fix: str) -> None:
    path = tmp_path / f"{key}.json"
    if content is not None:
        path.write_text(content)
    config = load_config(DEMO_CONFIG, ["data.captions_json=[]", "data.instances_json=[]",
                                       f"data.{key}=[{json.dumps(str(path))}]"])
    with pytest.raises(ValueError) as info:
        check_annotation_files(config)
    message = str(info.value)
    assert str(path) in message and fix in message and "\n" not in message


def test_tables_say_not_computed() -> None:
    rows = [("a", {"CIDEr": 1.2}), ("b", {"CIDEr": 1.1, "SPICE": 0.2})]
    markdown = markdown_table(rows, not_computed=[{"SPICE": "offline", "CHAIRs": "no instances"},
                                                  {}])
    assert markdown.splitlines()[0] == "| run | C | S | CHs |"
    assert "| a | 120.0 | not computed | not computed |" in markdown
    assert "| b | 110.0 | 20.0 | not computed |" in markdown
    assert "not computed" in latex_table(rows) and "none" not in markdown


CATEGORIES = [{"id": 1, "name": "dog"}, {"id": 2, "name": "cat"}]


def instances(**change: object) -> dict:
    data = {"images": [{"id": 10, "file_name": "a.jpg"}, {"id": 11}], "categories": CATEGORIES,
            "annotations": [{"id": 1, "image_id": 10, "category_id": 1, "segmentation": [[0]]},
                            {"id": 2, "image_id": 11, "category_id": 2}]}
    return {**data, **change}


@pytest.mark.parametrize("content, field", [
    ("{not json", "not valid json"),
    (json.dumps([1, 2]), "missing 'images'"),
    (json.dumps({k: v for k, v in instances().items() if k != "images"}), "missing 'images'"),
    (json.dumps(instances(categories={"id": 1})), "'categories' is not a list"),
    (json.dumps(instances(images=[{"file_name": "a.jpg"}])), "images[0] has no 'id'"),
    (json.dumps(instances(annotations=[{"id": 1, "image_id": 10}])),
     "annotations[0] has no 'category_id'"),
    (json.dumps(instances(annotations=[{"id": 5, "image_id": 10, "category_id": "1"}])),
     "annotations[0].category_id is '1', not an integer id"),
    (json.dumps(instances(annotations=[{"id": 1, "image_id": 10, "category_id": 1},
                                       {"id": 2, "image_id": 10, "category_id": 9}])),
     "annotations[1].category_id 9 is not the id of any entry of 'categories'"),
    (json.dumps(instances(annotations=[{"id": 1, "image_id": 99, "category_id": 1}])),
     "annotations[0].image_id 99 is not the id of any entry of 'images'"),
])
def test_malformed_instances_name_the_file_and_the_field(tmp_path: Path, content: str,
                                                         field: str) -> None:
    path = tmp_path / "instances.json"
    path.write_text(content)
    config = load_config(DEMO_CONFIG, ["data.captions_json=[]",
                                       f"data.instances_json=[{json.dumps(str(path))}]"])
    with pytest.raises(ValueError) as info:
        check_annotation_files(config)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and field in message, message
    assert "--set data.instances_json=[]" in message and "\n" not in message


def test_checked_instances_are_kept_small_for_chair(tmp_path: Path) -> None:
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    paths[0].write_text(json.dumps(instances()))
    paths[1].write_text(json.dumps(instances(categories=[{"id": 1, "name": "dog"}],
                                             annotations=[])))
    names = json.dumps([str(p) for p in paths])
    config = load_config(DEMO_CONFIG, ["data.captions_json=[]", f"data.instances_json={names}"])
    checked = check_annotation_files(config)
    assert list(checked.instances) == [str(p) for p in paths]
    first = checked.instances[str(paths[0])]
    assert first["annotations"] == [{"id": 1, "image_id": 10, "category_id": 1},
                                    {"id": 2, "image_id": 11, "category_id": 2}]
    assert first["images"] == [{"id": 10}, {"id": 11}]
    assert [c["name"] for c in checked.categories()] == ["dog", "cat", "dog"]


def test_a_pma_checkpoint_without_prototypes_is_stated() -> None:
    import torch

    config = load_config(DEMO_CONFIG, ["memory.n_prototypes=16"])
    empty = {f"layers.{i}.self_attn.memory_keys": torch.zeros(0, 8) for i in range(3)}
    memory = checkpoint_memory(empty, config)
    assert memory["self"] is True and memory["prototypes"] == 0 and memoryless(memory)
    assert memory["prototypes_per_layer"] == [0, 0, 0]
    (line,) = memory_warnings(memory)
    assert "0 memory prototypes" in line and "not PMA's" in line
    full = {f"layers.{i}.self_attn.memory_keys": torch.zeros(16, 8) for i in range(3)}
    assert memory_warnings(checkpoint_memory(full, config)) == []
    short = {**full, "layers.2.self_attn.memory_keys": torch.zeros(5, 8)}
    (line,) = memory_warnings(checkpoint_memory(short, config))
    assert "5 memory prototypes per layer, fewer than memory.n_prototypes=16" in line
    plain = checkpoint_memory({}, load_config(DEMO_CONFIG, ["memory.self=false"]))
    assert not memoryless(plain) and memory_warnings(plain) == []
