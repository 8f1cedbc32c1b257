"""Streaming (image, caption) batches from a row-chunked feature store.

One sample per (image, caption), as in the field. Memory does not grow with the dataset: chunks
are read one at a time in shuffled order, their samples pass through a bounded shuffle buffer,
and a background thread prefetches batches. The order is a pure function of (seed, epoch), so
a resumed run sees the same batches.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from shared.feature_store import FeatureStore
from shared.karpathy import ImageRecord
from shared.vocabulary import Vocabulary


@dataclass
class CaptionSamples:
    """Store row and padded token ids (`<bos> .. <eos>`, 0-padded) of every sample."""

    rows: np.ndarray
    tokens: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)


def caption_samples(store_ids: np.ndarray, store_valid: np.ndarray,
                    records: list[ImageRecord], vocab: Vocabulary, max_words: int,
                    per_image: int | None = None,
                    pick: np.random.Generator | None = None) -> CaptionSamples:
    """Samples of `records` (skipping images that failed extraction): every caption, or
    `per_image` captions per image (the first ones, or random ones drawn with `pick`)."""
    row_of = {int(i): r for r, i in enumerate(store_ids) if store_valid[r]}
    rows, token_lists = [], []
    for record in records:
        row = row_of.get(record.image_id)
        if row is None:
            continue
        chosen = record.tokens[:per_image] if pick is None else [
            record.tokens[i] for i in pick.permutation(len(record.tokens))[:per_image]]
        for tokens in chosen:
            rows.append(row)
            token_lists.append(vocab.encode(tokens, max_words=max_words))
    padded = np.zeros((len(token_lists), max_words + 2), np.int64)
    for i, ids in enumerate(token_lists):
        padded[i, :len(ids)] = ids
    return CaptionSamples(np.asarray(rows, np.int64), padded)


class CacheBatches:
    """Batches `{"rows", "tokens", <array>: tensor}` of the given store arrays."""

    def __init__(self, store_path: Path, arrays: list[str], samples: CaptionSamples,
                 batch_size: int, shuffle: bool = True, seed: int = 0,
                 shuffle_buffer: int = 2048, prefetch: int = 4,
                 shard: tuple[int, int] = (0, 1)) -> None:
        self.store_path, self.arrays, self.samples = Path(store_path), arrays, samples
        self.rank, self.world = shard
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.shuffle_buffer, self.prefetch = max(shuffle_buffer, batch_size), prefetch
        with FeatureStore.open(self.store_path) as store:
            self.rows_per_chunk = store.rows_per_chunk

    def __len__(self) -> int:
        return self.n_batches(0)

    def _chunk_plan(self, rng: np.random.Generator) -> list[tuple[int, np.ndarray]]:
        chunk_of = self.samples.rows // self.rows_per_chunk
        order = np.argsort(chunk_of, kind="stable")
        chunks, starts = np.unique(chunk_of[order], return_index=True)
        groups = np.split(order, starts[1:])
        plan = list(zip(chunks.tolist(), groups))
        if self.shuffle:
            plan = [plan[i] for i in rng.permutation(len(plan))]
        return plan[self.rank::self.world]

    def n_batches(self, epoch: int) -> int:
        """Batches this shard yields in `epoch` (shards may differ by a chunk)."""
        plan = self._chunk_plan(np.random.default_rng([self.seed, epoch]))
        return -(-sum(len(ids) for _, ids in plan) // self.batch_size)

    def _generate(self, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        rng = np.random.default_rng([self.seed, epoch])
        buffer: list[tuple[int, dict[str, np.ndarray]]] = []
        with FeatureStore.open(self.store_path) as store:
            for chunk, sample_ids in self._chunk_plan(rng):
                start, stop = store.chunk_rows(chunk)
                data = {name: store.read(name, start, stop) for name in self.arrays}
                rows: dict[int, dict[str, np.ndarray]] = {}
                for s in sample_ids.tolist():
                    local = int(self.samples.rows[s]) - start
                    if local not in rows:  # a copy per image, so the chunk can be freed
                        rows[local] = {n: v[local].copy() for n, v in data.items()}
                    buffer.append((s, rows[local]))
                del data, rows
                while len(buffer) >= self.shuffle_buffer:
                    yield self._take(buffer, rng)
        while buffer:
            yield self._take(buffer, rng)

    def _take(self, buffer: list, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        count = min(self.batch_size, len(buffer))
        if self.shuffle:
            picks = sorted(rng.choice(len(buffer), size=count, replace=False).tolist(),
                           reverse=True)
            items = [buffer[i] for i in picks]
            for i in picks:  # swap-remove keeps this O(batch)
                buffer[i] = buffer[-1]
                buffer.pop()
        else:
            items, buffer[:count] = buffer[:count], []
        ids = np.array([s for s, _ in items])
        batch = {"sample_ids": torch.from_numpy(ids),
                 "rows": torch.from_numpy(self.samples.rows[ids]),
                 "tokens": torch.from_numpy(self.samples.tokens[ids])}
        for name in self.arrays:
            batch[name] = torch.from_numpy(np.stack([row[name] for _, row in items]))
        return batch

    def epoch(self, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        """The batches of one epoch, prefetched by a background thread."""
        out: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        done = object()

        def put(item: object) -> bool:
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def work() -> None:
            try:
                for batch in self._generate(epoch):
                    if not put(batch):
                        return
                put(done)
            except BaseException as err:  # surfaced in the consumer thread
                put(err)

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        try:
            while (item := out.get()) is not done:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            thread.join(timeout=5)
