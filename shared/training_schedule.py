"""What the training loops (`extract fit`, `train` XE and SCST) share: lr schedule, atomic
checkpoints, and resuming a `last.pt` exactly (weights, optimizer, random state)."""

from __future__ import annotations

import os

from pathlib import Path
from typing import Any

import torch


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
    or None (missing, or another run's: start over).

    The file is read onto the CPU whatever device wrote it or this run uses: random states
    must be CPU byte tensors, and the loop's own entries (memory banks, generators) live on
    the CPU. The model is then moved to `device`, and `Optimizer.load_state_dict` puts the
    optimizer state on each parameter's device."""
    if not path.exists():
        return None
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if ckpt["identity"] != identity:
        return None
    model.load_state_dict(ckpt["model"])
    model.to(device)
    optimizer.load_state_dict(ckpt["optimizer"])  # casts the state to each param's device
    restore_rng(ckpt, device)
    return ckpt


def restore_rng(ckpt: dict[str, Any], device: torch.device) -> None:
    """The CPU random state, and on CUDA that of `device`, from a `resume_state` entry
    (both restored from CPU byte tensors, as `torch.set_rng_state` requires)."""
    torch.set_rng_state(ckpt["torch_rng"].to("cpu", torch.uint8))
    if device.type == "cuda" and ckpt.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(ckpt["cuda_rng"].to("cpu", torch.uint8), device)


def save_atomic(payload: dict[str, Any], path: Path) -> None:
    """`torch.save` to a temporary file, fsync, then rename: a checkpoint is whole or absent."""
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    with tmp.open("wb") as fh:
        torch.save(payload, fh)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)
