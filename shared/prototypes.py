"""FAISS K-Means and k-NN for prototypes, plus the on-disk formats they travel in.

Used by `python -m cluster` (offline prototypes) and by the trainer (prototype refresh, bank
dumps). Everything is float32 numpy; FAISS runs on the GPU when it has one (`faiss-gpu`) and
`use_gpu` allows it, else on the CPU.

- `kmeans`: Lloyd iterations from an AFK-MC2 (k-means++-like) initialisation; deterministic for
  a seed on a given device and thread count. The training sample is explicit: FAISS's own
  sub-sampling (`max_points_per_centroid`, 256 by default, so silently k x 256 points) is set
  from `max_points` (at most `k * (max_points // k)` points, drawn by FAISS with the seed,
  then one Lloyd step over all points) or switched off (`max_points=None`: every point given
  is used); the final assignment, inertia and empty-cluster count are over *all* points given.
- `memory_prototypes`: PMA-Net's prototypes: K-Means on the keys gives M_K; each prototype
  value is the mean of the values whose keys are the `knn` nearest neighbours of its centroid.
- `prototype_count`: how many prototypes a bank gives, the ONE rule of `cluster activations`
  and the trainer's refreshes: min(memory.n_prototypes, keys in the bank), with a warning line
  naming `memory.n_prototypes` and the bank size when the bank is smaller (never silently
  fewer, never refused in one place and shrunk in the other); an empty bank is an error.
- GPU: with a FAISS GPU build, `use_gpu` None/True and `gpu_device=i` run on GPU i alone (a
  training rank's own GPU); `gpu_device=None` spreads over all visible GPUs.
- Bank dumps (`write_banks` / `read_banks`): `keys_<l>`, `values_<l>` [n, d] float16/32 and an
  int `n_layers`, one npz; memory prototypes (`write_memory_prototypes` /
  `read_memory_prototypes`) have the same layout with m rows per layer.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from shared.atomic_files import write_npz_atomic

INIT_METHOD = faiss.ClusteringInitMethod_AFK_MC2


@dataclass
class KMeansResult:
    """Centroids and how good they are (inertia and empty clusters from a final assignment of
    every point given, also when K-Means trained on a sample of `fit_points` of them)."""

    centroids: np.ndarray
    inertia: float
    empty_clusters: int
    seconds: float
    iterations: int = 0
    fit_points: int = 0
    fit_inertia: float = 0.0  # FAISS's objective on the training points, last iteration


@dataclass
class PrototypeStats:
    """Summary of one `memory_prototypes` run (JSON-able)."""

    n_points: int
    n_fit_points: int
    inertia: float
    empty_clusters: int
    mean_knn_distance: float
    seconds: float


@dataclass(frozen=True)
class PrototypeCount:
    """What a bank of keys gives: `prototypes` centroids, each value the mean over `knn`
    neighbours; `warning` is one line when that is fewer than the config asks for, else ''."""

    prototypes: int
    knn: int
    warning: str = ""


def prototype_count(bank_size: int, n_prototypes: int, knn: int, where: str) -> PrototypeCount:
    """The one rule for how many memory prototypes a bank of `bank_size` keys gives (used by
    `cluster activations` and by every trainer refresh, so both agree):

    - `memory.n_prototypes` when the bank has at least that many keys, else one per key
      (min of the two), with a warning naming `memory.n_prototypes`, the bank size and
      `where` (e.g. "layer 0 bank");
    - `memory.knn` likewise clipped to the bank (with a warning);
    - an empty bank (nothing to cluster) or a non-positive setting is a ValueError.
    """
    if n_prototypes < 1 or knn < 1:
        raise ValueError(f"memory.n_prototypes and memory.knn must be >= 1, got "
                         f"{n_prototypes} and {knn}")
    if bank_size < 1:
        raise ValueError(f"{where} has no keys: nothing to build memory prototypes from "
                         f"(memory.n_prototypes={n_prototypes})")
    count, neighbours = min(n_prototypes, bank_size), min(knn, bank_size)
    problems = []
    if count < n_prototypes:
        problems.append(f"{bank_size} keys, fewer than memory.n_prototypes={n_prototypes}: "
                        f"{count} prototypes built")
    if neighbours < knn:
        problems.append(f"memory.knn={knn} clipped to {neighbours}")
    warning = f"warning: {where}: {'; '.join(problems)}" if problems else ""
    return PrototypeCount(count, neighbours, warning)


def faiss_gpus(use_gpu: bool | None) -> int:
    """Number of GPUs FAISS should use: all visible for None/True, 0 for False.

    True without a FAISS GPU build or device is an error.
    """
    available = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if use_gpu and available == 0:
        raise RuntimeError("cluster.device is 'cuda' but FAISS sees no GPU (install faiss-gpu: "
                           "`make setup FAISS=gpu`)")
    return 0 if use_gpu is False else available


def use_gpu_for(device: str) -> bool | None:
    """`cluster.device` -> `use_gpu`: auto -> None (GPU if any), cpu -> False, cuda -> True."""
    return {"auto": None, "cpu": False, "cuda": True}[device]


_GPU_RESOURCES: dict[int, object] = {}


def _gpu_resources(device: int) -> object:
    """One `StandardGpuResources` per GPU for the process (its scratch memory is reused)."""
    if device not in _GPU_RESOURCES:
        _GPU_RESOURCES[device] = faiss.StandardGpuResources()
    return _GPU_RESOURCES[device]


def flat_l2_index(d: int, use_gpu: bool | None = None, gpu_device: int | None = None):
    """Exact L2 index of width d: on GPU `gpu_device` alone, on all visible GPUs
    (`gpu_device=None`), or on the CPU (no FAISS GPU, or `use_gpu=False`)."""
    gpus = faiss_gpus(use_gpu)
    if not gpus:
        return faiss.IndexFlatL2(d)
    if gpu_device is None:
        return faiss.index_cpu_to_all_gpus(faiss.IndexFlatL2(d), ngpu=gpus)
    if not 0 <= gpu_device < gpus:
        raise ValueError(f"FAISS sees {gpus} GPU(s); GPU {gpu_device} is not one of them")
    config = faiss.GpuIndexFlatConfig()
    config.device = int(gpu_device)
    return faiss.GpuIndexFlatL2(_gpu_resources(int(gpu_device)), d, config)


def _as_points(name: str, points: np.ndarray) -> np.ndarray:
    points = np.ascontiguousarray(points, dtype=np.float32)
    if points.ndim != 2:
        raise ValueError(f"{name} must be 2-D [n, d], got shape {points.shape}")
    if not np.isfinite(points).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return points


def fit_sample_size(n: int, k: int, max_points: int | None) -> tuple[int, int]:
    """(FAISS `max_points_per_centroid`, points K-Means trains on) for n points, k centroids.

    `max_points=None`: every point (FAISS's sub-sampling off); else FAISS keeps
    k * (max_points // k) <= max_points of them, drawn uniformly with the K-Means seed.
    """
    if max_points is None:
        per_centroid = max(1, -(-n // k))
    else:
        if max_points < k:
            raise ValueError(f"k-means needs max_points >= k: max_points={max_points} < k={k}")
        per_centroid = max_points // k
    return per_centroid, min(n, k * per_centroid)


def kmeans(points: np.ndarray, k: int, n_iter: int, seed: int, use_gpu: bool | None = None,
           init_centroids: np.ndarray | None = None, max_points: int | None = None,
           gpu_device: int | None = None) -> KMeansResult:
    """K-Means of `points` [n, d] into `k` centroids [k, d] float32 (needs n >= k).

    Trains on at most `max_points` of the points (FAISS's own uniform sub-sampling, see
    `fit_sample_size`; None: all). After training on a sample, one Lloyd step over every
    point (assign all, centroid = mean of its points) takes the sampling noise out of the
    centroids (it about halves the inertia the sample loses). Finally every point is assigned
    to report the inertia over all of them.
    """
    points = _as_points("k-means points", points)
    n, d = points.shape
    if k < 1:
        raise ValueError(f"k-means needs k >= 1, got k={k}")
    if n < k:
        raise ValueError(f"k-means needs at least as many points as centroids: "
                         f"{n} points < k={k}")
    per_centroid, fit_points = fit_sample_size(n, k, max_points)
    start = time.perf_counter()
    km = faiss.Kmeans(d, k, niter=n_iter, seed=seed, init_method=INIT_METHOD,
                      max_points_per_centroid=per_centroid, min_points_per_centroid=1,
                      verbose=False)
    km.index = flat_l2_index(d, use_gpu, gpu_device)
    if init_centroids is not None:
        km.train(points, init_centroids=_as_points("init_centroids", init_centroids))
    else:
        km.train(points)
    centroids = np.ascontiguousarray(km.centroids, dtype=np.float32)
    if fit_points < n:
        _, labels = km.index.search(points, 1)  # the index holds the trained centroids
        centroids = _cluster_means(points, labels[:, 0], centroids)
        km.index.reset()
        km.index.add(centroids)
    distances, labels = km.index.search(points, 1)
    seconds = time.perf_counter() - start
    counts = np.bincount(labels[:, 0], minlength=k)
    return KMeansResult(centroids,
                        float(distances.astype(np.float64).sum()),
                        int((counts == 0).sum()), seconds, len(km.obj), fit_points,
                        float(km.obj[-1]) if len(km.obj) else 0.0)


def _cluster_means(points: np.ndarray, labels: np.ndarray, centroids: np.ndarray
                   ) -> np.ndarray:
    """Mean of the points of each label (float32); a label without points keeps its centroid."""
    import torch  # summing rows by label without copying the points

    sums = torch.zeros(centroids.shape, dtype=torch.float32)
    sums.index_add_(0, torch.from_numpy(labels.astype(np.int64)), torch.from_numpy(points))
    counts = np.bincount(labels, minlength=len(centroids))
    means = sums.numpy() / np.maximum(counts, 1)[:, None].astype(np.float32)
    return np.ascontiguousarray(np.where(counts[:, None] > 0, means, centroids),
                                dtype=np.float32)


def knn_search(index_points: np.ndarray, queries: np.ndarray, k: int,
               use_gpu: bool | None = None, gpu_device: int | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """Exact L2 k-NN: squared distances [m, k] float32 and indices [m, k] int64, nearest first."""
    index_points = _as_points("k-NN index points", index_points)
    queries = _as_points("k-NN queries", queries)
    if index_points.shape[1] != queries.shape[1]:
        raise ValueError(f"k-NN dimension mismatch: index points have d={index_points.shape[1]}"
                         f", queries d={queries.shape[1]}")
    if not 1 <= k <= len(index_points):
        raise ValueError(f"k-NN needs 1 <= k <= number of index points: k={k}, "
                         f"{len(index_points)} points")
    index = flat_l2_index(index_points.shape[1], use_gpu, gpu_device)
    index.add(index_points)
    distances, indices = index.search(queries, k)
    return distances, indices.astype(np.int64)


def subsample_rows(n_total: int, cap: int, seed: int) -> np.ndarray:
    """Sorted int64 indices of min(cap, n_total) of `range(n_total)`, uniform, no replacement."""
    if n_total < 0 or cap < 0:
        raise ValueError(f"subsample_rows needs n_total, cap >= 0 (got {n_total}, {cap})")
    if cap >= n_total:
        return np.arange(n_total, dtype=np.int64)
    chosen = np.random.default_rng(seed).choice(n_total, size=cap, replace=False)
    return np.sort(chosen.astype(np.int64))


def memory_prototypes(keys: np.ndarray, values: np.ndarray, m: int, knn: int, n_iter: int,
                      seed: int, use_gpu: bool | None = None, max_points: int | None = None,
                      gpu_device: int | None = None
                      ) -> tuple[np.ndarray, np.ndarray, PrototypeStats]:
    """PMA-Net prototypes of a key/value bank: M_K [m, d_k] and M_V [m, d_v] float32.

    M_K are the K-Means centroids of `keys` (trained on a uniform sample of at most
    `max_points` keys when given, see `kmeans`); M_V[i] is the mean of `values` over the `knn`
    keys of the whole bank nearest to M_K[i]. The stats' inertia is over the whole bank.
    """
    keys = _as_points("memory keys", keys)
    values = _as_points("memory values", values)
    if len(keys) != len(values):
        raise ValueError(f"memory bank has {len(keys)} keys but {len(values)} values")
    if knn > len(keys):
        raise ValueError(f"memory.knn={knn} is larger than the bank ({len(keys)} keys)")
    start = time.perf_counter()
    result = kmeans(keys, m, n_iter, seed, use_gpu, max_points=max_points,
                    gpu_device=gpu_device)
    distances, neighbours = knn_search(keys, result.centroids, knn, use_gpu, gpu_device)
    proto_values = values[neighbours].mean(axis=1, dtype=np.float64).astype(np.float32)
    stats = PrototypeStats(len(keys), result.fit_points, result.inertia, result.empty_clusters,
                           float(distances.mean()), time.perf_counter() - start)
    return result.centroids, proto_values, stats


# ------------------------------------------------------------------------------ file formats
def _write_layers(path: Path, keys: Sequence[np.ndarray], values: Sequence[np.ndarray],
                  dtype: str) -> None:
    if len(keys) != len(values):
        raise ValueError(f"{path}: {len(keys)} key layers but {len(values)} value layers")
    arrays: dict[str, np.ndarray] = {"n_layers": np.int64(len(keys))}
    for layer, (k, v) in enumerate(zip(keys, values)):
        arrays[f"keys_{layer}"] = np.asarray(k, dtype=dtype)
        arrays[f"values_{layer}"] = np.asarray(v, dtype=dtype)
    write_npz_atomic(path, arrays, durable=True)


def _read_layers(path: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    path = Path(path)
    try:
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable npz file ({err})") from None
    with data:
        if "n_layers" not in data.files:
            raise ValueError(f"{path}: missing array 'n_layers'")
        layers = []
        for layer in range(int(data["n_layers"])):
            pair = []
            for name in (f"keys_{layer}", f"values_{layer}"):
                if name not in data.files:
                    raise ValueError(f"{path}: missing array '{name}' "
                                     f"(n_layers is {int(data['n_layers'])})")
                array = data[name]
                if array.ndim != 2:
                    raise ValueError(f"{path}: '{name}' must be 2-D [n, d], got {array.shape}")
                pair.append(array)
            if len(pair[0]) != len(pair[1]):
                raise ValueError(f"{path}: layer {layer} has {len(pair[0])} keys but "
                                 f"{len(pair[1])} values")
            layers.append((pair[0], pair[1]))
    return layers


def write_banks(path: Path, keys: Sequence[np.ndarray], values: Sequence[np.ndarray],
                dtype: str = "float16") -> None:
    """Dump per-layer key/value banks (`keys_<l>`, `values_<l>` [n, d], `n_layers`)."""
    _write_layers(path, keys, values, dtype)


def read_banks(path: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per-layer (keys [n, d], values [n, d]) of a bank dump, in the stored dtype."""
    return _read_layers(path)


def write_memory_prototypes(path: Path, keys: Sequence[np.ndarray],
                            values: Sequence[np.ndarray]) -> None:
    """Save per-layer prototypes (`keys_<l>` = M_K, `values_<l>` = M_V [m, d] float32)."""
    _write_layers(path, keys, values, "float32")


def read_memory_prototypes(path: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per-layer (M_K [m, d], M_V [m, d]) float32 from `prototypes/memory.npz`."""
    return [(k.astype(np.float32), v.astype(np.float32)) for k, v in _read_layers(path)]


def read_feature_prototypes(path: Path) -> np.ndarray:
    """Centroids [m, d_visual] float32 from `prototypes/features.npz`."""
    with np.load(path, allow_pickle=False) as data:
        return data["centroids"].astype(np.float32)
