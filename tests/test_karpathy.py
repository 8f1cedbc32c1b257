"""Karpathy-format parsing: splits incl. restval, paths, ids, and errors that name the entry."""

import json
from pathlib import Path

import pytest

from shared.karpathy import DatasetError, load_karpathy, split_records
from tests.conftest import karpathy_entry, write_karpathy


def test_parse_splits_and_paths(image_dataset: Path) -> None:
    records = load_karpathy(image_dataset / "dataset.json", image_dataset / "images",
                            check_images=True)
    assert len(records) == 40
    assert len(split_records(records, "train")) == 28  # 24 train + 4 restval
    assert len(split_records(records, "val")) == 6 and len(split_records(records, "test")) == 6
    first = records[0]
    assert first.image_id == 1000  # cocoid wins over imgid
    assert first.path == image_dataset / "images" / "a" / "img_000.png"
    assert len(first.captions) == 5 and first.tokens[0][0] == "a"


def test_imgid_used_without_cocoid(tmp_path: Path) -> None:
    entry = karpathy_entry(7, "val", "x.jpg")
    del entry["cocoid"]
    write_karpathy(tmp_path / "d.json", [entry])
    assert load_karpathy(tmp_path / "d.json", tmp_path)[0].image_id == 7


@pytest.mark.parametrize("mutate, message", [
    (lambda e: e.update(split="holdout"), r"images\[1\] \(b.jpg\): field 'split'"),
    (lambda e: e.pop("filename"), r"images\[1\] \(\?\): field 'filename'"),
    (lambda e: e.update(cocoid="12"), "integer 'cocoid' or 'imgid'"),
    (lambda e: e.update(sentences=[]), "'sentences' missing or empty"),
    (lambda e: e["sentences"][2].pop("raw"), r"sentences\[2\] has no string 'raw'"),
    (lambda e: e["sentences"][0].update(tokens="a b"), "list of string 'tokens'"),
])
def test_malformed_entry_is_named(tmp_path: Path, mutate, message: str) -> None:
    bad = karpathy_entry(1, "train", "b.jpg")
    mutate(bad)
    write_karpathy(tmp_path / "d.json", [karpathy_entry(0, "train", "a.jpg"), bad])
    with pytest.raises(DatasetError, match=message):
        load_karpathy(tmp_path / "d.json", tmp_path)


def test_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="dataset file not found"):
        load_karpathy(tmp_path / "none.json", tmp_path)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DatasetError, match="bad.json: not valid JSON"):
        load_karpathy(tmp_path / "bad.json", tmp_path)
    (tmp_path / "noimages.json").write_text(json.dumps({"imgs": []}))
    with pytest.raises(DatasetError, match="list field 'images'"):
        load_karpathy(tmp_path / "noimages.json", tmp_path)


def test_duplicate_ids_and_missing_images(tmp_path: Path) -> None:
    write_karpathy(tmp_path / "d.json", [karpathy_entry(0, "train", "a.jpg"),
                                         karpathy_entry(0, "val", "b.jpg")])
    with pytest.raises(DatasetError, match=r"images\[1\].*already used by images\[0\]"):
        load_karpathy(tmp_path / "d.json", tmp_path)
    write_karpathy(tmp_path / "d.json", [karpathy_entry(0, "train", "a.jpg")])
    with pytest.raises(DatasetError, match=r"images\[0\]: image file not found: .*a.jpg"):
        load_karpathy(tmp_path / "d.json", tmp_path, check_images=True)
