"""Attention blocks of the caption decoder and their prototype-memory variants (DESIGN.md §2).

- ``MultiHeadAttention``: standard multi-head attention (SDPA) with a boolean ``allowed`` mask,
  without dropout on the attention weights, as M2's ``ScaledDotProductAttention`` (the layers
  apply dropout to the attention output, before the residual sum).
- ``PrototypeMemoryAttention``: PMA-Net's replacement for the decoder's masked self-attention.
  Keys/values of the input tokens are extended with per-layer prototypes M_K, M_V living in the
  projected (d_model) key/value space: K~ = [K + s_in ; M_K + s_mem], V~ = [V ; M_V]. Queries
  are not extended; every query sees every prototype. With no prototypes installed (m = 0) it is
  exactly ``MultiHeadAttention``.
- ``MemoryBank``: sliding window of detached keys/values of past iterations (one per layer),
  from which the cluster stage / trainer builds prototypes.
- ``CrossMemory``: the seed's ``memory.cross`` variant, feature prototypes (visual input space)
  appended to the encoded visual tokens through the decoder's own input projection.

Prototype buffers start empty and can be resized by ``load_state_dict`` (checkpoints carry them).
"""

from __future__ import annotations

from collections import deque

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class MultiHeadAttention(nn.Module):
    """Multi-head attention over (query, key, value) with optional boolean masks; no dropout
    on the attention weights (M2's attention has none; the caller drops the output)."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
        self.n_heads = n_heads
        self.q_proj, self.k_proj = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model)
        self.v_proj, self.out_proj = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model)

    def split(self, x: Tensor) -> Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.n_heads, -1).transpose(1, 2)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, allowed: Tensor | None) -> Tensor:
        """Attention on projected q [B, Lq, d], k/v [B, Lk, d] -> output projection [B, Lq, d]."""
        out = F.scaled_dot_product_attention(self.split(q), self.split(k), self.split(v),
                                             attn_mask=allowed)
        return self.out_proj(out.transpose(1, 2).flatten(2))

    def forward(self, query: Tensor, key: Tensor, value: Tensor,
                allowed: Tensor | None = None) -> Tensor:
        """`allowed` [B or 1, 1, Lq, Lk] is True where a query may attend a key."""
        return self.attend(self.q_proj(query), self.k_proj(key), self.v_proj(value), allowed)

    def attend_step(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Incremental decoding: projected q [N, 1, d] over every cached key/value [N, t, d]."""
        return self.attend(q, k, v, None)


class _ResizableBuffers:
    """Mixin: buffers named in ``resizable`` take the incoming shape on ``load_state_dict``."""

    resizable: tuple[str, ...] = ()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:  # noqa: ANN001
        for name in self.resizable:
            incoming = state_dict.get(prefix + name)
            current = self._buffers[name]
            if incoming is not None and incoming.shape != current.shape:
                self._buffers[name] = current.new_empty(incoming.shape)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)


def _memory_columns(allowed: Tensor | None, n_memory: int) -> Tensor | None:
    """Extend a [B or 1, 1, Lq, Lk] mask with ``n_memory`` always-allowed key columns."""
    if allowed is None:
        return None
    extra = allowed.new_ones(*allowed.shape[:-1], n_memory)
    return torch.cat([allowed, extra], dim=-1)


