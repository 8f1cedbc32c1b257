"""Per-epoch validation shared by `extract fit` and `train`: val loss and greedy CIDEr-D."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from shared.cache_batches import CacheBatches
from shared.caption_metrics import cider_d
from shared.models.caption_decoder import caption_loss
from shared.vocabulary import Vocabulary

Batch = dict[str, torch.Tensor]


@torch.no_grad()
def validation_scores(captions: CacheBatches, images: CacheBatches,
                      logits_of: Callable[[Batch, torch.Tensor], torch.Tensor],
                      words_of: Callable[[Batch], torch.Tensor],
                      references: dict[int, list[str]], row_to_id: np.ndarray,
                      vocab: Vocabulary, device: torch.device) -> dict[str, float]:
    """Cross-entropy per token over every val caption, and CIDEr-D of greedy captions.

    `logits_of(batch, tokens)` gives next-word logits for `tokens[:, :-1]` (tokens already on
    `device`); `words_of(batch)` gives greedy word ids, one caption per image of `images`.
    The caller puts the model in eval mode.
    """
    total, count = 0.0, 0
    for batch in captions.epoch(0):
        tokens = batch["tokens"].to(device)
        n = int((tokens[:, 1:] != 0).sum())
        total += float(caption_loss(logits_of(batch, tokens).float(), tokens[:, 1:])) * n
        count += n
    candidates = {}
    for batch in images.epoch(0):
        for row, ids in zip(batch["rows"].tolist(), words_of(batch).tolist()):
            candidates[int(row_to_id[row])] = vocab.decode(ids)
    return {"val_loss": total / max(count, 1), "val_cider": cider_d(candidates, references)}
