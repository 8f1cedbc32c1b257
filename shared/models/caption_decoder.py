"""Transformer caption decoder on cached visual tokens, with optional prototype memory.

Visual tokens of any width are projected (Linear + LayerNorm) to d_model, optionally refined by
`n_enc_layers` standard encoder layers, then attended by `n_dec_layers` decoder layers of
[masked self-attention, cross-attention, FFN] (post-norm, as in M2 / FSGR).

Memory (DESIGN.md §2, off by default): `self_memory` puts PMA-Net's `PrototypeMemoryAttention`
in every self-attention slot (same parameter names as `MultiHeadAttention`); `cross_memory`
appends feature prototypes to the encoded visual tokens (`CrossMemory`). Prototypes are
buffers, so they are saved with the weights and used by `greedy` as in training.

Precision: under autocast (bf16/fp16) the output head (`logits`) still runs in float32 (or
wider), so vocabulary logits are never bf16; `greedy` (validation) and `beam_search` run with
autocast off altogether and give exactly the captions of fp32 mode. Every decoding strategy
(greedy, sampling, beam search) is in `shared.models.decoding`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from shared.models import decoding
from shared.models.full_precision import full_precision
from shared.models.memory_attention import CrossMemory, MultiHeadAttention, \
    PrototypeMemoryAttention

__all__ = ["CaptionDecoder", "DecodeState", "DecoderDims", "DecoderLayer", "EncoderLayer",
           "FeedForward", "LayerCache",
           "MultiHeadAttention", "caption_loss", "sinusoid_table"]


@dataclass(frozen=True)
class DecoderDims:
    """Sizes of a caption decoder."""

    d_visual: int
    vocab_size: int
    d_model: int = 512
    n_heads: int = 8
    n_enc_layers: int = 0
    n_dec_layers: int = 3
    d_ff: int = 2048
    dropout: float = 0.1
    max_len: int = 64
    self_memory: bool = False
    cross_memory: bool = False


class FeedForward(nn.Module):
    def __init__(self, d_model: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_model, d_ff), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(d_ff, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class EncoderLayer(nn.Module):
    """Self-attention + FFN over visual tokens (post-norm)."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.attn = MultiHeadAttention(d_model, n_heads)
        self.ffn = FeedForward(d_model, d_ff, dropout)
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
        x = self.norm1(x + self.drop(self.attn(x, x, x, allowed)))
        return self.norm2(x + self.drop(self.ffn(x)))


class DecoderLayer(nn.Module):
    """Masked self-attention, cross-attention to visual tokens, FFN (post-norm)."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float,
                 self_memory: bool = False) -> None:
        super().__init__()
        attention = PrototypeMemoryAttention if self_memory else MultiHeadAttention
        self.self_attn = attention(d_model, n_heads)
        self.cross_attn = MultiHeadAttention(d_model, n_heads)
        self.ffn = FeedForward(d_model, d_ff, dropout)
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(d_model) for _ in range(3))
        self.drop = nn.Dropout(dropout)

    def forward(self, words: torch.Tensor, visual: torch.Tensor, causal: torch.Tensor,
                visual_allowed: torch.Tensor | None, word_valid: torch.Tensor | None = None
                ) -> torch.Tensor:
        """`word_valid` [B, L] (True = non-padding) is only used by memory recording."""
        extra = {"key_valid": word_valid} \
            if isinstance(self.self_attn, PrototypeMemoryAttention) else {}
        words = self.norm1(words + self.drop(self.self_attn(words, words, words, causal,
                                                            **extra)))
        words = self.norm2(words + self.drop(self.cross_attn(words, visual, visual,
                                                             visual_allowed)))
        return self.norm3(words + self.drop(self.ffn(words)))

    def start(self, visual: torch.Tensor, visual_allowed: torch.Tensor | None,
              group: int) -> LayerCache:
        """Cache of this layer for incremental decoding of `group` rows per image: the visual
        keys/values projected once per image."""
        empty = visual.new_zeros(visual.shape[0] * group, 0, visual.shape[-1])
        attn = self.cross_attn
        return LayerCache(empty, empty, attn.k_proj(visual), attn.v_proj(visual), visual_allowed,
                          group)

    def step(self, word: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        """One new position [N, 1, d] given the cache of the previous ones (eval only)."""
        attn = self.self_attn
        cache.self_k = torch.cat([cache.self_k, attn.k_proj(word)], dim=1)
        cache.self_v = torch.cat([cache.self_v, attn.v_proj(word)], dim=1)
        word = self.norm1(word + attn.attend_step(attn.q_proj(word), cache.self_k, cache.self_v))
        cross, rows = self.cross_attn, word.shape[0]
        # the rows of one image are its queries: [images, group, d] against its visual keys
        query = cross.q_proj(word).view(rows // cache.group, cache.group, -1)
        seen = cross.attend(query, cache.cross_k, cache.cross_v, cache.cross_allowed)
        word = self.norm2(word + seen.view(rows, 1, -1))
        return self.norm3(word + self.ffn(word))


@dataclass
class LayerCache:
    """Incremental-decoding state of one decoder layer (rows = images x beams)."""

    self_k: torch.Tensor                  # [N, t, d] projected keys of the words so far
    self_v: torch.Tensor
    cross_k: torch.Tensor                 # [B, Lv, d] projected visual keys, one per image
    cross_v: torch.Tensor
    cross_allowed: torch.Tensor | None    # [B or 1, 1, 1, Lv]
    group: int = 1                        # rows per image: N = B * group

    def select(self, rows: torch.Tensor) -> None:
        """Reorder rows (beams); each row must stay within its image's group of rows."""
        self.self_k, self.self_v = self.self_k[rows], self.self_v[rows]


