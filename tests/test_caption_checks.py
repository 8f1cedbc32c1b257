"""Annotation files checked before decoding; degenerate captions flagged; skipped metrics read
"not computed"."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evaluate.caption_checks import caption_stats, check_annotation_files, degeneracy_warnings
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
