"""Streaming batches: every sample once per epoch, reproducible order, shards partition it,
captions of one image spread over the epoch (checked at COCO scale on the order alone)."""

from __future__ import annotations

import numpy as np

from shared.cache_batches import CacheBatches, CaptionSamples, caption_passes, epoch_schedule
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
    # the reads of all caption passes are dealt together: shards differ by one read (<= 8 rows)
    assert max(map(len, parts)) - min(map(len, parts)) <= 8


def test_stream_follows_the_schedule_and_each_image_is_once_per_pass(tmp_path) -> None:
    samples = make_store(tmp_path / "s.zarr")
    batches = CacheBatches(tmp_path / "s.zarr", ["features"], samples, 10, seed=5,
                           shuffle_buffer=30)
    streamed = collect(batches, 4)
    planned = batches.schedule(4).batches()
    assert streamed == [int(s) for ids in planned for s in ids]
    # 3 captions per image: 3 passes of 50 images, each pass holding every image once
    passes = caption_passes(samples.rows, np.random.default_rng(0))
    assert [sorted(samples.rows[p].tolist()) for p in passes] == [list(range(50))] * 3


def test_images_with_more_captions_get_more_passes() -> None:
    rows = np.array([0, 0, 0, 0, 0, 0, 0, 1, 1, 2, 3, 3, 3, 3, 3])  # 7, 2, 1, 5 captions
    passes = caption_passes(rows, np.random.default_rng(1))
    assert [sorted(rows[p].tolist()) for p in passes] == \
        [[0, 1, 2, 3], [0, 1, 3], [0, 3], [0, 3], [0, 3], [0], [0]]
    assert sorted(np.concatenate(passes).tolist()) == list(range(len(rows)))


def same_image_pairs(batches: list[np.ndarray], rows: np.ndarray) -> float:
    """Mean number of pairs of samples of one image per batch."""
    batch_of = np.repeat(np.arange(len(batches)), [len(b) for b in batches])
    key = batch_of * (int(rows.max()) + 1) + rows[np.concatenate(batches)]
    _, counts = np.unique(key, return_counts=True)
    return float((counts * (counts - 1) // 2).sum()) / len(batches)


def test_coco_size_epoch_mixes_captions_of_an_image() -> None:
    """Karpathy COCO train (113,287 images x 5 captions), 64-row chunks, batch 50, the default
    2,048-sample buffer; only the order is computed. Chunk order + buffer alone put ~1.1 pairs
    of captions of one image into each batch (a global shuffle: ~0.01) and the 5 captions of an
    image into a few consecutive batches; caption passes spread them over the epoch."""
    n_images, per_image, batch = 113_287, 5, 50
    rows = np.repeat(np.arange(n_images, dtype=np.int64), per_image)
    schedule = epoch_schedule(rows, 64, batch, 2048, seed=0, epoch=3)
    batches = schedule.batches()
    assert len(batches) == -(-len(rows) // batch)
    order = np.concatenate(batches)
    assert np.array_equal(np.sort(order), np.arange(len(rows)))  # every sample once
    pairs = same_image_pairs(batches, rows)
    print(f"same-image pairs per batch: {pairs:.5f}")
    assert pairs <= 0.1
    # how far apart an image's captions are: batch index of each occurrence, per image
    batch_of = np.empty(len(rows), np.int64)
    batch_of[order] = np.repeat(np.arange(len(batches)), [len(b) for b in batches])
    per_image_batches = np.sort(batch_of.reshape(n_images, per_image), axis=1)
    gaps = np.diff(per_image_batches, axis=1)
    print(f"gap between an image's captions: median {np.median(gaps):.0f} batches, "
          f"< 100 batches: {(gaps < 100).mean():.4f}")
    assert (gaps < 100).mean() < 0.01 and np.median(gaps) > len(batches) / per_image / 2
    # consecutive batches share (almost) no image
    shared = [len(np.intersect1d(rows[a], rows[b])) for a, b in zip(batches, batches[1:])]
    assert np.mean(shared) < 0.05
    assert all(np.array_equal(a, b) for a, b in
               zip(batches, epoch_schedule(rows, 64, batch, 2048, seed=0, epoch=3).batches()))