@dataclass
class DecodeState:
    """Incremental-decoding state of the whole decoder."""

    layers: list[LayerCache]
    length: int = 0

    def select(self, rows: torch.Tensor) -> None:
        for cache in self.layers:
            cache.select(rows)


def sinusoid_table(length: int, dim: int) -> torch.Tensor:
    """The Transformer's fixed sinusoidal position table [length, dim]."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2], table[:, 1::2] = torch.sin(position * freq), torch.cos(position * freq)
    return table


class CaptionDecoder(nn.Module):
    """Visual tokens + caption prefix -> next-word logits."""

    def __init__(self, dims: DecoderDims, pad_id: int = 0) -> None:
        super().__init__()
        self.dims, self.pad_id = dims, pad_id
        d = dims.d_model
        self.visual_in = nn.Sequential(nn.Linear(dims.d_visual, d), nn.LayerNorm(d))
        self.encoder = nn.ModuleList(EncoderLayer(d, dims.n_heads, dims.d_ff, dims.dropout)
                                     for _ in range(dims.n_enc_layers))
        self.word_embed = nn.Embedding(dims.vocab_size, d, padding_idx=pad_id)
        self.register_buffer("positions", sinusoid_table(dims.max_len, d), persistent=False)
        self.layers = nn.ModuleList(DecoderLayer(d, dims.n_heads, dims.d_ff, dims.dropout,
                                                 self_memory=dims.self_memory)
                                    for _ in range(dims.n_dec_layers))
        self.cross_memory = CrossMemory(dims.d_visual, d) if dims.cross_memory else None
        self.drop = nn.Dropout(dims.dropout)
        self.head = nn.Linear(d, dims.vocab_size, bias=False)

    def encode(self, visual: torch.Tensor, visual_valid: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Project (and refine) visual tokens; returns them and the cross-attention mask."""
        allowed = None if visual_valid is None else visual_valid[:, None, None, :]
        x = self.visual_in(visual.to(self.visual_in[0].weight.dtype))
        for layer in self.encoder:
            x = layer(x, allowed)
        if self.cross_memory is not None:
            x, allowed = self.cross_memory(x, allowed, self.visual_in)
        return x, allowed

    def decode(self, tokens: torch.Tensor, visual: torch.Tensor,
               visual_allowed: torch.Tensor | None) -> torch.Tensor:
        """Logits [B, L, V] for every prefix of `tokens` [B, L] given encoded visual tokens."""
        length = tokens.shape[1]
        if length > self.dims.max_len:
            raise ValueError(f"caption length {length} exceeds max_len {self.dims.max_len}")
        valid = tokens != self.pad_id
        causal = torch.ones(length, length, dtype=torch.bool, device=tokens.device).tril()
        causal = causal[None, None] & valid[:, None, None, :]
        causal = causal | torch.eye(length, dtype=torch.bool, device=tokens.device)
        words = self.drop(self.word_embed(tokens) + self.positions[:length])
        for layer in self.layers:
            words = layer(words, visual, causal, visual_allowed, valid)
        return self.logits(words)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The output head: vocabulary logits of decoder states [..., d_model], always in at
        least float32 (outside autocast), so decoding ranks words the same under bf16/fp16."""
        return full_precision(F.linear, hidden, self.head.weight, self.head.bias)

    def forward(self, visual: torch.Tensor, tokens: torch.Tensor,
                visual_valid: torch.Tensor | None = None) -> torch.Tensor:
        encoded, allowed = self.encode(visual, visual_valid)
        return self.decode(tokens, encoded, allowed)

    # -- incremental decoding (eval) ---------------------------------------------------------

    def start_decoding(self, visual: torch.Tensor, visual_allowed: torch.Tensor | None,
                       repeat: int = 1) -> DecodeState:
        """State for `step` from encoded visual tokens, with `repeat` rows per image (beams /
        samples; rows i*repeat .. (i+1)*repeat-1 belong to image i)."""
        return DecodeState([layer.start(visual, visual_allowed, repeat) for layer in self.layers])

    def step(self, words: torch.Tensor, state: DecodeState) -> torch.Tensor:
        """Next-word logits [N, V] (at least float32) after feeding `words` [N] at position
        `state.length`: the same numbers as `decode(prefix)[:, -1]` without recomputing the
        prefix."""
        if state.length >= self.dims.max_len:
            raise ValueError(f"caption length exceeds max_len {self.dims.max_len}")
        x = self.word_embed(words)[:, None] + self.positions[state.length]
        for layer, cache in zip(self.layers, state.layers):
            x = layer.step(x, cache)
        state.length += 1
        return self.logits(x[:, 0])

    # -- prototype memory -------------------------------------------------------------------

    def _memory_layers(self) -> list[PrototypeMemoryAttention]:
        if not self.dims.self_memory:
            raise RuntimeError("this decoder has no self-attention memory (self_memory=False)")
        return [layer.self_attn for layer in self.layers]

    def set_memory_prototypes(self, per_layer: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Install (M_K, M_V) [m, d_model] in every decoder layer (m may differ per layer)."""
        attns = self._memory_layers()
        if len(per_layer) != len(attns):
            raise ValueError(f"{len(per_layer)} prototype sets for {len(attns)} layers")
        for attn, (keys, values) in zip(attns, per_layer):
            attn.set_prototypes(keys, values)

    def memory_prototypes(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The installed (M_K, M_V) of every decoder layer (the buffers themselves)."""
        return [(attn.memory_keys, attn.memory_values) for attn in self._memory_layers()]

    def set_cross_prototypes(self, prototypes: torch.Tensor) -> None:
        """Install feature prototypes [m_c, d_visual] for cross-attention."""
        if self.cross_memory is None:
            raise RuntimeError("this decoder has no cross-attention memory (cross_memory=False)")
        self.cross_memory.set_prototypes(prototypes)

    def record_keys_values(self, flag: bool = True) -> None:
        """Switch recording of self-attention keys/values (for the memory banks) on or off."""
        for attn in self._memory_layers():
            attn.record = flag
            if not flag:
                attn.last_keys_values = None

    def recorded_keys_values(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per layer (K, V [B, L, d_model], non-padding mask [B, L]) of the last forward."""
        recorded = [attn.last_keys_values for attn in self._memory_layers()]
        if any(item is None for item in recorded):
            raise RuntimeError("nothing recorded: call record_keys_values(True) and run forward")
        return recorded

    def greedy(self, visual: torch.Tensor, bos_id: int, eos_id: int, max_len: int = 20
               ) -> torch.Tensor:
        """Greedy decoding (`shared.models.decoding.greedy`): word ids [B, <= max_len] (without
        <bos>), eos-padded. Runs with autocast off: under bf16/fp16 the same captions as in fp32
        mode."""
        return decoding.greedy(self, visual, bos_id, eos_id, max_len)


def caption_loss(logits: torch.Tensor, targets: torch.Tensor, pad_id: int = 0) -> torch.Tensor:
    """Cross-entropy over non-padding positions (`targets` are the tokens shifted by one)."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=pad_id)
