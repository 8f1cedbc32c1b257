"""FSGR semantic encoder modules on cached CLIP features (see DESIGN.md section 2).

Pipeline: ``PatchEmbedding`` -> ``SemanticQuantizer`` (language-bridged map) ->
``CrossModalInteraction`` (patch queries attend to the fixed bridged map, with 2-D sine positions
and a relative-geometry attention bias). ``FsgrEncoder`` composes them. Everything is sized from
constructor arguments; the patch grid ``(rows, cols)`` is passed to ``forward``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shared.models.full_precision import full_precision

Grid = tuple[int, int]


def _check_grid(grid: Grid, n_patches: int) -> None:
    rows, cols = grid
    if rows * cols != n_patches:
        raise ValueError(f"grid {rows}x{cols} does not match {n_patches} patches")


class PatchEmbedding(nn.Module):
    """[patch ; pooled image embedding] -> Linear -> CELU -> Dropout -> LayerNorm."""

    def __init__(self, clip_width: int, embed_dim: int, d_model: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.proj = nn.Linear(clip_width + embed_dim, d_model)
        self.act = nn.CELU()
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, patch_tokens: Tensor, image_embed: Tensor) -> Tensor:
        """patch_tokens [B, P, W], image_embed [B, E] -> [B, P, d_model]."""
        pooled = image_embed.unsqueeze(1).expand(-1, patch_tokens.shape[1], -1)
        x = self.proj(torch.cat([patch_tokens, pooled], dim=-1))
        return self.norm(self.dropout(self.act(x)))


@dataclass
class QuantizerOutput:
    """Result of ``SemanticQuantizer``; indices refer to the full concept vocabulary."""

    bridged_map: Tensor  # [B, P, E], unit rows
    codebook_index: Tensor  # [B, P] long: the assignment used (Gumbel sample in training)
    topk_ids: Tensor  # [B, k] long
    patch_concept_logits: Tensor  # [B, P, k]
    pseudo_labels: Tensor  # [B, P] long
    argmax_index: Tensor  # [B, P] long: the eval (argmax) assignment, = codebook_index in eval


def _cosines(patches: Tensor, concepts: Tensor) -> Tensor:
    """[B, P, E] x [B, k, E] unit rows -> [B, P, k] cosines, in full precision."""
    return full_precision(torch.einsum, "bpe,bke->bpk", patches, concepts)


class SemanticQuantizer(nn.Module):
    """Language-bridged map: assign every patch to one of the image's top-k CLIP text concepts.

    ``visual_proj`` [W, E] (CLIP visual projection) and the concept codebook [C, E] (CLIP text
    embeddings, L2-normalised here) are frozen buffers. Logits are
    ``scale * cos(normalize(patch @ visual_proj + adapter(patch_embedding)), concept_k)``.
    ``scale`` is the CLIP model's own logit scale (``clip_model.logit_scale.exp()``: 100 for
    OpenAI's weights), as FSGR does; ``logit_scale`` holds its log, as in CLIP. It is a frozen
    buffer, or with ``learn_logit_scale`` a parameter initialised there (clamped at
    ``max(100, logit_scale)`` like CLIP's). The zero-initialised ``adapter`` is the only other
    parameter. Training uses a hard straight-through Gumbel-softmax (tau ``gumbel_tau``), eval a
    plain argmax one-hot: with a small scale the Gumbel noise dominates and training would see a
    nearly random map while eval uses the argmax one.
    Checkpoints of either kind (and older ones, whose ``logit_scale`` was a parameter) load into
    both: the saved value replaces the constructor's.
    """

    def __init__(self, d_model: int, visual_proj: Tensor, concept_embeddings: Tensor | None = None,
                 top_k: int = 20, gumbel_tau: float = 1.0, logit_scale: float = 100.0,
                 learn_logit_scale: bool = False) -> None:
        super().__init__()
        if not math.isfinite(logit_scale) or logit_scale <= 0:
            raise ValueError(f"logit_scale must be a positive number, got {logit_scale}")
        self.top_k = top_k
        self.gumbel_tau = gumbel_tau
        self.register_buffer("visual_proj", visual_proj.detach().clone().float())
        embed_dim = visual_proj.shape[1]
        self.register_buffer("concept_embeddings", torch.empty(0, embed_dim))
        if concept_embeddings is not None:
            self.set_codebook(concept_embeddings)
        self.adapter = nn.Linear(d_model, embed_dim)
        nn.init.zeros_(self.adapter.weight)
        nn.init.zeros_(self.adapter.bias)
        log_scale = torch.tensor(math.log(logit_scale))
        self.learn_logit_scale = learn_logit_scale
        self.max_log_scale = max(math.log(100.0), float(log_scale))
        if learn_logit_scale:
            self.logit_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("logit_scale", log_scale)

    @property
    def scale(self) -> Tensor:
        """The multiplier of the patch-concept cosines (a 0-d tensor)."""
        if self.learn_logit_scale:
            return self.logit_scale.clamp(max=self.max_log_scale).exp()
        return self.logit_scale.exp()

    def set_codebook(self, concept_embeddings: Tensor) -> None:
        """Install a [C, E] concept codebook (L2-normalised, frozen)."""
        if concept_embeddings.ndim != 2 or concept_embeddings.shape[1] != self.visual_proj.shape[1]:
            raise ValueError(f"codebook must be [C, {self.visual_proj.shape[1]}], "
                             f"got {tuple(concept_embeddings.shape)}")
        self.concept_embeddings = F.normalize(concept_embeddings.detach().to(
            self.visual_proj), dim=-1)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:
        # A checkpoint's codebook may have another size than the current (e.g. empty) one.
        saved = state_dict.get(prefix + "concept_embeddings")
        if saved is not None:
            self.concept_embeddings = torch.empty_like(saved, device=self.visual_proj.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, patch_tokens: Tensor, image_embed: Tensor,
                patch_embedding: Tensor) -> QuantizerOutput:
        """patch_tokens [B, P, W], image_embed [B, E], patch_embedding [B, P, d_model]."""
        codebook = self.concept_embeddings
        if codebook.shape[0] == 0:
            raise RuntimeError("SemanticQuantizer has no codebook; call set_codebook first")
        k = min(self.top_k, codebook.shape[0])
        # Similarities, projections and the selection below run in full precision (outside
        # autocast): top-k concepts, pseudo-labels and assignments do not depend on bf16/fp16.
        image_sim = full_precision(torch.matmul, F.normalize(image_embed, dim=-1),
                                   codebook.T)  # [B, C]
        topk_ids = image_sim.topk(k, dim=-1).indices  # [B, k]
        concept_k = codebook[topk_ids]  # [B, k, E]

        patch_proj = full_precision(torch.matmul, patch_tokens, self.visual_proj)  # [B, P, E]
        # Pseudo-labels come from frozen CLIP alone so the contrastive targets do not drift
        # with the adapter (identical to the eval assignment while the adapter is still zero).
        with torch.no_grad():
            clip_cos = _cosines(F.normalize(patch_proj, dim=-1), concept_k)
            pseudo_labels = topk_ids.gather(1, clip_cos.argmax(-1))

        adapted = full_precision(F.linear, patch_embedding, self.adapter.weight, self.adapter.bias)
        query = F.normalize(patch_proj + adapted, dim=-1)
        logits = self.scale.float() * _cosines(query, concept_k)  # [B, P, k]
        best = logits.detach().argmax(-1)
        if self.training:
            assignment = F.gumbel_softmax(logits, tau=self.gumbel_tau, hard=True)
        else:
            assignment = F.one_hot(best, k).to(logits.dtype)
        bridged_map = F.normalize(full_precision(torch.matmul, assignment, concept_k),
                                  dim=-1)  # [B, P, E]
        codebook_index = topk_ids.gather(1, assignment.detach().argmax(-1))
        return QuantizerOutput(bridged_map, codebook_index, topk_ids, logits, pseudo_labels,
                               topk_ids.gather(1, best))


class SinePositionEmbedding2D(nn.Module):
    """DETR-style 2-D sine/cosine position embedding: grid (rows, cols) -> [rows*cols, d_model].

    The first half of the channels encodes the row, the second half the column; coordinates are
    normalised to (0, 2*pi] so the embedding does not depend on the absolute grid size.
    """

    def __init__(self, d_model: int, temperature: float = 10000.0) -> None:
        super().__init__()
        if d_model % 4:
            raise ValueError(f"d_model must be divisible by 4, got {d_model}")
        self.d_model = d_model
        self.temperature = temperature
        self._cache: dict[Grid, Tensor] = {}

    def _build(self, grid: Grid) -> Tensor:
        rows, cols = grid
        n_feats = self.d_model // 2
        dim_t = self.temperature ** (2 * (torch.arange(n_feats) // 2) / n_feats)

        def encode(coord: Tensor, extent: int) -> Tensor:
            pos = (coord + 1) / extent * 2 * math.pi / dim_t  # [n, n_feats]
            return torch.stack([pos[:, 0::2].sin(), pos[:, 1::2].cos()], dim=-1).flatten(1)

        y = encode(torch.arange(rows, dtype=torch.float64)[:, None], rows)  # [rows, d/2]
        x = encode(torch.arange(cols, dtype=torch.float64)[:, None], cols)  # [cols, d/2]
        pos = torch.cat([y[:, None].expand(-1, cols, -1), x[None].expand(rows, -1, -1)], dim=-1)
        return pos.reshape(rows * cols, self.d_model).float()

    def forward(self, grid: Grid, device: torch.device | None = None,
                dtype: torch.dtype | None = None) -> Tensor:
        grid = (int(grid[0]), int(grid[1]))
        if grid not in self._cache:
            self._cache[grid] = self._build(grid)
        return self._cache[grid].to(device=device, dtype=dtype)


class RelativeGeometryBias(nn.Module):
    """Additive attention bias [n_heads, P, P] from pairwise relative patch offsets (dy, dx).

    Offsets are log-scaled (``sign(d) * log1p(|d|)``) and mapped by an MLP (2 -> hidden -> heads).
    The MLP runs once per distinct offset and is gathered into the P x P table, so equal offsets
    give exactly equal biases. The offset tables are cached per grid size.
    """

    def __init__(self, n_heads: int, hidden: int = 64) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, n_heads))
        self._cache: dict[Grid, tuple[Tensor, Tensor]] = {}

    @staticmethod
    def _offsets(grid: Grid) -> tuple[Tensor, Tensor]:
        rows, cols = grid
        r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
        r, c = r.flatten(), c.flatten()
        dy = r[:, None] - r[None, :] + rows - 1  # in [0, 2*rows-2]
        dx = c[:, None] - c[None, :] + cols - 1
        index = dy * (2 * cols - 1) + dx  # [P, P] into the distinct-offset table
        oy, ox = torch.meshgrid(torch.arange(-(rows - 1), rows), torch.arange(-(cols - 1), cols),
                                indexing="ij")
        table = torch.stack([oy.flatten(), ox.flatten()], dim=-1).float()
        return table.sign() * table.abs().log1p(), index

    def forward(self, grid: Grid, device: torch.device | None = None) -> Tensor:
        grid = (int(grid[0]), int(grid[1]))
        if grid not in self._cache:
            self._cache[grid] = self._offsets(grid)
        table, index = (t.to(device) for t in self._cache[grid])
        weight = self.mlp[0].weight
        bias = self.mlp(table.to(weight.dtype))  # [U, n_heads]
        return bias[index].permute(2, 0, 1)  # [n_heads, P, P]


class CrossModalLayer(nn.Module):
    """Post-norm layer: cross-attention (patch queries -> bridged-map keys/values) + FFN."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float = 0.1) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} not divisible by n_heads {n_heads}")
        self.n_heads = n_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(nn.Linear(d_model, d_ff), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(d_ff, d_model))
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def _heads(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.n_heads, d // self.n_heads).transpose(1, 2)

    def forward(self, x: Tensor, memory: Tensor, query_pos: Tensor, key_pos: Tensor,
                attn_bias: Tensor) -> Tensor:
        """x [B, P, d], memory [B, M, d], positions [P|M, d], attn_bias [heads, P, M]."""
        q = self._heads(self.q_proj(x + query_pos))
        k = self._heads(self.k_proj(memory + key_pos))
        v = self._heads(self.v_proj(memory))
        mask = attn_bias.to(q.dtype).unsqueeze(0).expand(x.shape[0], -1, -1, -1)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        attn = self.out_proj(attn.transpose(1, 2).reshape_as(x))
        x = self.norm1(x + self.dropout(attn))
        return self.norm2(x + self.dropout(self.ffn(x)))


class CrossModalInteraction(nn.Module):
    """Stack of ``CrossModalLayer``; keys/values = embedded bridged map, fixed across layers."""

    def __init__(self, n_layers: int, d_model: int, n_heads: int, d_ff: int, dropout: float,
                 embed_dim: int) -> None:
        super().__init__()
        self.map_embed = nn.Sequential(nn.Linear(embed_dim, d_model), nn.LayerNorm(d_model))
        self.position = SinePositionEmbedding2D(d_model)
        self.geometry = RelativeGeometryBias(n_heads)
        self.layers = nn.ModuleList(CrossModalLayer(d_model, n_heads, d_ff, dropout)
                                    for _ in range(n_layers))

    def forward(self, visual: Tensor, bridged_map: Tensor, grid: Grid) -> Tensor:
        """visual [B, P, d_model], bridged_map [B, P, E] -> V~ [B, P, d_model]."""
        _check_grid(grid, visual.shape[1])
        memory = self.map_embed(bridged_map)
        pos = self.position(grid, device=visual.device, dtype=visual.dtype)
        bias = self.geometry(grid, device=visual.device)
        x = visual
        for layer in self.layers:
            x = layer(x, memory, pos, pos, bias)
        return x


def supervised_contrastive_loss(features: Tensor, labels: Tensor, temperature: float = 0.07,
                                max_anchors: int = 4096,
                                generator: torch.Generator | None = None) -> Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, L_out) over features [N, D], labels [N].

    Features are L2-normalised in float32, similarities computed in full precision (outside
    autocast: in bf16 the logits ``cos / 0.07`` would be off by ~1e-2) and divided by
    ``temperature``; each anchor's denominator runs over all other samples, its positives are
    the others with the same label.
    Anchors without positives are ignored; the result is the mean over the remaining anchors
    (a zero that still carries a graph when there are none).

    Memory: the similarity matrix is [A, N]. When N > ``max_anchors``, A = ``max_anchors``
    anchors are drawn uniformly without replacement (``torch.randperm`` with ``generator``, or
    the global RNG), while every sample still serves as positive/negative. So the loss is an
    unbiased-in-anchors estimate of the full one at about A * N * 4 bytes per matrix.
    """
    n = features.shape[0]
    feats = F.normalize(features.float(), dim=-1)
    labels = labels.reshape(-1).to(feats.device)
    if n > max_anchors:
        gen_device = generator.device if generator is not None else torch.device("cpu")
        anchors = torch.randperm(n, generator=generator, device=gen_device)[:max_anchors]
        anchors = anchors.to(feats.device)
    else:
        anchors = torch.arange(n, device=feats.device)
    logits = full_precision(torch.matmul, feats[anchors], feats.T) / temperature  # [A, N]
    is_self = torch.zeros_like(logits, dtype=torch.bool)
    is_self[torch.arange(len(anchors), device=feats.device), anchors] = True
    positives = (labels[anchors, None] == labels[None, :]) & ~is_self
    log_prob = logits - logits.masked_fill(is_self, float("-inf")).logsumexp(-1, keepdim=True)
    n_pos = positives.sum(-1)
    valid = n_pos > 0
    if not valid.any():
        return features.sum() * 0.0
    mean_pos = torch.where(positives, log_prob, 0.0).sum(-1)[valid] / n_pos[valid]
    return -mean_pos.mean()


@dataclass
class FsgrOutput:
    """Result of ``FsgrEncoder``; indices refer to the full concept vocabulary."""

    features: Tensor  # V~ [B, P, d_model]
    codebook_index: Tensor  # [B, P] long
    topk_ids: Tensor  # [B, k] long
    patch_embeddings: Tensor  # [B, P, d_model], input of the local contrastive loss
    pseudo_labels: Tensor  # [B, P] long
    bridged_map: Tensor  # [B, P, E]
    argmax_index: Tensor | None = None  # [B, P] long: eval assignment (= codebook_index in eval)


class FsgrEncoder(nn.Module):
    """PatchEmbedding -> SemanticQuantizer -> CrossModalInteraction on cached CLIP features."""

    def __init__(self, clip_width: int, embed_dim: int, d_model: int, n_layers: int, n_heads: int,
                 d_ff: int, dropout: float, top_k: int, gumbel_tau: float, visual_proj: Tensor,
                 concept_embeddings: Tensor | None = None, logit_scale: float = 100.0,
                 learn_logit_scale: bool = False) -> None:
        super().__init__()
        if tuple(visual_proj.shape) != (clip_width, embed_dim):
            raise ValueError(f"visual_proj must be [{clip_width}, {embed_dim}], "
                             f"got {tuple(visual_proj.shape)}")
        self.patch_embedding = PatchEmbedding(clip_width, embed_dim, d_model, dropout)
        self.quantizer = SemanticQuantizer(d_model, visual_proj, concept_embeddings, top_k,
                                           gumbel_tau, logit_scale, learn_logit_scale)
        self.interaction = CrossModalInteraction(n_layers, d_model, n_heads, d_ff, dropout,
                                                 embed_dim)

    def forward(self, patch_tokens: Tensor, image_embed: Tensor, grid: Grid) -> FsgrOutput:
        """patch_tokens [B, P, W], image_embed [B, E] (any float dtype), grid (rows, cols)."""
        _check_grid(grid, patch_tokens.shape[1])
        dtype = self.patch_embedding.proj.weight.dtype
        patch_tokens, image_embed = patch_tokens.to(dtype), image_embed.to(dtype)
        patches = self.patch_embedding(patch_tokens, image_embed)
        q = self.quantizer(patch_tokens, image_embed, patches)
        features = self.interaction(patches, q.bridged_map, grid)
        return FsgrOutput(features, q.codebook_index, q.topk_ids, patches, q.pseudo_labels,
                          q.bridged_map, q.argmax_index)

    @staticmethod
    def contrastive_loss(output: FsgrOutput, temperature: float = 0.07, max_anchors: int = 4096,
                         generator: torch.Generator | None = None) -> Tensor:
        """Local SupCon loss over all patches of the batch, positives = same pseudo-label."""
        d = output.patch_embeddings.shape[-1]
        return supervised_contrastive_loss(output.patch_embeddings.reshape(-1, d),
                                           output.pseudo_labels.reshape(-1), temperature,
                                           max_anchors, generator)


def usage_summary(counts: np.ndarray) -> dict[str, float | int]:
    """Concepts used (count > 0), patches counted, and the entropy (bits) of the usage."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    share = counts[counts > 0] / max(total, 1.0)
    return {"codebook_used": int((counts > 0).sum()), "codebook_patches": int(total),
            "codebook_entropy_bits": float(abs((share * np.log2(share)).sum()))}
