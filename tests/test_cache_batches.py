"""Streaming batches: every sample once per epoch, reproducible order, shards partition it."""

from __future__ import annotations

import numpy as np

from shared.cache_batches import CacheBatches, CaptionSamples
from shared.feature_store import ArraySpec, FeatureStore


def make_store(path, n_rows: int = 50) -> CaptionSamples:
    rows = np.arange(n_rows, dtype=np.float32)
    with FeatureStore.create(path, [ArraySpec("features", (3, 4), "float32")], n_rows, 8,
                             {}) as store:
        store.write_rows(0, {"features": np.broadcast_to(rows[:, None, None], (n_rows, 3, 4))})
    sample_rows = np.repeat(np.arange(n_rows), 3)  # three captions per image
    tokens = np.arange(len(sample_rows))[:, None].repeat(5, axis=1)
    return CaptionSamples(sample_rows.astype(np.int64), tokens.astype(np.int64))


def collect(batches: CacheBatches, epoch: int) -> list[int]:
    out = []
    for batch in batches.epoch(epoch):
        assert (batch["features"][:, 0, 0].numpy() == batch["rows"].numpy()).all()
        assert (batch["tokens"][:, 0] == batch["sample_ids"]).all()
        out.extend(batch["sample_ids"].tolist())
    return out


def test_epochs_cover_every_sample_once_in_a_reproducible_order(tmp_path) -> None:
    samples = make_store(tmp_path / "s.zarr")
    batches = CacheBatches(tmp_path / "s.zarr", ["features"], samples, 7, seed=3,
                           shuffle_buffer=20)
    first = collect(batches, 0)
    assert sorted(first) == list(range(150)) and first != sorted(first)
    assert collect(batches, 0) == first and collect(batches, 1) != first
    assert batches.n_batches(0) == len(list(batches.epoch(0))) == 22


def test_shards_partition_an_epoch(tmp_path) -> None:
    samples = make_store(tmp_path / "s.h5")
    parts = [collect(CacheBatches(tmp_path / "s.h5", ["features"], samples, 7, seed=3,
                                  shard=(rank, 3)), 2) for rank in range(3)]
    assert sorted(sum(parts, [])) == list(range(150))
    assert all(parts) and not set(parts[0]) & set(parts[1])
