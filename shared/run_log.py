"""A training phase's per-epoch log: JSON lines, mirrored as TensorBoard scalars on request.

`RunLog.write` appends a record to the phase's JSON-lines file (`train/log.jsonl`,
`train/scst/log.jsonl`, `fsgr/fit_log.jsonl`) as `json.dumps(record)` + newline, on the main rank only. With
`train.tensorboard = true` every numeric field of the record also becomes a TensorBoard scalar
`<phase>/<field>` (`xe/train_loss`, `scst/mean_reward`, `fit/val_cider`), written by a
`torch.utils.tensorboard.SummaryWriter` into `<log folder>/tensorboard/<phase>/` and flushed
with each record, so a crash loses nothing the JSON log has. Numbers are mirrored as they are,
a list of numbers as one scalar per entry (`<field>/<index>`); booleans, strings (`warnings`,
`baseline`) and the `step` field are not. `RunLog.refresh` mirrors a prototype refresh
(`train.self_memory.SelfMemory`) as `refresh/<field>` in the same folder, per decoder layer
(`refresh/prototypes/0`, `refresh/bank_keys/1`, ...).

Global step: the record's `step` (optimizer steps of the phase so far; `epoch` for a record
without one), so epoch records and refreshes share one axis. XE and SCST each count steps
from 0, hence one folder (one TensorBoard run) per phase:
`tensorboard --logdir runs/<dataset>/train` shows the runs `tensorboard/xe` and
`scst/tensorboard/scst`.

Restarts follow the JSON log. A phase that starts over deletes its events with its records
(`start_over`). A resumed phase (`resume`) drops the records after its resume point and adds a
new event file to the same folder that opens with a purge at the first step after that point:
TensorBoard hides whatever the interrupted run logged past the resume point, and the resumed
run logs those steps again (the newer Rust data server replaces a tag's points at a step that
comes again, to the same effect), so no step appears twice.
"""

from __future__ import annotations

import json
import numbers
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared.training_schedule import drop_log_records

__all__ = ["MissingTensorBoard", "RunLog", "require_tensorboard", "scalar_fields"]

TENSORBOARD_HINT = ("train.tensorboard = true needs TensorBoard: "
                    "pip install 'fsgr-pma[tensorboard]'")


class MissingTensorBoard(RuntimeError):
    """`train.tensorboard` is on but TensorBoard is not installed."""


def require_tensorboard(enabled: bool) -> type | None:
    """`SummaryWriter` when `enabled` (None otherwise); a one-line `MissingTensorBoard` when
    TensorBoard cannot be imported. Stages call it first, before any work."""
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise MissingTensorBoard(TENSORBOARD_HINT) from None
    return SummaryWriter


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def scalar_fields(record: dict[str, Any]) -> list[tuple[str, float]]:
    """(name, value) of every numeric field of `record` as TensorBoard gets it: numbers, and
    lists of numbers one per entry (`name/<index>`); the `step` axis itself is left out."""
    out: list[tuple[str, float]] = []
    for key, value in record.items():
        if key == "step":
            continue
        if _is_number(value):
            out.append((key, float(value)))
        elif isinstance(value, (list, tuple)) and value and all(map(_is_number, value)):
            out.extend((f"{key}/{i}", float(v)) for i, v in enumerate(value))
    return out


def _global_step(record: dict[str, Any]) -> int:
    """The record's `step`, else its `epoch` (0 with neither)."""
    for key in ("step", "epoch"):
        if _is_number(record.get(key)):
            return int(record[key])
    return 0


class RunLog:
    """The JSON-lines log of one phase (`"xe"`, `"scst"`, `"fit"`) and its TensorBoard
    mirror. Every method does nothing off the main rank (`main=False`).

    Call `start_over` or `resume` before the first `write`; `close` at the end (each record
    is flushed anyway)."""

    def __init__(self, path: Path, phase: str, tensorboard: bool = False,
                 main: bool = True) -> None:
        self.path, self.phase, self.main = Path(path), phase, main
        writer_class = require_tensorboard(tensorboard)
        self._writer_class = writer_class if main else None
        self._writer: Any = None
        self._purge_step: int | None = None

    @property
    def events_dir(self) -> Path:
        """This phase's TensorBoard run: `<log folder>/tensorboard/<phase>/`."""
        return self.path.parent / "tensorboard" / self.phase

    def start_over(self) -> None:
        """A phase starting from scratch: its log goes, with the events beside it (also when
        TensorBoard is off now: they would describe records that are gone)."""
        if not self.main:
            return
        self.path.unlink(missing_ok=True)
        shutil.rmtree(self.events_dir.parent, ignore_errors=True)
        self._purge_step = None

    def resume(self, drop: Callable[[dict], bool], step: int) -> None:
        """A phase continuing from a resume point at optimizer step `step`: the records `drop`
        selects (those after the point, which the run logs again) go, and the first event
        file written opens with a purge of the events past `step`."""
        if not self.main:
            return
        drop_log_records(self.path, drop)
        self._purge_step = step + 1

    def write(self, record: dict[str, Any]) -> None:
        """Append `record` to the JSON log and, with TensorBoard, its numeric fields as
        `<phase>/<field>` scalars at the record's step (flushed)."""
        if not self.main:
            return
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        self._mirror(self.phase, record)

    def refresh(self, record: dict[str, Any]) -> None:
        """Mirror one prototype refresh (a `SelfMemory.refresh_log` entry) as `refresh/...`
        scalars at its step; TensorBoard only (the JSON log keeps per-epoch counts)."""
        if self.main:
            self._mirror("refresh", record)

    def close(self) -> None:
        """Close the event file (a later `write` opens a new one)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _mirror(self, group: str, record: dict[str, Any]) -> None:
        if self._writer_class is None:
            return
        if self._writer is None:
            self.events_dir.mkdir(parents=True, exist_ok=True)
            self._writer = self._writer_class(str(self.events_dir), purge_step=self._purge_step)
            self._purge_step = None
        step = _global_step(record)
        for name, value in scalar_fields(record):
            self._writer.add_scalar(f"{group}/{name}", value, step)
        self._writer.flush()
