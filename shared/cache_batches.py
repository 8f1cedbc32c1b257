"""Streaming (image, caption) batches from a row-chunked feature store.

One sample per (image, caption), as in the field, and memory that does not grow with the
dataset. A shuffled epoch is cut into caption passes: each image's captions are put in a
random order, and pass p holds the p-th of them of every image (5 passes for COCO's 5
captions). Each pass reads the chunks in its own random order, one at a time; their samples
(one per image) go through a bounded shuffle buffer from which batches are drawn at random,
and a background thread prefetches batches. So a batch almost never holds two captions of one
image (only around a pass boundary, while the buffer still holds the previous pass), and an
image's captions are spread over the whole epoch, one per pass, instead of landing in the same
few consecutive batches. The price is that every chunk is read once per pass rather than once
per epoch (the same number of feature rows as the batches carry).

The order (chunk reads and the batches drawn after each) is a pure function of (seed, epoch,
shard), computed up front by `epoch_schedule` without touching the features, so a resumed run
sees the same batches and the order can be checked at full dataset scale.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
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


# -- the order of an epoch (no features needed) ------------------------------------------------

@dataclass
class EpochSchedule:
    """One shard's epoch: `steps[i]` = (chunk, sample ids read from it, batches of sample ids
    yielded after that read); the last step reads nothing (chunk -1) and flushes the buffer."""

    steps: list[tuple[int, np.ndarray, list[np.ndarray]]]

    def batches(self) -> list[np.ndarray]:
        return [ids for _, _, batches in self.steps for ids in batches]

    def __len__(self) -> int:
        return sum(len(batches) for _, _, batches in self.steps)


def caption_passes(rows: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Sample ids split into passes: each image's (= store row's) samples in a random order,
    pass p holding the p-th of every image that has more than p. No image is twice in a pass."""
    n = len(rows)
    if n == 0:
        return []
    order = np.lexsort((rng.random(n), rows))  # by row, random within a row
    sorted_rows = rows[order]
    first = np.r_[True, sorted_rows[1:] != sorted_rows[:-1]]
    group_start = np.maximum.accumulate(np.where(first, np.arange(n), 0))
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n) - group_start
    by_pass = np.argsort(rank, kind="stable")
    counts = np.bincount(rank)
    return np.split(by_pass, np.cumsum(counts)[:-1])


def chunk_reads(sample_ids: np.ndarray, rows: np.ndarray, rows_per_chunk: int,
                rng: np.random.Generator | None) -> list[tuple[int, np.ndarray]]:
    """`sample_ids` grouped by the chunk holding their rows (ids in their given order within a
    chunk): (chunk, ids) in chunk order, or in a random order drawn with `rng`."""
    chunk_of = rows[sample_ids] // rows_per_chunk
    order = np.argsort(chunk_of, kind="stable")
    chunks, starts = np.unique(chunk_of[order], return_index=True)
    groups = np.split(sample_ids[order], starts[1:])
    plan = list(zip(chunks.tolist(), groups))
    if rng is not None:
        plan = [plan[i] for i in rng.permutation(len(plan))]
    return plan


def _take(buffer: list[int], count: int, rng: np.random.Generator | None) -> np.ndarray:
    """Remove `count` sample ids from `buffer`: random ones (swap-remove keeps this
    O(count)), or the oldest ones without `rng`."""
    count = min(count, len(buffer))
    if rng is None:
        items = buffer[:count]
        del buffer[:count]
        return np.asarray(items, np.int64)
    picks = sorted(rng.choice(len(buffer), size=count, replace=False).tolist(), reverse=True)
    items = [buffer[i] for i in picks]
    for i in picks:
        buffer[i] = buffer[-1]
        buffer.pop()
    return np.asarray(items, np.int64)


def epoch_schedule(rows: np.ndarray, rows_per_chunk: int, batch_size: int, buffer_size: int,
                   seed: int, epoch: int, shuffle: bool = True,
                   shard: tuple[int, int] = (0, 1)) -> EpochSchedule:
    """The reads and batches `CacheBatches` streams for samples whose store rows are `rows`.

    Shuffled: caption passes (`caption_passes`), each pass's chunks in a random order, the
    reads of all passes dealt to the shards round-robin (a chunk's samples of a pass all go to
    one shard), then one shuffle buffer of `buffer_size` samples across the whole epoch, from
    which batches are drawn at random. Not shuffled: every sample once, chunk by chunk in
    store order, in the order given. Only the last batch of an epoch can be short. Depends on
    nothing but the arguments."""
    rank, world = shard
    rng = np.random.default_rng([seed, epoch])
    rows = np.asarray(rows, np.int64)
    passes = caption_passes(rows, rng) if shuffle else [np.arange(len(rows))]
    reads: list[tuple[int, np.ndarray]] = []
    for pass_ids in passes:  # every shard draws the same plan before its own batches
        reads += chunk_reads(pass_ids, rows, rows_per_chunk, rng if shuffle else None)
    reads = reads[rank::world]  # dealt across passes: shards differ by one read at most
    draw = rng if shuffle else None
    buffer_size = max(buffer_size, batch_size)
    buffer: list[int] = []
    steps: list[tuple[int, np.ndarray, list[np.ndarray]]] = []
    for chunk, ids in reads:
        buffer.extend(ids.tolist())
        batches = []
        while len(buffer) >= buffer_size:
            batches.append(_take(buffer, batch_size, draw))
        steps.append((chunk, ids, batches))
    tail = []
    while buffer:
        tail.append(_take(buffer, batch_size, draw))
    steps.append((-1, np.zeros(0, np.int64), tail))
    return EpochSchedule(steps)


