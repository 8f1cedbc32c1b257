"""One factory for CLIP models: open_clip names (incl. the repo's own model configs) + weights.

`pretrained` is an open_clip tag (e.g. "openai", downloaded by open_clip on first use), a path
to a local checkpoint file (state dict, loaded with `weights_only=True`), or "" for random
weights. The demo's tiny CLIP goes through exactly the same path as a user's ViT-L/14.

`patch_attention = "csa"` (config `clip.patch_attention`) takes the patch tokens of the last
transformer block from correlative self-attention (SCLIP, Wang et al. 2023), computed from the
same frozen weights; see `correlative_attention`. The pooled image embedding stays standard.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock

MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
PATCH_ATTENTIONS = ("standard", "csa")
_registered = False


class CheckpointError(RuntimeError):
    """Weights that cannot be found or loaded; the message names the file or tag."""


@dataclass
class ClipBundle:
    """A CLIP model with its eval preprocessing and tokenizer, plus the dimensions we cache."""

    name: str
    model: torch.nn.Module
    preprocess: Callable[[Any], torch.Tensor]
    tokenizer: Callable[..., torch.Tensor]
    patch_attention: str = "standard"  # "csa": see `encode_images`

    @property
    def grid_size(self) -> tuple[int, int]:
        """Patch grid (rows, cols) derived from the vision tower."""
        grid = self.model.visual.grid_size
        return (int(grid[0]), int(grid[1])) if isinstance(grid, (tuple, list)) else (grid, grid)

    @property
    def n_patches(self) -> int:
        rows, cols = self.grid_size
        return rows * cols

    @property
    def width(self) -> int:
        """Width of the patch tokens (after ln_post, before projection)."""
        return int(self.model.visual.ln_post.normalized_shape[0])

    @property
    def embed_dim(self) -> int:
        """Width of the joint image/text embedding space."""
        return int(self.model.visual.output_dim)

    @property
    def image_size(self) -> int:
        size = self.model.visual.image_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)


def register_model_configs() -> None:
    """Make the JSON model configs kept in `shared/model_configs/` known to open_clip."""
    global _registered
    if not _registered:
        open_clip.add_model_config(MODEL_CONFIG_DIR)
        _registered = True


def repo_model_config(model_name: str) -> Path | None:
    """The JSON config of a model defined in this repository (None for open_clip's own)."""
    path = MODEL_CONFIG_DIR / f"{model_name}.json"
    return path if path.is_file() else None


def is_checkpoint_path(pretrained: str) -> bool:
    """True when `pretrained` names a file rather than an open_clip tag."""
    return bool(pretrained) and (pretrained.endswith(_CHECKPOINT_SUFFIXES) or "/" in pretrained
                                 or Path(pretrained).exists())


def create_clip(model_name: str, pretrained: str = "", device: str | torch.device = "cpu",
                patch_attention: str = "standard") -> ClipBundle:
    """Build an open_clip model in eval mode, with its preprocessing and tokenizer.

    `patch_attention` ("standard" | "csa", config `clip.patch_attention`) is what
    `encode_images` computes the patch tokens with; "csa" is checked against the model here.
    """
    if patch_attention not in PATCH_ATTENTIONS:
        raise ValueError(f"clip.patch_attention must be one of {PATCH_ATTENTIONS}, "
                         f"not {patch_attention!r}")
    register_model_configs()
    if model_name not in open_clip.list_models():
        raise CheckpointError(f"unknown CLIP model '{model_name}' (clip.model); see "
                              f"open_clip.list_models() or {MODEL_CONFIG_DIR}")
    if is_checkpoint_path(pretrained) and not Path(pretrained).is_file():
        raise CheckpointError(f"CLIP checkpoint not found: {pretrained} (clip.pretrained)")
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=pretrained or None, device=device, weights_only=True)
    except (RuntimeError, OSError, ValueError) as err:
        where = "file" if is_checkpoint_path(pretrained) else "open_clip tag"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"could not load CLIP weights '{pretrained}' ({where}) for {model_name}: {first}. "
            "Offline, set clip.pretrained to a local checkpoint file.") from err
    model.eval()
    if patch_attention == "csa":
        check_csa_supported(model.visual, model_name)
    return ClipBundle(model_name, model, preprocess, open_clip.get_tokenizer(model_name),
                      patch_attention)


def save_clip_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Save a plain state dict that `create_clip(name, pretrained=path)` loads back."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(path)


