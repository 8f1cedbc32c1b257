"""Beam-search captions for every readable image of a split, read from the feature cache."""

from __future__ import annotations

import torch
from tqdm import tqdm

from shared.cache_batches import CacheBatches, caption_samples
from shared.config import Config
from shared.devices import autocast
from shared.feature_store import FeatureStore
from shared.karpathy import ImageRecord
from shared.models.decoding import beam_search
from shared.stages import visual_array, visual_stage
from evaluate.checkpoint import TrainedDecoder


def decode_records(config: Config, trained: TrainedDecoder, records: list[ImageRecord],
                   device: torch.device, progress: bool = True) -> dict[int, str]:
    """image id -> caption (beam `eval.beam_size`, at most `eval.max_length` words) of every
    record whose features are in the cache; images that failed extraction are left out."""
    store_path, array = visual_stage(config).output, visual_array(config)
    with FeatureStore.open(store_path) as store:
        store_ids, valid = store.read("image_ids"), store.read("valid")
    samples = caption_samples(store_ids, valid, records, trained.vocab,
                              config.data.max_caption_words, per_image=1)
    batches = CacheBatches(store_path, [array], samples, config.eval.batch_size, shuffle=False)
    vocab, captions = trained.vocab, {}
    with tqdm(total=len(samples), desc=f"decode {config.eval.split}", unit="img",
              disable=not progress) as bar:
        for batch in batches.epoch(0):
            with autocast(device, config.train.precision):
                result = beam_search(trained.decoder, batch[array].to(device), vocab.bos_id,
                                     vocab.eos_id, config.eval.beam_size, config.eval.max_length)
            for row, ids in zip(batch["rows"].tolist(), result.best.tolist()):
                captions[int(store_ids[row])] = vocab.decode(ids)
            bar.update(len(batch["rows"]))
    return captions