# -- streaming the features ----------------------------------------------------------------------

class CacheBatches:
    """Batches `{"sample_ids", "rows", "tokens", <array>: tensor}` of the given store arrays,
    in the order of `epoch_schedule`. Held in memory: the features of up to `shuffle_buffer`
    samples plus a chunk, `read_ahead` chunks being read and `prefetch` finished batches."""

    def __init__(self, store_path: Path, arrays: list[str], samples: CaptionSamples,
                 batch_size: int, shuffle: bool = True, seed: int = 0,
                 shuffle_buffer: int = 2048, prefetch: int = 4,
                 shard: tuple[int, int] = (0, 1), read_ahead: int = 4) -> None:
        self.store_path, self.arrays, self.samples = Path(store_path), arrays, samples
        self.rank, self.world = shard
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.shuffle_buffer, self.prefetch = max(shuffle_buffer, batch_size), prefetch
        self.read_ahead = max(1, read_ahead)
        with FeatureStore.open(self.store_path) as store:
            self.rows_per_chunk = store.rows_per_chunk
        self._cached: tuple[int, EpochSchedule] | None = None

    def __len__(self) -> int:
        return self.n_batches(0)

    def schedule(self, epoch: int) -> EpochSchedule:
        """This shard's reads and batches in `epoch` (the last one is kept)."""
        cached = self._cached
        if cached is not None and cached[0] == epoch:
            return cached[1]
        schedule = epoch_schedule(self.samples.rows, self.rows_per_chunk, self.batch_size,
                                  self.shuffle_buffer, self.seed, epoch, self.shuffle,
                                  (self.rank, self.world))
        self._cached = (epoch, schedule)
        return schedule

    def n_batches(self, epoch: int) -> int:
        """Batches this shard yields in `epoch` (shards differ by one chunk read at most)."""
        return len(self.schedule(epoch))

    def _generate(self, schedule: EpochSchedule) -> Iterator[dict[str, torch.Tensor]]:
        # The features of held samples live in preallocated slots, one per store row read
        # (shared by that row's samples of the read): at most buffer - 1 held samples plus one
        # chunk's rows, so memory is bounded and no row is allocated on its own. The next
        # `read_ahead` chunks are read by other threads meanwhile (a read mostly waits: on the
        # file and on hand-offs between threads, which a busy machine makes long).
        n_slots = self.shuffle_buffer + self.rows_per_chunk
        slot_of: dict[int, int] = {}  # held sample id -> slot
        users = np.zeros(n_slots, np.int64)  # held samples per slot
        free = list(range(n_slots - 1, -1, -1))  # low slots first, reused first
        reads = iter([(chunk, ids) for chunk, ids, _ in schedule.steps if len(ids)])
        with FeatureStore.open(self.store_path) as store, \
                ThreadPoolExecutor(self.read_ahead) as reader:
            pool = {name: np.empty((n_slots, *store.array(name).shape[1:]),
                                   store.array(name).dtype) for name in self.arrays}

            def read(chunk: int, ids: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
                start, _ = store.chunk_rows(chunk)
                local = self.samples.rows[ids] - start
                low, high = int(local.min()), int(local.max()) + 1
                return ({name: store.read(name, start + low, start + high)
                         for name in self.arrays}, local - low)

            def read_next() -> None:
                following = next(reads, None)
                if following is not None:
                    pending.append(reader.submit(read, *following))

            pending: deque[Future] = deque()
            for _ in range(self.read_ahead):
                read_next()
            for _, ids, batches in schedule.steps:
                if len(ids):
                    data, local = pending.popleft().result()
                    read_next()
                    slot_of_row: dict[int, int] = {}
                    for s, r in zip(ids.tolist(), local.tolist()):
                        slot = slot_of_row.get(r)
                        if slot is None:
                            slot = slot_of_row[r] = free.pop()
                            for name, values in data.items():
                                pool[name][slot] = values[r]
                        slot_of[s] = slot
                        users[slot] += 1
                    del data
                for batch_ids in batches:
                    slots = np.array([slot_of.pop(s) for s in batch_ids.tolist()], np.int64)
                    batch = {"sample_ids": torch.from_numpy(batch_ids.copy()),
                             "rows": torch.from_numpy(self.samples.rows[batch_ids]),
                             "tokens": torch.from_numpy(self.samples.tokens[batch_ids])}
                    for name in self.arrays:
                        batch[name] = torch.from_numpy(pool[name][slots])  # a copy
                    np.subtract.at(users, slots, 1)
                    free.extend(np.unique(slots[users[slots] == 0]).tolist())
                    yield batch

    def epoch(self, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        """The batches of one epoch, prefetched by a background thread."""
        schedule = self.schedule(epoch)
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
                for batch in self._generate(schedule):
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
