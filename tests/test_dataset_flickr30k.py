"""Flickr30k (Karpathy's dataset_flickr30k.json + flickr30k-images/): checks, the COCO caption
json, one-line errors saying what to place where, and the fixture through the pipeline with
CHAIR reported as not computed (never as zero)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import shared.datasets.flickr30k as flickr30k
from shared.config import ConfigError, load_config
from shared.datasets.__main__ import app
from shared.datasets.coco_download import DownloadError
from tests.dataset_fixtures import (SMALL_MODEL, fast_scoring, path_set, run_pipeline,
                                    write_flickr30k)


def flickr_sets(root: Path, *extra: str) -> list[str]:
    return [path_set("data.karpathy_json", root / "dataset_flickr30k.json"),
            path_set("data.image_root", root / "flickr30k-images"),
            path_set("data.captions_json", [root / "annotations" / "captions_flickr30k.json"]),
            path_set("data.run_root", root / "runs"), *extra]


def invoke(sets: list[str]):  # noqa: ANN201
    return CliRunner().invoke(app, ["prepare", "--config", "flickr30k",
                                    *[a for s in sets for a in ("--set", s)]])


def test_shipped_config_layout() -> None:
    config = load_config("flickr30k")
    assert config.data.image_root.endswith("flickr30k-images") and config.data.instances_json == []
    assert config.data.karpathy_json.endswith("dataset_flickr30k.json")


def test_flickr30k_fixture_prepare_extract_train_score(tmp_path, tiny_checkpoint,
                                                       monkeypatch) -> None:
    fast_scoring(monkeypatch)  # Java-free scoring; the VG fixture test scores with Java
    write_flickr30k(tmp_path)
    sets = flickr_sets(tmp_path, *SMALL_MODEL, path_set("clip.pretrained", tiny_checkpoint))
    result = invoke(sets)
    assert result.exit_code == 0, result.output
    assert "16 images (train 10, val 3, test 3), all present" in result.output
    coco = json.loads((tmp_path / "annotations" / "captions_flickr30k.json").read_text())
    assert len(coco["images"]) == 16 and len(coco["annotations"]) == 80
    assert all(isinstance(a["image_id"], int) for a in coco["annotations"])
    metrics = run_pipeline(load_config("flickr30k", sets))
    assert metrics["images"] == 3 and "CIDEr" in metrics["metrics"]
    assert "CHAIRi" not in metrics["metrics"] and "CHAIRs" not in metrics["metrics"]
    assert "data.instances_json is empty" in metrics["not_computed"]["CHAIRi"]


def test_missing_images_is_one_line_saying_where(tmp_path) -> None:
    result = invoke(flickr_sets(tmp_path))
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1
    assert "shannon.cs.illinois.edu" in lines[0] and str(tmp_path / "flickr30k-images") in lines[0]


def test_missing_json_without_network_is_one_line(tmp_path, monkeypatch) -> None:
    write_flickr30k(tmp_path)
    (tmp_path / "dataset_flickr30k.json").unlink()

    def unreachable(urls, timeout=0):  # noqa: ANN001, ANN202
        raise DownloadError("cannot reach cs.stanford.edu")

    monkeypatch.setattr(flickr30k, "check_reachable", unreachable)
    result = invoke(flickr_sets(tmp_path))
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1
    assert "place dataset_flickr30k.json" in lines[0] and "dataset_flickr30k.json" in lines[0]


def test_malformed_json_names_file_and_entry(tmp_path) -> None:
    write_flickr30k(tmp_path)
    data = json.loads((tmp_path / "dataset_flickr30k.json").read_text())
    data["images"][2]["imgid"] = "2"
    (tmp_path / "dataset_flickr30k.json").write_text(json.dumps(data))
    result = invoke(flickr_sets(tmp_path))
    assert result.exit_code == 2
    assert "images[2]" in result.output and "imgid" in result.output


def test_instances_are_refused(tmp_path) -> None:
    config = load_config("flickr30k", flickr_sets(tmp_path, path_set(
        "data.instances_json", [tmp_path / "x.json"])))
    with pytest.raises(ConfigError, match="no instance annotations"):
        flickr30k.prepare_flickr30k(config)