class PrototypeMemoryAttention(_ResizableBuffers, MultiHeadAttention):
    """Self-attention whose keys/values are extended with prototype memory (PMA-Net).

    Buffers ``memory_keys`` / ``memory_values`` [m, d_model] hold the prototypes (m = 0: off,
    and the layer is exactly ``MultiHeadAttention``). Learned segment vectors ``seg_input`` and
    ``seg_memory`` are added to input keys and prototype keys, only while memory is on.
    With ``record = True`` each forward stores ``last_keys_values`` = (K, V, valid): the
    detached projected keys/values [B, L, d_model] (without segment vectors) and the key mask
    [B, L] (True = non-padding), for the trainer's memory banks.
    """

    resizable = ("memory_keys", "memory_values")

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__(d_model, n_heads)
        self.seg_input = nn.Parameter(torch.randn(d_model) * 0.02)
        self.seg_memory = nn.Parameter(torch.randn(d_model) * 0.02)
        self.register_buffer("memory_keys", torch.zeros(0, d_model))
        self.register_buffer("memory_values", torch.zeros(0, d_model))
        self.record = False
        self.last_keys_values: tuple[Tensor, Tensor, Tensor] | None = None

    @property
    def memory_size(self) -> int:
        return self.memory_keys.shape[0]

    @torch.no_grad()
    def set_prototypes(self, keys: Tensor, values: Tensor) -> None:
        """Install prototypes M_K, M_V [m, d_model] (m = 0 turns the memory off)."""
        d_model = self.k_proj.out_features
        if keys.ndim != 2 or keys.shape != values.shape or keys.shape[1] != d_model:
            raise ValueError(f"prototypes must both be [m, {d_model}], got "
                             f"{tuple(keys.shape)} and {tuple(values.shape)}")
        like = self.memory_keys
        self.memory_keys = keys.detach().to(device=like.device, dtype=like.dtype).clone()
        self.memory_values = values.detach().to(device=like.device, dtype=like.dtype).clone()

    def forward(self, query: Tensor, key: Tensor, value: Tensor, allowed: Tensor | None = None,
                key_valid: Tensor | None = None) -> Tensor:
        """As ``MultiHeadAttention.forward``; ``key_valid`` [B, Lk] only feeds the recording."""
        q, k, v = self.q_proj(query), self.k_proj(key), self.v_proj(value)
        if self.record:
            valid = key_valid if key_valid is not None else \
                torch.ones(k.shape[:2], dtype=torch.bool, device=k.device)
            self.last_keys_values = (k.detach(), v.detach(), valid.detach())
        if self.memory_size:
            batch = k.shape[0]
            mem_k = (self.memory_keys + self.seg_memory).to(k.dtype).expand(batch, -1, -1)
            mem_v = self.memory_values.to(v.dtype).expand(batch, -1, -1)
            k = torch.cat([k + self.seg_input.to(k.dtype), mem_k], dim=1)
            v = torch.cat([v, mem_v], dim=1)
            allowed = _memory_columns(allowed, self.memory_size)
        return self.attend(q, k, v, allowed)

    def attend_step(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Incremental decoding over cached keys/values and the prototypes, without copying
        the prototypes once per row: token and memory scores share one softmax."""
        if not self.memory_size:
            return self.attend(q, k, v, None)
        qh, kh, vh = self.split(q), self.split(k + self.seg_input.to(k.dtype)), self.split(v)
        rows, heads, width = qh.shape[0], qh.shape[1], qh.shape[-1]
        mem_k = (self.memory_keys + self.seg_memory).to(q.dtype)
        mem_k = mem_k.view(-1, heads, width).permute(1, 2, 0)  # [h, dh, m]
        mem_v = self.memory_values.to(q.dtype).view(-1, heads, width).transpose(0, 1)  # [h, m, dh]
        q_by_head = qh[:, :, 0].transpose(0, 1)  # [h, N, dh]: one bmm per head, no copies
        scores = torch.cat([(qh @ kh.transpose(-1, -2))[:, :, 0],
                            torch.bmm(q_by_head, mem_k).transpose(0, 1)], -1) * width ** -0.5
        weights = scores.softmax(dim=-1)  # [N, h, t + m]
        tokens = k.shape[1]
        out = (weights[:, :, None, :tokens] @ vh)[:, :, 0] + \
            torch.bmm(weights[..., tokens:].transpose(0, 1), mem_v).transpose(0, 1)
        return self.out_proj(out.reshape(rows, 1, heads * width))

    def extra_repr(self) -> str:
        return f"memory_size={self.memory_size}, record={self.record}"


class CrossMemory(_ResizableBuffers, nn.Module):
    """Feature prototypes appended to the encoded visual tokens (config ``memory.cross``).

    Buffer ``prototypes`` [m_c, d_visual] lives in the visual *input* space; ``forward`` runs
    them through the decoder's input projection (not through visual encoder layers), adds the
    learned ``segment`` vector and appends them as extra key/value rows of every decoder
    layer's cross-attention (so they pass through each layer's own K/V projections).
    """

    resizable = ("prototypes",)

    def __init__(self, d_visual: int, d_model: int) -> None:
        super().__init__()
        self.segment = nn.Parameter(torch.randn(d_model) * 0.02)
        self.register_buffer("prototypes", torch.zeros(0, d_visual))

    @property
    def memory_size(self) -> int:
        return self.prototypes.shape[0]

    @torch.no_grad()
    def set_prototypes(self, prototypes: Tensor) -> None:
        """Install feature prototypes [m_c, d_visual] (m_c = 0 turns the memory off)."""
        d_visual = self.prototypes.shape[1]
        if prototypes.ndim != 2 or prototypes.shape[1] != d_visual:
            raise ValueError(f"cross prototypes must be [m, {d_visual}], "
                             f"got {tuple(prototypes.shape)}")
        like = self.prototypes
        self.prototypes = prototypes.detach().to(device=like.device, dtype=like.dtype).clone()

    def forward(self, encoded: Tensor, allowed: Tensor | None, project: nn.Module
                ) -> tuple[Tensor, Tensor | None]:
        """Append projected prototypes to ``encoded`` [B, Lv, d]; extend ``allowed``."""
        if not self.memory_size:
            return encoded, allowed
        rows = project(self.prototypes)
        rows = (rows + self.segment.to(rows.dtype)).to(encoded.dtype)
        encoded = torch.cat([encoded, rows.expand(encoded.shape[0], -1, -1)], dim=1)
        return encoded, _memory_columns(allowed, self.memory_size)

    def extra_repr(self) -> str:
        return f"memory_size={self.memory_size}"


class MemoryBank:
    """Detached keys/values of the last ``window`` iterations for one layer.

    ``add`` keeps non-padding rows only; iterations older than ``window`` are dropped.
    ``snapshot`` concatenates them and, above ``capacity`` rows, keeps a uniform random subset
    (seeded generator, order preserved). ``device`` (optional) is where rows are stored.
    """

    def __init__(self, capacity: int, window: int, seed: int = 0,
                 device: torch.device | str | None = None) -> None:
        if capacity < 1 or window < 1:
            raise ValueError(f"capacity ({capacity}) and window ({window}) must be >= 1")
        self.capacity, self.window, self.device = capacity, window, device
        self.generator = torch.Generator().manual_seed(seed)
        self._items: deque[tuple[Tensor, Tensor]] = deque(maxlen=window)

    def add(self, keys: Tensor, values: Tensor, mask: Tensor | None = None) -> None:
        """One iteration: keys/values [B, L, d] (or [n, d]); ``mask`` [B, L] True = keep."""
        if keys.shape != values.shape:
            raise ValueError(f"keys {tuple(keys.shape)} and values {tuple(values.shape)} differ")
        if mask is not None:
            keys, values = keys[mask], values[mask]
        else:
            keys, values = keys.reshape(-1, keys.shape[-1]), values.reshape(-1, values.shape[-1])
        device = self.device if self.device is not None else keys.device
        self._items.append((keys.detach().to(device, copy=True),
                            values.detach().to(device, copy=True)))

    def snapshot(self) -> tuple[Tensor, Tensor]:
        """(keys [n, d], values [n, d]) with n <= capacity; empty [0, 0] when nothing held."""
        if not self._items:
            return torch.zeros(0, 0), torch.zeros(0, 0)
        keys = torch.cat([k for k, _ in self._items])
        values = torch.cat([v for _, v in self._items])
        if keys.shape[0] > self.capacity:
            keep = torch.randperm(keys.shape[0], generator=self.generator)[:self.capacity]
            keep = keep.sort().values.to(keys.device)
            keys, values = keys[keep], values[keep]
        return keys, values

    def clear(self) -> None:
        self._items.clear()

    def state(self) -> dict:
        """Everything needed to continue exactly after a restart (for checkpoints)."""
        return {"keys": [k for k, _ in self._items], "values": [v for _, v in self._items],
                "generator": self.generator.get_state()}

    def load_state(self, state: dict) -> None:
        """Restore what `state()` returned."""
        self._items.clear()
        self._items.extend(zip(state["keys"], state["values"]))
        self.generator.set_state(state["generator"])

    @property
    def iterations(self) -> int:
        return len(self._items)

    def __len__(self) -> int:
        return sum(k.shape[0] for k, _ in self._items)
