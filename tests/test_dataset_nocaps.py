"""nocaps validation (its COCO-format caption json with `domain` + images/validation/): the
conversion, one-line errors, and a finished run scored on it overall and per domain."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

import shared.datasets.nocaps as nocaps
from evaluate.__main__ import app as evaluate_app
from shared.config import load_config
from shared.datasets.__main__ import app
from shared.datasets.coco_download import DownloadError
from shared.karpathy import load_karpathy
from tests.dataset_fixtures import (SMALL_MODEL, fast_scoring, local_http_server, path_set,
                                    run_pipeline, write_flickr30k, write_nocaps)
from tests.test_dataset_flickr30k import flickr_sets
from train.__main__ import write_run_config


def nocaps_sets(root: Path, *extra: str) -> list[str]:
    subsets = ", ".join(f"{name} = {json.dumps(str(root / 'subsets' / f'{name}.json'))}"
                        for name in ("in_domain", "near_domain", "out_domain"))
    return [path_set("data.karpathy_json", root / "dataset_nocaps.json"),
            path_set("data.image_root", root / "images"),
            path_set("data.captions_json", [root / "nocaps_val_4500_captions.json"]),
            path_set("data.run_root", root / "runs"), f"eval.subsets={{{subsets}}}",
            "eval.spice=false", *extra]


def invoke(sets: list[str]):  # noqa: ANN201
    return CliRunner().invoke(app, ["prepare", "--config", "nocaps",
                                    *[a for s in sets for a in ("--set", s)]])


def test_prepare_writes_val_split_and_domain_subsets(tmp_path) -> None:
    write_nocaps(tmp_path)
    result = invoke(nocaps_sets(tmp_path))
    assert result.exit_code == 0, result.output
    assert "in_domain 3, near_domain 3, out_domain 3" in result.output
    records = load_karpathy(tmp_path / "dataset_nocaps.json", tmp_path / "images",
                            check_images=True)
    assert [r.image_id for r in records] == list(range(9))
    assert {r.split for r in records} == {"val"} and all(len(r.captions) == 10 for r in records)
    assert json.loads((tmp_path / "subsets" / "near_domain.json").read_text()) == [1, 4, 7]


def test_bad_domain_is_one_line_naming_file_and_field(tmp_path) -> None:
    write_nocaps(tmp_path)
    path = tmp_path / "nocaps_val_4500_captions.json"
    data = json.loads(path.read_text())
    data["images"][4]["domain"] = "indomain"
    path.write_text(json.dumps(data))
    result = invoke(nocaps_sets(tmp_path))
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1
    assert "images[4].domain is 'indomain'" in lines[0] and path.name in lines[0]


def test_missing_images_without_network_is_one_line(tmp_path, monkeypatch) -> None:
    write_nocaps(tmp_path)
    for image in (tmp_path / "images" / "validation").iterdir():
        image.unlink()

    def unreachable(urls, timeout=0):  # noqa: ANN001, ANN202
        raise DownloadError("cannot reach s3.amazonaws.com")

    monkeypatch.setattr(nocaps, "check_reachable", unreachable)
    result = invoke(nocaps_sets(tmp_path))
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1
    assert "9 nocaps images missing" in lines[0] and "place the validation images" in lines[0]


def test_subset_names_must_be_domains(tmp_path) -> None:
    write_nocaps(tmp_path)
    sets = [*nocaps_sets(tmp_path),
            f"eval.subsets={{indoor = {json.dumps(str(tmp_path / 'x.json'))}}}"]
    result = invoke(sets)
    assert result.exit_code == 2 and "not a nocaps domain" in result.output


def test_trained_run_scored_on_nocaps_overall_and_per_domain(tmp_path, tiny_checkpoint,
                                                             monkeypatch) -> None:
    fast_scoring(monkeypatch)  # four scorings (overall + 3 domains): no Java start each
    source = tmp_path / "source"
    write_flickr30k(source)  # stands in for COCO: a run trained on another dataset
    sets = flickr_sets(source, *SMALL_MODEL, path_set("clip.pretrained", tiny_checkpoint),
                       'data.name="coco"')
    assert CliRunner().invoke(app, ["prepare", "--config", "flickr30k",
                                    *[a for s in sets for a in ("--set", s)]]).exit_code == 0
    source_config = load_config("flickr30k", sets)
    run_pipeline(source_config, score_split=False)
    write_run_config(source_config)  # what `python -m train` records for Captioner.from_run
    write_nocaps(tmp_path / "nocaps")
    sets = nocaps_sets(tmp_path / "nocaps")
    assert invoke(sets).exit_code == 0
    args = ["transfer", "--config", "nocaps", "--run", str(source / "runs" / "coco"),
            *[a for s in sets for a in ("--set", s)]]
    result = CliRunner().invoke(evaluate_app, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "nocaps" / "runs" / "nocaps" / "eval" / "val" /
                          "metrics.json").read_text())
    assert metrics["images"] == 9 and "CIDEr" in metrics["metrics"]
    assert metrics["model_dataset"] == "coco" and "CHAIRi" in metrics["not_computed"]
    assert {name: entry["images"] for name, entry in metrics["subsets"].items()} == {
        "in_domain": 3, "near_domain": 3, "out_domain": 3}
    assert all("CIDEr" in entry["metrics"] for entry in metrics["subsets"].values())
    assert "out_domain (3 images)" in result.output
    again = CliRunner().invoke(evaluate_app, args)
    assert again.exit_code == 0 and "up to date" in again.output


def test_make_transfer_runs_evaluate_transfer_with_the_source_run() -> None:
    """`make -n transfer DATASET=nocaps FROM=...` (nothing runs): the stage program with the
    dataset's config, the source run and ARGS."""
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run(["make", "--no-print-directory", "-n", "transfer", "PY=python",
                             "DATASET=nocaps", "FROM=runs/coco_b16", "ARGS=--force"], cwd=repo,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].strip() == (
        "python -m evaluate transfer --config configs/nocaps.toml --run runs/coco_b16 --force")


def test_missing_images_are_fetched_whole_or_not_at_all(tmp_path) -> None:
    """Images come from their coco_url (a local server here); one whose connection closes
    early is an error naming its URL, and no partial file stays behind."""
    body = b"\xff\xd8" + bytes(range(256)) * 2  # the bytes are what is checked
    folder = tmp_path / "images"
    with local_http_server(lambda path: (body, len(body) * (2 if "cut" in path else 1))) as root:
        fetched = nocaps.download_images([{"file_name": "a.jpg", "coco_url": f"{root}/a.jpg"}],
                                         folder, 2)
        assert fetched == 1 and (folder / "a.jpg").read_bytes() == body
        with pytest.raises(DownloadError, match=f"download of {root}/cut.jpg failed"):
            nocaps.download_images([{"file_name": "b.jpg", "coco_url": f"{root}/cut.jpg"}],
                                   folder, 2)
    assert sorted(p.name for p in folder.iterdir()) == ["a.jpg"]
