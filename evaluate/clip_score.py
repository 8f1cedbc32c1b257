"""Reference-free CLIPScore and RefCLIPScore (Hessel et al., 2021) with the run's own CLIP.

CLIP-S(c, v) = 2.5 * max(cos(E_v, E_c), 0), with the candidate prefixed by "A photo depicts"
as in the paper; RefCLIP-S = harmonic mean of CLIP-S and max(max_r cos(E_c, E_r), 0) over the
references r. Image embeddings are the pooled CLIP embeddings already in the CLIP cache, so
no image is read again. Scores are only comparable between runs that use the same CLIP model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from shared.clip_model import ClipBundle

PREFIX = "A photo depicts "
WEIGHT = 2.5


@dataclass
class ClipScores:
    """Per-image CLIP-S and RefCLIP-S (aligned with the inputs) and their means."""

    clip_s: np.ndarray
    ref_clip_s: np.ndarray

    @property
    def corpus(self) -> dict[str, float]:
        return {"CLIP-S": float(self.clip_s.mean()), "RefCLIP-S": float(self.ref_clip_s.mean())}


@torch.no_grad()
def encode_texts(bundle: ClipBundle, texts: list[str], device: torch.device,
                 batch_size: int = 256) -> torch.Tensor:
    """Unit-norm CLIP text embeddings [n, E] of `texts` (each prefixed with PREFIX)."""
    out = []
    for start in range(0, len(texts), batch_size):
        tokens = bundle.tokenizer([PREFIX + t for t in texts[start:start + batch_size]])
        out.append(F.normalize(bundle.model.encode_text(tokens.to(device)).float(), dim=-1))
    return torch.cat(out) if out else torch.zeros(0, bundle.embed_dim)


def clip_scores(bundle: ClipBundle, image_embeds: np.ndarray, captions: list[str],
                references: list[list[str]], device: torch.device) -> ClipScores:
    """CLIP-S and RefCLIP-S of `captions[i]` for the image with pooled embedding
    `image_embeds[i]` and references `references[i]`."""
    images = F.normalize(torch.from_numpy(np.asarray(image_embeds, np.float32)).to(device), dim=-1)
    candidates = encode_texts(bundle, captions, device)
    clip_s = WEIGHT * (images * candidates).sum(-1).clamp(min=0)
    flat = [r for refs in references for r in refs]
    owner = torch.tensor([i for i, refs in enumerate(references) for _ in refs], device=device)
    ref_cos = (encode_texts(bundle, flat, device) * candidates[owner]).sum(-1)
    best = torch.full((len(captions),), -1.0, device=device).scatter_reduce(
        0, owner, ref_cos, reduce="amax").clamp(min=0)
    ref_clip_s = torch.where(clip_s + best > 0, 2 * clip_s * best / (clip_s + best),
                             torch.zeros_like(best))
    return ClipScores(clip_s.cpu().numpy().astype(np.float64),
                      ref_clip_s.cpu().numpy().astype(np.float64))
