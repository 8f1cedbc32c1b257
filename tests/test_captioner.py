"""`Captioner` (evaluate/captioner.py) on the small demo run: from the run folder and any current
directory, the captions `evaluate caption` writes, for files and PIL images; object mentions;
codebook maps equal to the FSGR cache's; clear errors."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from evaluate.__main__ import app as evaluate_app
from evaluate.captioner import Caption, Captioner
from extract.concepts import ConceptCodebook
from shared.config import load_config
from shared.datasets.demo_captions import SYNONYMS
from shared.feature_store import FeatureStore
from shared.images import load_rgb
from shared.karpathy import load_karpathy, split_records
from shared.stages import concepts_stage, experiment_dir, fsgr_store_path
from tests.conftest import DEMO_CONFIG, SCORED_TRAIN_SETS
from shared.stages import RUN_CONFIG_FILE
from train.__main__ import app as train_app


def set_args(sets: list[str]) -> list[str]:
    return [arg for s in sets for arg in ("--set", s)]


@pytest.fixture(scope="module")
def run(demo_run):
    """The decoder of the `scored_run` fixture trained (or found up to date) by
    `python -m train`, which records its run_config.json; not scored."""
    _, sets = demo_run
    sets = [*sets, *SCORED_TRAIN_SETS]
    result = CliRunner().invoke(train_app, ["--config", str(DEMO_CONFIG), *set_args(sets)])
    assert result.exit_code == 0, result.output
    return load_config(DEMO_CONFIG, sets), sets


@pytest.fixture(scope="module")
def folder(run, tmp_path_factory) -> Path:
    """Three test images of the dataset and a corrupt file."""
    config, _ = run
    folder = tmp_path_factory.mktemp("mine")
    records = split_records(load_karpathy(config.data.karpathy_json, config.data.image_root),
                            "test")[:3]
    for record in records:
        shutil.copy(record.path, folder / f"{record.image_id}{record.path.suffix}")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return folder


@pytest.fixture(scope="module")
def written(run, folder, tmp_path_factory) -> dict[str, str]:
    """file -> caption, as `evaluate caption FOLDER --output` writes them."""
    _, sets = run
    out = tmp_path_factory.mktemp("cli") / "captions.json"
    result = CliRunner().invoke(evaluate_app, ["caption", str(folder), "--config",
                                               str(DEMO_CONFIG), *set_args(sets),
                                               "--output", str(out)])
    assert result.exit_code == 3, result.output  # the corrupt file
    return {e["file"]: e["caption"] for e in json.loads(out.read_text())}


@pytest.fixture(scope="module")
def captioner(run, tmp_path_factory) -> Captioner:
    """`Captioner.from_run` of the experiment folder, built in an unrelated directory."""
    config, _ = run
    with pytest.MonkeyPatch.context() as patch:
        elsewhere = tmp_path_factory.mktemp("elsewhere")
        patch.chdir(elsewhere)
        captioner = Captioner.from_run(experiment_dir(config))
        assert Path.cwd() == elsewhere
    return captioner


def test_train_records_the_run_config(run) -> None:
    config, sets = run
    path = experiment_dir(config) / RUN_CONFIG_FILE
    record = json.loads(path.read_text())
    assert record == {"config": config.to_dict(), "working_dir": str(Path.cwd().resolve())}
    refused = CliRunner().invoke(train_app, ["--config", str(DEMO_CONFIG), *set_args(sets),
                                             "--set", "fsgr.top_k=5"])
    assert refused.exit_code == 2 and "extract.fit" in refused.output
    assert json.loads(path.read_text()) == record  # a refused run leaves the record alone


def test_same_captions_as_evaluate_caption(captioner, folder, written, tmp_path,
                                           monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    results = captioner.caption(folder, batch_size=2)
    assert [r.source for r in results] == sorted(folder.iterdir())
    assert len(written) == 3
    assert {str(r.source): r.text for r in results if r.error is None} == written
    broken = next(r for r in results if r.source.name == "broken.jpg")
    assert broken.text is None and "cannot decode" in broken.error
    assert all(r.mentions is None and r.concepts is None for r in results)
    single = captioner.caption(str(folder / "broken.jpg"))
    assert len(single) == 1 and single[0].error == broken.error


def test_from_the_train_folder_with_overrides(run, folder, written) -> None:
    config, _ = run
    files = sorted(str(p) for p in folder.iterdir() if p.name != "broken.jpg")[:1]
    other = Captioner.from_run(experiment_dir(config) / "train", overrides=["eval.beam_size=1"])
    assert other.config.eval.beam_size == 1 and other.config.decoder == config.decoder
    assert len(other.caption(files)) == 1


def test_relative_paths_start_at_the_recorded_working_dir(run, captioner, folder,
                                                          tmp_path, monkeypatch) -> None:
    """A record with relative paths (as `make train` writes), given as the json itself: read
    from any directory."""
    config, _ = run
    record = json.loads((experiment_dir(config) / RUN_CONFIG_FILE).read_text())
    base = Path(config.data.run_root).parent  # holds runs/ and the demo data
    data = record["config"]["data"]
    data["run_root"] = os.path.relpath(config.data.run_root, base)
    data["instances_json"] = [os.path.relpath(p, base) for p in data["instances_json"]]
    record["working_dir"] = str(base)
    copy = tmp_path / "copy" / RUN_CONFIG_FILE  # not in its experiment folder: run_root counts
    copy.parent.mkdir()
    copy.write_text(json.dumps(record))
    monkeypatch.chdir(tmp_path)
    relative = Captioner.from_run(copy)
    assert Path.cwd() == tmp_path
    image = sorted(folder.glob("*.jpg"))[0]
    got, want = relative.caption(image, mentions=True)[0], captioner.caption(image)[0]
    assert got.text == want.text and got.mentions is not None


def test_pil_images_give_their_files_captions(captioner, folder, written, tmp_path) -> None:
    files = sorted(p for p in folder.iterdir() if p.name != "broken.jpg")
    opened = [Image.open(p) for p in files]  # not decoded yet: read like the file
    decoded = [load_rgb(p) for p in files]  # in memory: captioned as they are
    pngs = []
    for image, path in zip(decoded, files):
        pngs.append(tmp_path / f"{path.stem}.png")
        image.save(pngs[-1])
    results = captioner.caption([*opened, *decoded, *pngs])
    assert [r.source for r in results[:6]] == list(range(6))
    assert [r.text for r in results[:3]] == [written[str(p)] for p in files]
    assert [r.text for r in results[3:6]] == [r.text for r in results[6:]]
    assert all(isinstance(r, Caption) and r.error is None for r in results)


def test_mentions_are_the_categories_named(captioner, folder) -> None:
    results = [r for r in captioner.caption(folder, mentions=True) if r.error is None]
    forms = {form: category for category, words in SYNONYMS.items()
             for word in words for form in (word, word + "s", word + "es")}
    for result in results:
        named = [forms[t] for t in result.text.split() if t in forms]
        assert [m.category for m in result.mentions] == named, result.text
        for m in result.mentions:
            assert result.text[m.start:m.end] == m.word and forms[m.word] == m.category
    assert any(r.mentions for r in results)


def test_codebook_map_is_the_fsgr_cache(run, captioner, folder) -> None:
    """For dataset images, each patch's concept is the one `extract encode` cached."""
    config, _ = run
    assert config.decoder.visual_input == "fsgr"
    words = ConceptCodebook.load(concepts_stage(config).output).words
    results = [r for r in captioner.caption(folder, codebook=True) if r.error is None]
    with FeatureStore.open(fsgr_store_path(config)) as store:
        rows, cols = tuple(store.attrs["grid"])
        row_of = {int(i): r for r, i in enumerate(store.read("image_ids"))}
        cached = store.read_rows("codebook_index", [row_of[int(r.source.stem)] for r in results])
    for result, index in zip(results, cached):
        grid = result.concepts
        assert len(grid) == rows and all(len(line) == cols for line in grid)
        assert grid == np.array(words)[index.reshape(rows, cols)].tolist()


def test_missing_or_broken_run_config(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"run_config\.json not found.*from_config"):
        Captioner.from_run(tmp_path)
    (tmp_path / RUN_CONFIG_FILE).write_text("{not json")
    with pytest.raises(RuntimeError, match=r"run_config\.json: not valid JSON"):
        Captioner.from_run(tmp_path / "train")
