"""The one training loop of every phase: `extract fit`, cross-entropy (XE) and SCST.

A phase is an `Objective`: the weights it trains, its batches, its learning rate, the loss of
one batch and its validation. `TrainingLoop` owns everything else, once:

* resuming: `last.pt` (or `last.prev.pt` when `last.pt` is unreadable) of the same run
  identity continues exactly (weights, optimizer, random state, counters, the objective's own
  state, the PMA memory banks); `--resume` insists on it;
* the optimizer step (`train_step`, which benchmarks call too): zero-grad, backward, gradient
  clipping, Adam, and a NaN/inf loss stopping the run (`NonFiniteLoss`) before any weight moves;
* under `torchrun` every rank takes the same number of steps and rank 0 validates, writes
  checkpoints and the log, and shares `best_cider` / patience with the others;
* PMA memory: banks collected after each step, prototypes refreshed when due, banks saved
  beside `last.pt`;
* each epoch: validation, `best.pt` when `val_cider` improved, a record in the phase's
  JSON-lines log (`shared.run_log`), `last.pt` (atomic, the previous one kept as
  `last.prev.pt` until it is complete), the curves, a printed line; early stopping after
  `patience` epochs without improvement.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from shared.checkpoint_files import save_atomic
from shared.devices import resolve_device
from shared.run_log import RunLog
from shared.training_schedule import RunWarnings, open_resume_point, resume_state


class NonFiniteLoss(RuntimeError):
    """The loss became NaN/inf; the last good checkpoint is kept."""


@dataclass
class Ranks:
    """This process's place in a (possibly single-process) distributed run."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def join_run(device_name: str) -> tuple[torch.device, Ranks]:
    """The device of this process and its rank: joins the `torchrun` process group when
    WORLD_SIZE > 1 (gloo on CPU, nccl on CUDA, one GPU per local rank)."""
    device = resolve_device(device_name)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return device, Ranks()
    if not dist.is_initialized():
        # gloo for the CPU tensors of the loop's own collectives, nccl for CUDA ones
        dist.init_process_group("cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return device, Ranks(dist.get_rank(), dist.get_world_size())


def data_parallel(module: nn.Module, device: torch.device, ranks: Ranks,
                  find_unused: bool) -> nn.Module:
    """`module` wrapped in DistributedDataParallel under torchrun (itself otherwise). Buffers
    are not broadcast: PMA prototypes are synced explicitly at each refresh."""
    if ranks.world == 1:
        return module
    return nn.parallel.DistributedDataParallel(
        module, device_ids=[device.index] if device.type == "cuda" else None,
        broadcast_buffers=False, find_unused_parameters=find_unused)


class Objective(Protocol):
    """What a phase supplies to `TrainingLoop`."""

    label: str          # how its lines and errors start: "train", "train scst", "extract fit"
    lr_key: str         # the config key to lower when the loss is not finite
    module: nn.Module   # the weights trained: optimizer, clipping, checkpoints
    grad_clip: float    # max gradient norm
    train_mode: bool    # `module.train(train_mode)` for the epoch (SCST stays in eval mode)

    def lr(self, step: int, epoch: int) -> float:
        """The learning rate of optimizer step `step` (0-based) in `epoch` (0-based)."""

    def batches(self, epoch: int) -> tuple[Iterable[dict], int]:
        """This epoch's batches (this rank's share) and how many there are."""

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """The batch's loss (with grad) and the step's metrics, summed over the epoch."""

    def epoch_record(self, sums: dict[str, float], steps: int) -> dict[str, Any]:
        """The training fields of an epoch's log record from the summed step metrics."""

    def validate(self) -> dict[str, float]:
        """Validation metrics of the current weights; `val_cider` selects `best.pt`."""

    def epoch_line(self, record: dict[str, Any]) -> str:
        """What to print after an epoch (without the label)."""

    def best_entries(self, record: dict[str, Any]) -> dict[str, Any]:
        """What `best.pt` holds besides the weights, epoch, val loss and val CIDEr-D."""


@dataclass
class LoopSettings:
    """Where a phase writes and how long it runs."""

    out_dir: Path            # last.pt, best.pt (and memory banks) go here
    identity: str            # the stage identity a resume point must carry
    max_epochs: int
    patience: int | None     # epochs without a better val_cider before stopping; None: never
    log: RunLog
    curves: Callable[[], None] | None = None   # redraws the phase's curves after each record
    progress: bool = True


@dataclass
class LoopResult:
    """How the loop ended: `stopped` ("max_epochs" / "early stop"), optimizer steps, the best
    val_cider and the printed lines."""

    stopped: str
    steps: int
    best_cider: float
    lines: list[str] = field(default_factory=list)


def train_step(objective: Objective, optimizer: torch.optim.Optimizer,
               batch: dict) -> dict[str, float]:
    """One optimizer update of `objective` on `batch`: its loss, backward, gradient clipping
    at `objective.grad_clip`, optimizer step. Returns the step's metrics with `loss` and
    `step_seconds`; a NaN/inf loss raises `NonFiniteLoss` before any weight moves."""
    started = time.perf_counter()
    loss, metrics = objective.loss(batch)
    value = float(loss.detach())
    if not math.isfinite(value):
        raise NonFiniteLoss(f"loss is {value}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(objective.module.parameters(), objective.grad_clip)
    optimizer.step()
    return {"loss": value, **metrics, "step_seconds": time.perf_counter() - started}


class TrainingLoop:
    """Epochs of `objective` with `optimizer` (see the module docstring); `memory` is the PMA
    memory it trains with (`train.self_memory.SelfMemory`), if any."""

    def __init__(self, objective: Objective, optimizer: torch.optim.Optimizer,
                 settings: LoopSettings, device: torch.device, ranks: Ranks | None = None,
                 memory: Any = None, warnings: RunWarnings | None = None) -> None:
        self.objective, self.optimizer, self.settings = objective, optimizer, settings
        self.device, self.ranks, self.memory = device, ranks or Ranks(), memory
        self.warnings = warnings or RunWarnings(show=self.ranks.main)
        self.last, self.best = settings.out_dir / "last.pt", settings.out_dir / "best.pt"
        self.step, self.best_cider, self.stale_epochs = 0, -math.inf, 0
        self.lines: list[str] = []

    # -- start ---------------------------------------------------------------------------

    def start(self, force: bool, resume: bool,
              reason: str = "") -> tuple[int, dict[str, Any] | None]:
        """Open the resume point (none with `force`); returns the first epoch to run and the
        checkpoint resumed from (None: starting over), after which the objective's own entries
        are restored by the caller. Sets up the log."""
        objective, memory = self.objective, self.memory
        check = memory.check_resume_point if memory is not None else None
        self.rotation, source, ckpt = open_resume_point(
            self.last, self.settings.identity, force, objective.module, self.optimizer,
            self.device, self.warnings, check)
        start_epoch = 0
        if ckpt is not None:
            if memory is not None:
                memory.load_banks(source, ckpt["memory"], banks=self.ranks.main)
            start_epoch, self.step = ckpt["epoch"] + 1, ckpt["step"]
            self.best_cider = ckpt["best_cider"]
            self.stale_epochs = ckpt.get("stale_epochs", 0)
            self.say(f"resuming after epoch {start_epoch} (step {self.step})")
        if resume and start_epoch == 0:
            raise RuntimeError(f"--resume: {self.last} is missing or was written with another "
                               f"config ({reason})")
        log = self.settings.log
        if start_epoch == 0:
            log.start_over()
        else:  # epochs after the resume point are logged again
            log.resume(lambda r: r.get("epoch", 0) > start_epoch, self.step)
        return start_epoch, ckpt

    def say(self, line: str) -> None:
        self.lines.append(f"{self.objective.label}: {line}")

    def record_start(self, record: dict[str, Any]) -> dict[str, Any]:
        """Validate the starting weights as epoch 0 (SCST): they are `best.pt` (epoch -1)
        until an epoch beats them. Main rank (whose record is returned); the others get
        `best_cider` from it."""
        if self.ranks.main:
            record = {**record, "epoch": 0, "step": 0, **self.objective.validate(),
                      **self.warnings.take()}
            self.best_cider = record["val_cider"]
            self._save_best(-1, record)
            self.settings.log.write(record)
            self._draw_curves()
        self.best_cider = self._share([self.best_cider])[0]
        return record

    # -- epochs --------------------------------------------------------------------------

    def run(self, start_epoch: int, state: Callable[[], dict[str, Any]] = dict) -> LoopResult:
        """Epochs `start_epoch` .. `max_epochs - 1` (fewer on early stopping); `state()` is the
        objective's entries of each `last.pt`."""
        s = self.settings
        stopped = "max_epochs"
        for epoch in range(start_epoch, s.max_epochs):
            if s.patience is not None and self.stale_epochs >= s.patience:
                stopped = "early stop"
                break
            record = self._train_epoch(epoch)
            if self.ranks.main:
                record.update(self.objective.validate())
                record.update(self.warnings.take())
                improved = record["val_cider"] > self.best_cider
                self.best_cider = max(self.best_cider, record["val_cider"])
                self.stale_epochs = 0 if improved else self.stale_epochs + 1
                if improved:
                    self._save_best(epoch, record)
                # the record before the resume point that follows it: an interruption between
                # the two re-runs the epoch, whose record the resumed run drops and logs again
                self.settings.log.write(record)
                self._save_last(epoch, state())
                self._draw_curves()
                self.say(f"epoch {epoch + 1}: {self.objective.epoch_line(record)}"
                         + (" (best)" if improved else ""))
            self.best_cider, stale = self._share([self.best_cider, float(self.stale_epochs)])
            self.stale_epochs = int(stale)
        s.log.close()
        return LoopResult(stopped, self.step, self.best_cider, self.lines)

    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        objective, s = self.objective, self.settings
        objective.module.train(objective.train_mode)
        batches, n_steps = objective.batches(epoch)
        if self.ranks.world > 1:  # every rank must take the same number of steps
            count = torch.tensor(n_steps)
            dist.all_reduce(count, op=dist.ReduceOp.MIN)
            n_steps = int(count)
        started, sums, refreshes, lr = time.perf_counter(), {}, 0, 0.0
        bar = tqdm(total=n_steps, disable=not (s.progress and self.ranks.main), unit="batch",
                   desc=f"{objective.label} {epoch + 1}/{s.max_epochs}")
        for i, batch in enumerate(batches):
            if i == n_steps:
                break
            lr = objective.lr(self.step, epoch)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            try:
                metrics = train_step(objective, self.optimizer, batch)
            except NonFiniteLoss as err:
                raise NonFiniteLoss(
                    f"{objective.label}: {err} at epoch {epoch + 1}, step {self.step + 1}; "
                    f"stopped, {self.last} keeps the last good epoch (try a lower "
                    f"{objective.lr_key})") from None
            self.step += 1
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + value
            if self.memory is not None:
                self.memory.collect()
                if self.memory.due(self.step):
                    self.memory.refresh_synced()
                    refreshes += 1
            bar.update(1)
            bar.set_postfix(loss=f"{sums['loss'] / (i + 1):.3f}")
        bar.close()
        record = {"epoch": epoch + 1, "step": self.step,
                  **objective.epoch_record(sums, n_steps), "lr": lr}
        if self.memory is not None:
            record["prototype_refreshes"] = refreshes
        record["seconds"] = time.perf_counter() - started
        return record

    # -- writing -------------------------------------------------------------------------

    def _save_best(self, epoch: int, record: dict[str, Any]) -> None:
        save_atomic({"model": self.objective.module.state_dict(), "epoch": epoch,
                     "val_loss": record["val_loss"], "val_cider": record["val_cider"],
                     **self.objective.best_entries(record)}, self.best)

    def _save_last(self, epoch: int, state: dict[str, Any]) -> None:
        memory = self.memory
        banks = memory.save_banks(self.last) if memory is not None else {}  # before last.pt
        try:
            self.rotation.before_save()
            save_atomic({**resume_state(self.settings.identity, self.objective.module,
                                        self.optimizer, self.device),
                         "memory": banks, "epoch": epoch, "step": self.step,
                         "best_cider": self.best_cider, "stale_epochs": self.stale_epochs,
                         **state}, self.last)
        finally:
            if memory is not None:
                memory.drop_stale_banks(self.last)

    def _draw_curves(self) -> None:
        if self.settings.curves is not None:
            self.settings.curves()

    def _share(self, values: list[float]) -> list[float]:
        """Rank 0's `values` on every rank (themselves in a single-process run)."""
        if self.ranks.world == 1:
            return values
        flags = torch.tensor(values, dtype=torch.float64)
        dist.broadcast(flags, 0)
        return flags.tolist()

