"""`cluster features`: K-Means prototypes of the visual feature cache (for `memory.cross`).

Reads the cache the decoder reads (`decoder.visual_input`: `features/fsgr.*` array `features`,
or `features/clip.*` array `patch_tokens`), never all at once: the candidate vectors are the
patch vectors of the *training* images (train + restval of the Karpathy json) whose row is
valid, so val/test features never shape the model. At most `cluster.max_points` of them are
drawn uniformly without replacement (seeded by `cluster.seed`) and gathered chunk by chunk.
K-Means with `memory.n_cross_prototypes` centroids writes `prototypes/features.npz`:
`centroids` [m, d_visual] float32, `source` ("fsgr" | "clip"), `array`, `n_points`,
`n_candidates`, `inertia`, `empty_clusters`.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from tqdm import tqdm

from shared.atomic_files import write_npz_atomic
from shared.config import Config
from shared.feature_store import FeatureStore
from shared.karpathy import load_karpathy
from shared.manifest import require_current
from shared.prototypes import kmeans, subsample_rows, use_gpu_for
from shared.stage_runner import StageResult, StageRun, run_stage
from shared.stages import cluster_features_stage, visual_array, visual_stage


def train_rows(store: FeatureStore, config: Config) -> np.ndarray:
    """Sorted store rows of valid training images (train + restval)."""
    records = load_karpathy(config.data.karpathy_json, config.data.image_root)
    train_ids = np.array([r.image_id for r in records if r.split == "train"], np.int64)
    ids, valid = store.read("image_ids"), store.read("valid").astype(bool)
    return np.flatnonzero(valid & np.isin(ids, train_ids)).astype(np.int64)


def sample_patch_vectors(store: FeatureStore, array: str, rows: np.ndarray, cap: int, seed: int,
                         progress: bool = True) -> tuple[np.ndarray, int]:
    """A uniform sample of at most `cap` patch vectors of `rows`, streamed chunk by chunk.

    Returns (vectors [n, d] float32, number of candidate vectors).
    """
    shape = store.array(array).shape
    if len(shape) != 3:
        raise ValueError(f"{store.path}: array '{array}' must be [N, P, d], got {shape}")
    n_patches, dim = shape[1], shape[2]
    n_candidates = len(rows) * n_patches
    chosen = subsample_rows(n_candidates, cap, seed)
    store_rows, patches = rows[chosen // n_patches], chosen % n_patches
    chunk_of = store_rows // store.rows_per_chunk
    chunks, starts = np.unique(chunk_of, return_index=True)
    bounds = [*starts.tolist(), len(chosen)]
    out = np.empty((len(chosen), dim), np.float32)
    for i, chunk in enumerate(tqdm(chunks.tolist(), desc="cluster features", unit="chunk",
                                   disable=not progress)):
        start, stop = store.chunk_rows(chunk)
        block = store.read(array, start, stop)
        lo, hi = bounds[i], bounds[i + 1]
        out[lo:hi] = block[store_rows[lo:hi] - start, patches[lo:hi]]
    if not np.isfinite(out).all():
        raise ValueError(f"{store.path}: array '{array}' holds NaN or infinite values")
    return out, n_candidates


def cluster_features(config: Config, force: bool = False, progress: bool = True) -> StageResult:
    """Build (or skip) `prototypes/features.npz`."""
    require_current(visual_stage(config), config)
    return run_stage(cluster_features_stage(config), config,
                     lambda run: _cluster(run, progress), force=force)


def _cluster(run: StageRun, progress: bool) -> dict[str, Any]:
    config, source, output = run.config, visual_stage(run.config), run.spec.output
    array, m = visual_array(config), config.memory.n_cross_prototypes
    run.say(run.reason)
    started = time.perf_counter()
    with FeatureStore.open(source.output) as store:
        rows = train_rows(store, config)
        if len(rows) == 0:
            raise ValueError(f"{source.output}: no valid training images to cluster "
                             f"(data.karpathy_json {config.data.karpathy_json})")
        points, n_candidates = sample_patch_vectors(store, array, rows, config.cluster.max_points,
                                                    config.cluster.seed, progress)
    read_s = time.perf_counter() - started
    if len(points) < m:
        raise ValueError(f"memory.n_cross_prototypes={m} is more than the {len(points)} patch "
                         f"vectors available ({len(rows)} train images in {source.output})")
    result = kmeans(points, m, config.cluster.n_iter, config.cluster.seed,
                    use_gpu_for(config.cluster.device))
    write_npz_atomic(output, {
        "centroids": result.centroids, "source": np.array(config.decoder.visual_input),
        "array": np.array(array), "n_points": np.int64(len(points)),
        "n_candidates": np.int64(n_candidates), "inertia": np.float64(result.inertia),
        "empty_clusters": np.int64(result.empty_clusters)}, durable=True)
    run.say(f"{m} prototypes of {len(points)}/{n_candidates} {config.decoder.visual_input} "
            f"patch vectors ({len(rows)} train images, d={points.shape[1]}) in {read_s:.1f}s "
            f"read + {result.seconds:.1f}s k-means; sample inertia {result.inertia:.4g}, "
            f"{result.empty_clusters} empty clusters -> {output}")
    return {"source": config.decoder.visual_input, "array": array, "k": m,
            "dim": int(points.shape[1]), "n_points": len(points),
            "n_candidates": n_candidates, "n_images": len(rows),
            "inertia": result.inertia, "empty_clusters": result.empty_clusters,
            "read_seconds": round(read_s, 3), "kmeans_seconds": round(result.seconds, 3)}
