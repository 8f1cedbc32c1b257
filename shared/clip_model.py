"""One factory for CLIP models: open_clip names (incl. the repo's own model configs) + weights.

`pretrained` is an open_clip tag (e.g. "openai", downloaded by open_clip on first use), a path
to a local checkpoint file (state dict, loaded with `weights_only=True`), or "" for random
weights. The demo's tiny CLIP goes through exactly the same path as a user's ViT-L/14.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import open_clip
import torch

MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
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


def create_clip(model_name: str, pretrained: str = "", device: str | torch.device = "cpu"
                ) -> ClipBundle:
    """Build an open_clip model in eval mode, with its preprocessing and tokenizer."""
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
    return ClipBundle(model_name, model, preprocess, open_clip.get_tokenizer(model_name))


def save_clip_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Save a plain state dict that `create_clip(name, pretrained=path)` loads back."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(path)


@torch.no_grad()
def encode_images(bundle: ClipBundle, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(pooled image embedding [B, E], patch tokens [B, P, W] after ln_post, without CLS)."""
    visual = bundle.model.visual
    previous = visual.output_tokens
    visual.output_tokens = True
    try:
        pooled, tokens = visual(images)
    finally:
        visual.output_tokens = previous
    return pooled, tokens
