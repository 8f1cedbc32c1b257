"""What the training loops (`extract fit`, `train` XE and SCST) share: lr schedule, resuming a
`last.pt` exactly (weights, optimizer, random state), and the warnings of a run that cannot
learn (a warm-up longer than the run, a training loss that does not fall).

Writing and picking checkpoint files (atomic saves, `last.prev.pt`, one-line read errors) is
`shared.checkpoint_files`; `save_atomic` is re-exported here for the loops."""

from __future__ import annotations

import json
import sys
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from shared.atomic_files import write_text_atomic
from shared.checkpoint_files import (RESUME_KEYS, Check, Rotation, load_checkpoint,
                                     pick_resume_point, save_atomic)

__all__ = ["LossTrend", "RunWarnings", "drop_log_records", "lr_factor", "open_resume_point",
           "restore_rng", "restore_state", "resume_state", "save_atomic", "warmup_warning"]


def lr_factor(step: int, epoch: int, warmup_steps: int, decay_every: int,
              decay_factor: float) -> float:
    """Linear warm-up over `warmup_steps`, then x`decay_factor` every `decay_every` epochs."""
    warm = min(1.0, (step + 1) / max(1, warmup_steps))
    return warm * decay_factor ** (epoch // max(1, decay_every))


def resume_state(identity: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 device: torch.device) -> dict[str, Any]:
    """The entries every `last.pt` holds to continue exactly: the run's identity, weights,
    optimizer and the CPU (and CUDA) random state; the loop adds its own counters."""
    return {"identity": identity, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def restore_state(path: Path, identity: str, model: torch.nn.Module,
                  optimizer: torch.optim.Optimizer, device: torch.device
                  ) -> dict[str, Any] | None:
    """Load `path` (a `resume_state` checkpoint) into `model`, `optimizer` and the random
    state when it was written by the run `identity`; returns it for the loop's own entries,
    or None (missing, or another run's: start over). An unreadable file raises
    `UnreadableCheckpoint` (one line): loops choose `path` with
    `shared.checkpoint_files.pick_resume_point`, which falls back on `last.prev.pt`.

    The file is read onto the CPU whatever device wrote it or this run uses: random states
    must be CPU byte tensors, and the loop's own entries (memory banks, generators) live on
    the CPU. The model is then moved to `device`, and `Optimizer.load_state_dict` puts the
    optimizer state on each parameter's device."""
    if not Path(path).exists():
        return None
    ckpt = load_checkpoint(path, "resume point", "run with --force to start over",
                           keys=RESUME_KEYS)
    if ckpt["identity"] != identity:
        return None
    model.load_state_dict(ckpt["model"])
    model.to(device)
    optimizer.load_state_dict(ckpt["optimizer"])  # casts the state to each param's device
    restore_rng(ckpt, device)
    return ckpt


def open_resume_point(last: Path, identity: str, force: bool, model: torch.nn.Module,
                      optimizer: torch.optim.Optimizer, device: torch.device,
                      warnings: RunWarnings, check: Check | None = None
                      ) -> tuple[Rotation, Path | None, dict[str, Any] | None]:
    """Where a training loop starts: the `Rotation` of its `last.pt`, the file it resumes from
    (`last.pt` or `last.prev.pt`, None with `force` or when neither is usable; the notes of
    `pick_resume_point` go to `warnings`) and that checkpoint, already restored into `model`,
    `optimizer` and the random state (None: start over)."""
    source, notes = (None, []) if force else pick_resume_point(last, identity, check)
    for note in notes:
        warnings.add(note)
    ckpt = None if source is None else \
        restore_state(source, identity, model, optimizer, device)
    return Rotation(last, source), source, ckpt


def restore_rng(ckpt: dict[str, Any], device: torch.device) -> None:
    """The CPU random state, and on CUDA that of `device`, from a `resume_state` entry
    (both restored from CPU byte tensors, as `torch.set_rng_state` requires)."""
    torch.set_rng_state(ckpt["torch_rng"].to("cpu", torch.uint8))
    if device.type == "cuda" and ckpt.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(ckpt["cuda_rng"].to("cpu", torch.uint8), device)


def drop_log_records(log_path: Path, drop: Callable[[dict], bool]) -> None:
    """Rewrite a JSON-lines log without the records `drop` selects (e.g. epochs after the
    resume point, which the resumed run logs again)."""
    if not log_path.exists():
        return
    records = [line for line in log_path.read_text().splitlines() if line]
    kept = [line for line in records if not drop(json.loads(line))]
    if len(kept) == len(records):
        return
    write_text_atomic(log_path, "".join(line + "\n" for line in kept))


# -- runs that cannot learn -------------------------------------------------------------------

def warmup_warning(key: str, warmup_steps: int, epochs: int, steps_per_epoch: int
                   ) -> str | None:
    """One line when the linear warm-up `key` is longer than the planned optimizer steps
    (`epochs` x `steps_per_epoch`): the learning rate never reaches its configured value."""
    planned = epochs * steps_per_epoch
    if warmup_steps <= planned:
        return None
    return (f"warning: {key} is {warmup_steps:,} but the run plans only {planned:,} optimizer "
            f"steps ({epochs} epoch{'s' if epochs != 1 else ''} x {steps_per_epoch} batches): "
            f"the learning rate never "
            f"gets past {planned / warmup_steps:.1%} of its value; lower {key}")


class LossTrend:
    """Whether the training loss moved: the mean of the run's first `window` step losses
    against the mean of its latest `window` ones. "Flat" = the latest mean is not at least
    `min_fall` (1%) below the first: a from-scratch caption model falls by far more than
    that within its first epochs, while a run whose learning rate stays ~0 (a warm-up far
    longer than the run) or that diverges does not. Windows of 20 steps (a quarter of the
    planned steps in short runs) average out batch noise; runs of fewer than 20 planned
    steps get no verdict. `state()` goes into `last.pt` so a resumed run compares with the
    first steps of the whole run."""

    def __init__(self, planned_steps: int, window: int = 20, min_fall: float = 0.01) -> None:
        self.window = min(window, planned_steps // 4)
        self.min_fall = min_fall
        self.first: list[float] = []
        self.latest: deque[float] = deque(maxlen=max(self.window, 1))
        self.steps = 0
        self.reported = False

    def add(self, loss: float) -> None:
        self.steps += 1
        if len(self.first) < self.window:
            self.first.append(loss)
        self.latest.append(loss)

    def state(self) -> dict[str, Any]:
        return {"window": self.window, "first": list(self.first), "latest": list(self.latest),
                "steps": self.steps}

    def load_state(self, state: dict[str, Any] | None) -> None:
        """Continue from `state()` (absent in a `last.pt` written by older code: start anew)."""
        if state and state.get("window") == self.window:
            self.first = list(state["first"])
            self.latest.extend(state["latest"])
            self.steps = int(state["steps"])

    def warning(self, what: str, hint: str) -> str | None:
        """One line, the first time the loss is found not to have fallen (None otherwise, and
        without enough steps for a verdict); `what` names the loss, `hint` what to check."""
        if self.reported or self.window < 5 or self.steps < 2 * self.window:
            return None
        first = sum(self.first) / len(self.first)
        latest = sum(self.latest) / len(self.latest)
        if latest < (1 - self.min_fall) * first:
            return None
        self.reported = True
        return (f"warning: {what} has not fallen: {first:.4f} over the first {self.window} "
                f"steps, {latest:.4f} over the latest {self.window} (step {self.steps}); "
                f"this run is not learning, check {hint}")


class RunWarnings:
    """A training run's warnings: each shown once on stderr as it happens (by the main
    process), attached to the next epoch record of the run's log (`take`) and listed in the
    stage manifest's summary (`all`)."""

    def __init__(self, show: bool = True) -> None:
        self.show = show
        self.all: list[str] = []
        self._pending: list[str] = []

    def add(self, line: str | None) -> None:
        if line is None or line in self.all:
            return
        self.all.append(line)
        self._pending.append(line)
        if self.show:
            print(line, file=sys.stderr, flush=True)

    def take(self) -> dict[str, list[str]]:
        """`{"warnings": [...]}` of the lines not yet in the log ({} when none), for a record."""
        pending, self._pending = self._pending, []
        return {"warnings": pending} if pending else {}

    def summary(self) -> dict[str, list[str]]:
        """`{"warnings": [...]}` of every line so far ({} when none), for the manifest."""
        return {"warnings": list(self.all)} if self.all else {}
