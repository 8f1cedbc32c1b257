"""What the two training loops (`extract fit`, `train`) share: lr schedule, atomic checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def lr_factor(step: int, epoch: int, warmup_steps: int, decay_every: int,
              decay_factor: float) -> float:
    """Linear warm-up over `warmup_steps`, then x`decay_factor` every `decay_every` epochs."""
    warm = min(1.0, (step + 1) / max(1, warmup_steps))
    return warm * decay_factor ** (epoch // max(1, decay_every))


def save_atomic(payload: dict[str, Any], path: Path) -> None:
    """`torch.save` to a temporary file, then rename: a checkpoint is whole or absent."""
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
