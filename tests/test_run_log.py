"""`shared.run_log`: the JSON-lines logs as before, TensorBoard scalars beside them with
`train.tensorboard = true`, and one line when TensorBoard is not installed."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shared.run_log import MissingTensorBoard, RunLog, require_tensorboard, scalar_fields
from shared.stages import train_dir
from tests.conftest import DEMO_CONFIG

HINT = "train.tensorboard = true needs TensorBoard: pip install 'fsgr-pma[tensorboard]'"
RECORDS = [
    {"epoch": 1, "step": 48, "train_loss": 3.25, "lr": 1e-4, "prototype_refreshes": 2,
     "val_loss": 2.5, "val_cider": 0.125, "warnings": ["warning: something"]},
    {"phase": "scst", "epoch": 0, "step": 0, "baseline": "mean", "val_cider": math.nan},
    {"epoch": 2, "step": 96, "train_loss": 2.0, "flag": True, "per_layer": [3, 4]},
]


def event_reader():
    """TensorBoard's event reader, or a skip: the `tensorboard` extra is not installed."""
    return pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def scalars(events: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series of a TensorBoard run folder: tag -> [(step, value)]."""
    acc = event_reader().EventAccumulator(str(events))
    acc.Reload()
    return {tag: [(s.step, s.value) for s in acc.Scalars(tag)]
            for tag in acc.Tags()["scalars"]}


def test_jsonl_lines_are_what_the_callers_wrote_by_hand(tmp_path) -> None:
    event_reader()
    by_hand, logged = tmp_path / "hand.jsonl", tmp_path / "run" / "log.jsonl"
    logged.parent.mkdir()
    for record in RECORDS:
        with by_hand.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
    for tensorboard in (False, True):
        log = RunLog(logged, "xe", tensorboard=tensorboard)
        log.start_over()
        for record in RECORDS:
            log.write(record)
        log.close()
        assert logged.read_bytes() == by_hand.read_bytes()
    RunLog(tmp_path / "other.jsonl", "xe", tensorboard=True, main=False).write(RECORDS[0])
    assert not list(tmp_path.glob("other.jsonl")) + list(tmp_path.glob("tensorboard"))


def test_numeric_fields_become_scalars_at_the_records_step(tmp_path) -> None:
    log = RunLog(tmp_path / "log.jsonl", "xe", tensorboard=True)
    log.start_over()
    log.write(RECORDS[0])
    log.refresh({"step": 20, "prototypes": [16, 16], "bank_keys": [400, 380], "knn": [4, 4],
                 "warnings": [], "seconds": 0.5})
    log.write(RECORDS[2])
    # no close: each record is flushed, so a crash loses nothing
    series = scalars(tmp_path / "tensorboard" / "xe")
    assert series["xe/train_loss"] == [(48, 3.25), (96, 2.0)]
    assert series["xe/val_cider"] == [(48, 0.125)] and series["xe/epoch"] == [(48, 1), (96, 2)]
    assert series["xe/per_layer/1"] == [(96, 4.0)]
    assert series["refresh/prototypes/0"] == [(20, 16.0)]
    assert series["refresh/bank_keys/1"] == [(20, 380.0)]
    assert not {"xe/step", "xe/warnings", "xe/flag", "refresh/warnings"} & set(series)
    log.close()
    assert scalar_fields(RECORDS[1]) == [("epoch", 0.0), ("val_cider", pytest.approx(math.nan,
                                                                                   nan_ok=True))]


def test_a_resumed_run_replaces_the_steps_after_its_resume_point(tmp_path) -> None:
    """The purge at the first step after the resume point hides what the interrupted run
    logged past it; SCST's log and events live in their own folder and starting over removes
    them alone."""
    path, scst_path = tmp_path / "log.jsonl", tmp_path / "scst" / "log.jsonl"
    first = RunLog(path, "xe", tensorboard=True)
    first.start_over()
    for epoch in (1, 2, 3):
        first.write({"epoch": epoch, "step": 10 * epoch, "train_loss": float(epoch)})
    first.refresh({"step": 25, "prototypes": [8]})
    first.close()
    scst_path.parent.mkdir()
    scst = RunLog(scst_path, "scst", tensorboard=True)
    scst.start_over()
    scst.write({"phase": "scst", "epoch": 0, "step": 0, "val_cider": 1.0})
    scst.close()
    time.sleep(1.1)  # event files sort by their whole-second timestamp
    resumed = RunLog(path, "xe", tensorboard=True)
    resumed.resume(lambda r: r["epoch"] > 1, step=10)
    resumed.write({"epoch": 2, "step": 20, "train_loss": 0.5})
    resumed.close()
    assert [json.loads(line)["epoch"] for line in path.read_text().splitlines()] == [1, 2]
    series = scalars(tmp_path / "tensorboard" / "xe")
    assert series["xe/train_loss"] == [(10, 1.0), (20, 0.5)]
    assert series["refresh/prototypes/0"] == []
    scst_events = tmp_path / "scst" / "tensorboard" / "scst"
    assert scalars(scst_events)["scst/val_cider"] == [(0, 1.0)]
    RunLog(scst_path, "scst", tensorboard=True).start_over()
    assert not scst_path.exists() and not scst_events.exists()
    assert (tmp_path / "tensorboard" / "xe").is_dir()
    RunLog(path, "xe").start_over()  # XE from scratch: its log and events go
    assert not path.exists() and not (tmp_path / "tensorboard").exists()


def test_missing_tensorboard_is_one_line_naming_the_extra(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    assert require_tensorboard(False) is None
    RunLog(tmp_path / "log.jsonl", "xe").write({"epoch": 1})  # off: TensorBoard not needed
    with pytest.raises(MissingTensorBoard) as err:
        RunLog(tmp_path / "log.jsonl", "xe", tensorboard=True)
    assert str(err.value) == HINT
    from extract.__main__ import app as extract_app
    from train.__main__ import app as train_app
    sets = ["--set", f"data.run_root={json.dumps(str(tmp_path / 'runs'))}",
            "--set", "train.tensorboard=true"]
    for app, command in ((train_app, []), (extract_app, ["fit"])):
        result = CliRunner().invoke(app, [*command, "--config", str(DEMO_CONFIG), *sets])
        assert result.exit_code == 2, result.output
        assert result.output == f"error: {HINT}\n"


def test_xe_training_writes_its_scalars(demo_run) -> None:
    """`python -m train --xe-only --set train.tensorboard=true`: one short epoch with PMA
    memory; the event file holds every epoch record's numbers and the refreshes."""
    event_reader()
    from train.__main__ import app

    _, sets = demo_run
    options = [*sets, "train.tensorboard=true", 'train.experiment="tensorboard"',
               "train.max_epochs=1", "train.batch_size=25", "train.warmup_steps=10",
               "memory.warmup_iterations=20", "memory.refresh_stride=15",
               "memory.bank_iterations=20", "memory.bank_cap=2000", "memory.n_prototypes=16",
               "memory.knn=4"]
    args = ["--config", str(DEMO_CONFIG), "--xe-only", "--force"]
    for option in options:
        args += ["--set", option]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    from shared.config import load_config
    folder = train_dir(load_config(DEMO_CONFIG, options))
    (record,) = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    assert list((folder / "tensorboard" / "xe").glob("events.out.tfevents.*"))
    series = scalars(folder / "tensorboard" / "xe")
    step = record["step"]
    for name in ("train_loss", "val_loss", "val_cider", "lr", "prototype_refreshes"):
        assert series[f"xe/{name}"] == [(step, pytest.approx(record[name], rel=1e-6))]
    refreshes = series["refresh/prototypes/0"]
    assert [s for s, _ in refreshes] == [20, 35] and record["prototype_refreshes"] == 2