@torch.no_grad()
def encode_images(bundle: ClipBundle, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(pooled image embedding [B, E], patch tokens [B, P, W] after ln_post, without CLS).

    With `bundle.patch_attention == "csa"` the patch tokens are those of the last block run with
    correlative self-attention (`csa_block`); the pooled embedding is still the standard
    forward's, bit for bit (the tower runs unchanged, a hook on its last block reads the block's
    input and computes the CSA branch beside it, so the blocks before it run once).
    """
    visual = bundle.model.visual
    if bundle.patch_attention == "csa":
        return _encode_csa(visual, images)
    previous = visual.output_tokens
    visual.output_tokens = True
    try:
        pooled, tokens = visual(images)
    finally:
        visual.output_tokens = previous
    return pooled, tokens


def check_csa_supported(visual: torch.nn.Module, model_name: str = "") -> None:
    """CSA needs an open_clip VisionTransformer whose last block is a standard
    `ResidualAttentionBlock` (one `nn.MultiheadAttention` with packed q/k/v weights) and whose
    tokens are not re-mixed by an attentional pooler; say which part is missing otherwise."""
    what = f"CLIP model '{model_name}'" if model_name else "this CLIP model"
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if not blocks or not hasattr(visual, "ln_post") or not hasattr(visual, "_global_pool"):
        raise ValueError(f"clip.patch_attention = 'csa' needs a ViT image tower; {what} has "
                         f"{type(visual).__name__}")
    last = blocks[-1]
    attn = getattr(last, "attn", None)
    if (not isinstance(last, ResidualAttentionBlock) or hasattr(last, "ln_1_kv")
            or not isinstance(attn, torch.nn.MultiheadAttention)
            or not attn._qkv_same_embed_dim):
        raise ValueError(f"clip.patch_attention = 'csa' needs standard attention blocks "
                         f"(nn.MultiheadAttention); the last block of {what} is "
                         f"{type(last).__name__}")
    if getattr(visual, "attn_pool", None) is not None:
        raise ValueError(f"clip.patch_attention = 'csa' is not defined for {what}: its patch "
                         "tokens come from an attentional pooler")


def correlative_attention(attn: torch.nn.MultiheadAttention, x: torch.Tensor) -> torch.Tensor:
    """SCLIP's correlative self-attention with the frozen weights of `attn`; x [B, L, D].

    Per head, with q, k, v the packed input projections of x (in_proj_weight / in_proj_bias)
    and s = head_dim ** -0.5 (the block's own scale):
        out = (softmax(s q q^T) + softmax(s k k^T)) v,
    heads concatenated, then out_proj. The two maps are softmaxed separately and added, not
    renormalised (each row sums to 2), as in SCLIP's released code. Computed as two
    scaled-dot-product attentions with shared values (q attending q, k attending k), which
    is the same by linearity. No attention dropout (the model is frozen and in eval mode).
    """
    batch, length, width = x.shape
    heads = attn.num_heads
    q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (t.reshape(batch, length, heads, width // heads).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, q, v) + F.scaled_dot_product_attention(k, k, v)
    return attn.out_proj(out.transpose(1, 2).reshape(batch, length, width))


def csa_block(block: ResidualAttentionBlock, x: torch.Tensor) -> torch.Tensor:
    """The last block with its attention replaced by `correlative_attention`; x [B, L, D].

    Which parts of SCLIP this follows (its `clip/model.py`, VisionTransformer.forward with
    csa=True and custom_attn): CSA over all tokens, the class token included, in the last
    block only, with that block's ln_1, packed q/k/v projection and out_proj; the block's
    residual connection and its FFN (ln_2, mlp) are KEPT, as SCLIP's released code does
    (x + csa(ln_1(x)), then + mlp(ln_2(.))); ClearCLIP-style removal of the residual/FFN is
    not done. open_clip's LayerScale (ls_1 / ls_2, identity for CLIP weights) is applied where
    the standard block applies it. Not followed: SCLIP's sliding-window inference, positional
    embedding interpolation and PAMR (segmentation-specific). Afterwards the tokens go through
    the tower's own post-processing (`_tokens_after_pool`), as standard tokens do.
    """
    x = x + block.ls_1(correlative_attention(block.attn, block.ln_1(x)))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def _tokens_after_pool(visual: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The patch tokens open_clip's VisionTransformer returns for final sequence x [B, L, D]
    (no attentional pooler): ln_post then the pool's token split, or the split alone when
    `final_ln_after_pool` (then open_clip normalises only the pooled vector)."""
    if getattr(visual, "final_ln_after_pool", False):
        return visual._global_pool(x)[1]
    return visual._global_pool(visual.ln_post(x))[1]


def _encode_csa(visual: torch.nn.Module, images: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Standard forward for the pooled embedding + the CSA branch of the last block."""
    last = visual.transformer.resblocks[-1]
    batch_first = last.attn.batch_first
    branch: list[torch.Tensor] = []

    def run_csa(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
        x = args[0] if batch_first else args[0].transpose(0, 1)  # -> [B, L, D]
        branch.append(csa_block(module, x))

    handle = last.register_forward_hook(run_csa)
    try:
        pooled = visual(images)
    finally:
        handle.remove()
    if isinstance(pooled, tuple):  # output_tokens set by a caller
        pooled = pooled[0]
    return pooled, _tokens_after_pool(visual, branch[0])
