"""Checkpoint files that cannot be read, disk full while saving, and resume points kept as
`last.prev.pt` (`shared.checkpoint_files`), down to the loaders of every stage and one CLI."""

from __future__ import annotations

import errno
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from evaluate.__main__ import app as evaluate_app
from evaluate.checkpoint import load_trained_decoder
from shared.models.factory import load_fsgr
from shared.checkpoint_files import (DiskFull, Rotation, UnreadableCheckpoint, keep_previous,
                                     load_checkpoint, pick_resume_point, previous_path,
                                     save_atomic)
from shared.config import load_config
from shared.stages import fit_stage, train_dir
from shared.training_schedule import restore_state, resume_state
from tests.conftest import DEMO_CONFIG
from train.scst import train_scst
from train.trainer import train

FIX = "re-run `python -m train --force`"


def small_resume_point(identity: str = "run", epoch: int = 0) -> dict:
    """A real `last.pt` payload: a small model after two Adam steps, its optimizer and RNG."""
    torch.manual_seed(epoch)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 8))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(2):
        loss = model(torch.randn(4, 16)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return {**resume_state(identity, model, optimizer, torch.device("cpu")), "epoch": epoch,
            "step": 2 * (epoch + 1)}


class NotAllowed:
    """A class a weights-only load refuses."""


def broken_files(folder: Path) -> dict[str, Path]:
    """Each kind of file a checkpoint loader must turn into one line."""
    good = folder / "good.pt"
    save_atomic(small_resume_point(), good)
    data = good.read_bytes()
    files = {"zero-byte": b"", "truncated": data[:len(data) // 2],
             "text": b"epoch 3, loss 2.1\nnot a checkpoint\n"}
    paths = {}
    for name, content in files.items():
        paths[name] = folder / f"{name}.pt"
        paths[name].write_bytes(content)
    paths["foreign class"] = folder / "foreign.pt"
    torch.save({"model": {}, "meta": NotAllowed()}, paths["foreign class"])
    paths["plain pickle"] = folder / "plain.pt"
    paths["plain pickle"].write_bytes(pickle.dumps({"model": {}, "meta": {}}))
    paths["missing keys"] = folder / "keys.pt"
    torch.save({"model": {"w": torch.zeros(2)}}, paths["missing keys"])
    paths["not a dict"] = folder / "list.pt"
    torch.save([torch.zeros(2)], paths["not a dict"])
    return paths


def assert_one_line_about(message: str, path: Path) -> None:
    assert "\n" not in message.strip(), message
    assert str(path) in message, message
    assert "weights_only" not in message and "Traceback" not in message, message


# -- the loader ------------------------------------------------------------------------------

def test_every_unreadable_file_is_one_line_naming_it(tmp_path: Path) -> None:
    for kind, path in broken_files(tmp_path).items():
        with pytest.raises(UnreadableCheckpoint) as caught:
            load_checkpoint(path, "decoder checkpoint", FIX, keys=("model", "meta"))
        message = str(caught.value)
        assert_one_line_about(message, path)
        assert message.endswith(FIX), (kind, message)
        print(f"{kind}: {message}")
    assert "empty file" in str(pytest.raises(UnreadableCheckpoint, load_checkpoint,
                                             tmp_path / "zero-byte.pt", "x", FIX).value)
    assert "no 'meta' entry" in str(pytest.raises(
        UnreadableCheckpoint, load_checkpoint, tmp_path / "keys.pt", "x", FIX,
        keys=("model", "meta")).value)
    with pytest.raises(FileNotFoundError, match=r"decoder checkpoint not found: .*nowhere\.pt"):
        load_checkpoint(tmp_path / "nowhere.pt", "decoder checkpoint", FIX)
    good = load_checkpoint(tmp_path / "good.pt", "resume point", FIX, keys=("model", "epoch"))
    assert good["identity"] == "run"


# -- saving ----------------------------------------------------------------------------------

class Cramped:
    """A file that takes `room` bytes, then fails as a full disk (or quota) does."""

    def __init__(self, fh, room: int, code: int) -> None:
        self.fh, self.room, self.code = fh, room, code

    def write(self, data) -> int:
        if self.room < len(data):
            self.fh.write(bytes(data)[:self.room])
            self.room = 0
            raise OSError(self.code, "simulated: " + errno.errorcode[self.code])
        self.room -= len(data)
        return self.fh.write(data)

    def flush(self) -> None:
        self.fh.flush()


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_disk_full_while_saving(tmp_path: Path, monkeypatch, code: int) -> None:
    path = tmp_path / "last.pt"
    save_atomic(small_resume_point(epoch=0), path)
    before = path.read_bytes()
    real_save = torch.save
    written = {}

    def save_until_full(payload, fh):
        written["tmp"] = Path(fh.name)
        real_save(payload, Cramped(fh, 3000, code))

    monkeypatch.setattr(torch, "save", save_until_full)
    with pytest.raises(DiskFull) as caught:
        save_atomic(small_resume_point(epoch=1), path)
    monkeypatch.undo()
    err = caught.value
    assert isinstance(err, OSError) and err.errno == code
    message = str(err)
    assert_one_line_about(message, path)
    assert "needs about" in message and "free there" in message and " bytes)" in message
    assert ("no space left" if code == errno.ENOSPC else "quota exceeded") in message
    assert written["tmp"].name == "last.pt.tmp" and not written["tmp"].exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    assert path.read_bytes() == before  # the previous checkpoint is untouched


def test_no_tmp_left_after_an_interrupted_save(tmp_path: Path, monkeypatch) -> None:
    def interrupted(payload, fh):
        fh.write(b"PK partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_atomic({"a": torch.zeros(3)}, tmp_path / "best.pt")
    assert list(tmp_path.iterdir()) == []


# -- resume points ---------------------------------------------------------------------------

def write_epochs(path: Path, epochs: int, identity: str = "run") -> None:
    """Save epochs 0..epochs-1 of a run as a loop does (rotate, then write)."""
    rotation = Rotation(path, None)
    for epoch in range(epochs):
        rotation.before_save()
        save_atomic(small_resume_point(identity, epoch), path)


def epoch_of(path: Path) -> int:
    return load_checkpoint(path, "resume point", "")["epoch"]


def test_rotation_keeps_the_previous_point(tmp_path: Path) -> None:
    last = tmp_path / "last.pt"
    prev = previous_path(last)
    assert prev.name == "last.prev.pt"
    write_epochs(last, 3)
    assert (epoch_of(last), epoch_of(prev)) == (2, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.prev.pt", "last.pt"]
    assert pick_resume_point(last, "run") == (last, [])
    # a broken last.pt never replaces a good previous point
    last.write_bytes(last.read_bytes()[:100])
    keep_previous(last)
    assert epoch_of(prev) == 1
    # a run starting over drops another run's previous point at its first save
    write_epochs(last, 1, identity="other")
    assert not prev.exists() and epoch_of(last) == 0


@pytest.mark.parametrize("damage", ["truncated", "zero-byte", "not a checkpoint", "missing"])
def test_a_broken_last_pt_resumes_from_the_previous_one(tmp_path: Path, damage: str) -> None:
    last = tmp_path / "last.pt"
    write_epochs(last, 2)
    data = last.read_bytes()
    if damage == "missing":  # killed between the two renames where links are refused
        last.unlink()
    else:
        last.write_bytes({"truncated": data[:len(data) // 2], "zero-byte": b"",
                          "not a checkpoint": b"hello\n"}[damage])
    source, notes = pick_resume_point(last, "run")
    assert source == previous_path(last) and len(notes) == 1
    assert notes[0].startswith(f"warning: {last} is ") and "resuming from last.prev.pt" in notes[0]
    assert_one_line_about(notes[0], last)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 8))
    ckpt = restore_state(source, "run", model, torch.optim.Adam(model.parameters()),
                         torch.device("cpu"))
    assert ckpt is not None and ckpt["epoch"] == 0
    # the resumed run's first save leaves last.prev.pt (its start) alone
    rotation = Rotation(last, source)
    rotation.before_save()
    save_atomic(small_resume_point("run", 1), last)
    assert (epoch_of(last), epoch_of(previous_path(last))) == (1, 0)


def test_neither_point_usable_starts_over_with_one_line(tmp_path: Path) -> None:
    last = tmp_path / "last.pt"
    write_epochs(last, 2)
    last.write_bytes(b"")
    previous_path(last).write_bytes(b"\x00" * 10)
    source, notes = pick_resume_point(last, "run")
    assert source is None and len(notes) == 1
    assert notes[0].endswith("; starting over") and "last.prev.pt is unusable" in notes[0]
    assert_one_line_about(notes[0], last)
    # another config's last.pt: start over quietly, never from an older last.prev.pt
    write_epochs(last, 2, identity="other")
    assert pick_resume_point(last, "run") == (None, [])
    assert pick_resume_point(tmp_path / "fresh" / "last.pt", "run") == (None, [])


def test_check_failure_falls_back(tmp_path: Path) -> None:
    """The loop's own check (memory banks) decides too: a last.pt whose banks file is broken
    resumes from the previous point."""
    last = tmp_path / "last.pt"
    write_epochs(last, 2)

    def check(path: Path, ckpt: dict) -> None:
        if path == last:
            raise UnreadableCheckpoint(tmp_path / "last.banks.x.pt", "empty file (0 bytes)")

    source, notes = pick_resume_point(last, "run", check)
    assert source == previous_path(last)
    assert "last.banks.x.pt: empty file" in notes[0]


# -- the stages' loaders ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained_run(demo_run):
    """One short cross-entropy epoch in its own experiment folder (free to damage)."""
    _, sets = demo_run
    sets = [*sets, 'train.experiment="checkpoint_safety"', "train.max_epochs=1",
            "train.batch_size=25", "train.warmup_steps=10", "memory.self=false",
            "eval.batch_size=8", "scst.enabled=false"]
    config = load_config(DEMO_CONFIG, sets)
    train(config, progress=False)
    return config, sets


def test_evaluate_score_on_a_corrupt_best_pt(trained_run) -> None:
    config, sets = trained_run
    best = train_dir(config) / "best.pt"
    saved = best.read_bytes()
    try:
        best.write_bytes(saved[:len(saved) // 2])
        args = ["score", "--config", str(DEMO_CONFIG), "--quiet"]
        for value in sets:
            args += ["--set", value]
        result = CliRunner().invoke(evaluate_app, args)
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {best}: not a readable decoder "
                                                       f"checkpoint: truncated"), lines
        assert lines[0].endswith("re-run `python -m train --force`")
        assert "weights_only" not in result.output
        for damaged in (b"", b"not a checkpoint\n"):
            best.write_bytes(damaged)
            with pytest.raises(UnreadableCheckpoint) as caught:
                load_trained_decoder(config, torch.device("cpu"))
            assert_one_line_about(str(caught.value), best)
    finally:
        best.write_bytes(saved)
    assert load_trained_decoder(config, torch.device("cpu")).epoch == 0


def test_scst_init_checkpoint_that_is_not_one(trained_run, tmp_path: Path) -> None:
    _, sets = trained_run
    for kind, path in broken_files(tmp_path).items():
        if kind == "zero-byte":
            continue  # the same path as truncated in the loader; keep the test short
        config = load_config(DEMO_CONFIG, [*sets, "scst.enabled=true", "scst.max_epochs=1",
                                           f"scst.init_checkpoint={json.dumps(str(path))}"])
        with pytest.raises(UnreadableCheckpoint) as caught:
            train_scst(config, force=True, progress=False)
        message = str(caught.value)
        assert_one_line_about(message, path)
        assert message.endswith("point scst.init_checkpoint at a best.pt written by "
                                "`python -m train`"), (kind, message)


def test_fsgr_weights_that_cannot_be_read(demo_run, tmp_path: Path) -> None:
    config, _ = demo_run
    fsgr = fit_stage(config).output
    backup = tmp_path / "fsgr.pt"
    shutil.copy2(fsgr, backup)
    try:
        data = backup.read_bytes()
        for damaged in (b"", data[:len(data) // 2]):
            fsgr.write_bytes(damaged)
            with pytest.raises(UnreadableCheckpoint) as caught:
                load_fsgr(config, torch.device("cpu"))
            message = str(caught.value)
            assert_one_line_about(message, fsgr)
            assert message.endswith("re-run `python -m extract fit --force`")
    finally:
        shutil.copy2(backup, fsgr)
    load_fsgr(config, torch.device("cpu"))
