"""`evaluate caption`: caption raw image files end to end with a finished run.

CLIP -> (FSGR) -> decoder with beam search, the same models and numeric path as the cached
pipeline: features are rounded to `store.dtype` as the cache stores them, so an image of the
dataset gets the caption `evaluate score` gave it. Unreadable files are reported, not fatal.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from evaluate.checkpoint import load_trained_decoder
from extract.fsgr_fit import load_fsgr
from shared.clip_model import create_clip, encode_images
from shared.config import Config
from shared.devices import autocast, resolve_device
from shared.images import ImageError, load_rgb
from shared.models.beam_search import beam_search

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass
class CaptionResult:
    """The caption of one file, or why it has none."""

    path: Path
    caption: str | None = None
    error: str | None = None


def image_files(paths: list[Path]) -> list[Path]:
    """Files named directly (whatever their suffix) plus image files found under folders."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*")
                                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            files.append(path)
    return files


class ImageCaptioner:
    """The run's CLIP, FSGR encoder (for `decoder.visual_input = "fsgr"`) and decoder."""

    def __init__(self, config: Config) -> None:
        self.config, self.device = config, resolve_device(config.clip.device)
        self.trained = load_trained_decoder(config, self.device)
        self.clip = create_clip(config.clip.model, config.clip.pretrained, self.device,
                                patch_attention=config.clip.patch_attention)
        self.fsgr = None
        if self.trained.visual_input == "fsgr":
            self.fsgr, self.meta = load_fsgr(config, self.device)
            if self.meta.clip_model != config.clip.model:
                raise RuntimeError(f"the FSGR modules were fitted on CLIP '{self.meta.clip_model}'"
                                   f" but clip.model is '{config.clip.model}'")

    def caption(self, paths: list[Path], batch_size: int = 32) -> Iterator[CaptionResult]:
        """Results in the order of `image_files(paths)`."""
        files = image_files(paths)
        for start in range(0, len(files), batch_size):
            batch, results = [], []
            for path in files[start:start + batch_size]:
                result = CaptionResult(path)
                try:
                    image = load_rgb(path, target_size=self.clip.image_size)
                    batch.append(self.clip.preprocess(image))
                except ImageError as err:
                    result.error = str(err)
                except Exception as err:  # any undecodable file is reported, not fatal
                    result.error = f"{type(err).__name__}: {err}"
                results.append(result)
            if batch:
                captions = iter(self._captions(torch.stack(batch)))
                for result in results:
                    if result.error is None:
                        result.caption = next(captions)
            yield from results

    @torch.no_grad()
    def _captions(self, pixels: torch.Tensor) -> list[str]:
        config, device, vocab = self.config, self.device, self.trained.vocab
        with autocast(device, config.clip.precision):
            pooled, tokens = encode_images(self.clip, pixels.to(device))
        pooled, tokens = (self._as_cached(x) for x in (pooled, tokens))
        visual = tokens
        if self.fsgr is not None:
            with autocast(device, config.clip.precision):
                visual = self.fsgr(tokens, pooled, self.meta.grid).features
            visual = self._as_cached(visual)
        with autocast(device, config.train.precision):
            result = beam_search(self.trained.decoder, visual, vocab.bos_id, vocab.eos_id,
                                 config.eval.beam_size, config.eval.max_length)
        return [vocab.decode(ids) for ids in result.best.tolist()]

    def _as_cached(self, values: torch.Tensor) -> torch.Tensor:
        """Round to `store.dtype` as the feature cache does, back to float32."""
        rounded = values.float().cpu().numpy().astype(np.dtype(self.config.store.dtype))
        return torch.from_numpy(rounded.astype(np.float32)).to(self.device)
