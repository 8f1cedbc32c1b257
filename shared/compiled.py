"""`train.compile`: the decoder's training forward under `torch.compile`, where it can run.

`torch.compile` (TorchDynamo + Inductor) needs a supported Python/torch pair, a C++ compiler for
CPU kernels and Triton for CUDA kernels. Where one is missing the forward stays eager and the
reason is given once as a warning. Compiled kernels fuse and reorder floating-point operations,
so losses agree with eager ones to rounding, not bit for bit (tests/test_compile.py); the key
therefore stays part of the training stage's identity.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable

import torch
from torch import nn


def compile_support(device: torch.device) -> str:
    """'' when `torch.compile` can run on `device` here; else why not (one line)."""
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    try:
        import torch._dynamo as dynamo
        supported = dynamo.is_dynamo_supported()
    except Exception as err:  # noqa: BLE001 - an import problem is a reason, not a crash
        return f"torch.compile is unavailable ({type(err).__name__}: {err})"
    if not supported:
        return (f"torch.compile does not support Python {sys.version_info.major}."
                f"{sys.version_info.minor} with torch {torch.__version__}")
    if device.type == "cpu" and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        return "no C++ compiler (g++) for torch.compile's CPU kernels"
    if device.type == "cuda":
        try:
            from torch.utils._triton import has_triton
        except ImportError:
            return ""
        if not has_triton():
            return "Triton is not installed (needed by torch.compile's CUDA kernels)"
    return ""


def compile_forward(module: nn.Module, enabled: bool, device: torch.device,
                    warn: Callable[[str], None] | None = None) -> nn.Module:
    """`module` under `torch.compile` when `enabled` and supported on `device`; otherwise
    `module` itself (with a warning through `warn` when it was asked for)."""
    if not enabled:
        return module
    why = compile_support(device)
    if why:
        if warn is not None:
            warn(f"warning: train.compile: {why}; the decoder runs eagerly")
        return module
    return torch.compile(module)
