"""Full-precision islands inside mixed-precision (autocast) models.

Under `torch.autocast` (config `train.precision` = bf16/fp16) linear layers and matmuls run in
the low-precision dtype. Where the numbers are *decisions* — vocabulary logits that beam search
and greedy decoding rank, cosine similarities whose top-k / argmax pick concepts and
pseudo-labels, the SupCon similarity matrix — they are computed here instead: autocast off,
inputs promoted to at least float32 (float64 stays float64), so the result does not depend on
the precision the rest of the model runs in. In fp32 mode this is exactly the plain op.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = ["autocast_off", "full_precision"]


def autocast_off(device: torch.device | str) -> torch.autocast:
    """Context that switches autocast off for `device`'s type (a no-op outside autocast)."""
    return torch.autocast(device_type=torch.device(device).type, enabled=False)


def full_precision(op: Callable[..., Tensor], *args: Any, **kwargs: Any) -> Tensor:
    """`op(*args, **kwargs)` with autocast disabled and the tensor arguments promoted to a
    common dtype of at least float32, e.g. `full_precision(F.linear, hidden, head.weight,
    head.bias)`, `full_precision(torch.matmul, a, b)` or `full_precision(torch.einsum,
    "bpe,bke->bpk", a, b)`. Other arguments (an equation, a `None` bias) pass through."""
    tensors = [a for a in args if isinstance(a, Tensor)]
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    device = tensors[0].device if tensors else torch.device("cpu")
    args = tuple(a.to(dtype) if isinstance(a, Tensor) else a for a in args)
    if not torch.is_autocast_enabled(device.type):
        return op(*args, **kwargs)  # fp32 mode: just the op
    with autocast_off(device):
        return op(*args, **kwargs)
