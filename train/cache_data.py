"""What a decoder trains and validates on, for cross-entropy and SCST alike: the rows of the
visual cache, the vocabulary and the Karpathy splits, and the per-epoch validation over them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from shared.cache_batches import CacheBatches, CaptionSamples, caption_samples
from shared.config import Config
from shared.devices import autocast
from shared.feature_store import FeatureStore
from shared.karpathy import ImageRecord, load_karpathy, split_records
from shared.models.caption_decoder import CaptionDecoder
from shared.stages import visual_array, visual_stage, vocab_stage
from shared.validation import validation_scores
from shared.vocabulary import Vocabulary


@dataclass
class TrainingCache:
    """The visual cache of `decoder.visual_input` (path, array, row ids and validity, token
    width), the vocabulary and the Karpathy records of a run."""

    store_path: Path
    array: str
    image_ids: np.ndarray
    valid: np.ndarray
    d_visual: int
    vocab: Vocabulary
    records: list[ImageRecord]
    max_words: int

    @classmethod
    def open(cls, config: Config) -> TrainingCache:
        """Read the ids, validity and width of the run's visual cache, and its vocabulary."""
        store_path, array = visual_stage(config).output, visual_array(config)
        with FeatureStore.open(store_path) as store:
            image_ids, valid = store.read("image_ids"), store.read("valid")
            d_visual = int(store.array(array).shape[-1])
        return cls(store_path, array, image_ids, valid, d_visual,
                   Vocabulary.load(vocab_stage(config).output),
                   load_karpathy(config.data.karpathy_json, config.data.image_root),
                   config.data.max_caption_words)

    def samples(self, split: str, per_image: int | None = None) -> CaptionSamples:
        """(row, caption) samples of `split`'s readable images: every caption, or the first
        `per_image` of each image."""
        return caption_samples(self.image_ids, self.valid, split_records(self.records, split),
                               self.vocab, self.max_words, per_image=per_image)

    def batches(self, samples: CaptionSamples, batch_size: int, **kwargs) -> CacheBatches:
        """Streaming batches of `samples` from the visual array (`CacheBatches` options)."""
        return CacheBatches(self.store_path, [self.array], samples, batch_size, **kwargs)


def make_validator(decoder: CaptionDecoder, cache: TrainingCache, config: Config,
                   device: torch.device) -> Callable[[], dict[str, float]]:
    """`validate()`: val loss over every val caption and greedy CIDEr-D over the val images
    (`shared.validation.validation_scores`), with the decoder in whatever mode it is in."""
    val_samples = cache.samples("val")
    if len(val_samples) == 0:
        raise ValueError(f"no readable val images in {cache.store_path}")
    batch_size = config.train.batch_size
    captions = cache.batches(val_samples, batch_size, shuffle=False)
    images = cache.batches(cache.samples("val", per_image=1), batch_size, shuffle=False)
    references = {r.image_id: list(r.captions) for r in split_records(cache.records, "val")}
    array, vocab = cache.array, cache.vocab

    def logits_of(batch: dict[str, torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
        with autocast(device, config.train.precision):
            return decoder(batch[array].to(device), tokens[:, :-1])

    def words_of(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with autocast(device, config.train.precision):
            return decoder.greedy(batch[array].to(device), vocab.bos_id, vocab.eos_id,
                                  config.eval.max_length)

    def validate() -> dict[str, float]:
        return validation_scores(captions, images, logits_of, words_of, references,
                                 cache.image_ids, vocab, device)

    return validate
