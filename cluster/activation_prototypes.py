"""`cluster activations`: PMA-Net memory prototypes (M_K, M_V per decoder layer, `memory.self`).

Input, written by the trainer: `runs/<ds>/memory/banks.npz` (`shared.stages.memory_banks_path`,
written with `shared.prototypes.write_banks`), an npz holding

- `n_layers`: int, the number of decoder layers with a memory bank;
- `keys_<l>`, `values_<l>` for l in 0..n_layers-1: [n_l, d_model] float16 or float32, the
  self-attention keys / values of word tokens (all heads, after the key/value projections)
  collected over the bank window; row i of `values_<l>` belongs to row i of `keys_<l>`;

plus its manifest `banks.npz.manifest.json` (`shared.manifest.write_manifest`), whose identity
makes these prototypes stale when a new dump is written (without one, the file's hash is used).

Output: `runs/<ds>/prototypes/memory.npz` in the same layout with m rows per layer, float32
(`shared.prototypes.read_memory_prototypes`): M_K = K-Means centroids of the layer's keys
(fitted on at most `cluster.max_points` of them, FAISS's seeded sub-sample of
m x (cluster.max_points // m) keys), M_V = mean of the values whose keys are the `memory.knn`
nearest neighbours of each centroid in the whole bank; the reported inertia is over the whole
bank. m is `memory.n_prototypes`, or the layer's number of keys when its bank is smaller:
the rule every trainer refresh follows too (`shared.prototypes.prototype_count`), stated in a
warning line and in the manifest summary's `warnings`, never silently.

The dump's identity is the training run's (`shared.stages.memory_banks_stage`: the train
stage's config keys and inputs), so banks from another run make these prototypes stale.
"""

from __future__ import annotations

import time
from typing import Any

from tqdm import tqdm

from shared.config import Config
from shared.prototypes import (memory_prototypes, prototype_count, read_banks, use_gpu_for,
                               write_memory_prototypes)
from shared.stage_runner import StageResult, StageRun, run_stage
from shared.stages import cluster_activations_stage, memory_banks_path


class NoBankDump(FileNotFoundError):
    """Training has not dumped key/value banks yet (not an error for `cluster all`)."""


def require_banks(config: Config) -> None:
    """Raise NoBankDump with the user-facing message when there is no bank dump."""
    path = memory_banks_path(config)
    if not path.is_file():
        raise NoBankDump(f"activation prototypes come after training has dumped key/value "
                         f"banks ({path}); run `make train` first")


def cluster_activations(config: Config, force: bool = False, progress: bool = True
                        ) -> StageResult:
    """Build (or skip) `prototypes/memory.npz` from the bank dump."""
    require_banks(config)
    return run_stage(cluster_activations_stage(config), config,
                     lambda run: _cluster(run, progress), force=force)


def _cluster(run: StageRun, progress: bool) -> dict[str, Any]:
    config = run.config
    path, m, knn = memory_banks_path(config), config.memory.n_prototypes, config.memory.knn
    run.say(run.reason)
    banks = read_banks(path)
    if not banks:
        raise ValueError(f"{path}: n_layers is 0, no banks to cluster")
    counts = [prototype_count(len(keys), m, knn, f"{path} layer {layer}")
              for layer, (keys, _) in enumerate(banks)]
    warnings = [c.warning for c in counts if c.warning]
    run.lines += warnings
    started = time.perf_counter()
    proto_keys, proto_values, stats = [], [], []
    for (keys, values), count in tqdm(list(zip(banks, counts)), desc="cluster activations",
                                      unit="layer", disable=not progress):
        mk, mv, layer_stats = memory_prototypes(
            keys, values, count.prototypes, count.knn, config.cluster.n_iter,
            config.cluster.seed, use_gpu_for(config.cluster.device),
            max_points=config.cluster.max_points)
        proto_keys.append(mk)
        proto_values.append(mv)
        stats.append(layer_stats)
    write_memory_prototypes(run.spec.output, proto_keys, proto_values)
    seconds = time.perf_counter() - started
    inertia = ", ".join(f"{s.inertia:.4g}" for s in stats)
    empty = sum(s.empty_clusters for s in stats)
    sizes = "/".join(str(n) for n in sorted({len(keys) for keys, _ in banks}))
    built = "/".join(str(n) for n in sorted({c.prototypes for c in counts}))
    knns = "/".join(str(n) for n in sorted({c.knn for c in counts}))
    run.say(f"{len(banks)} layers x {built} prototypes (knn {knns}) from {sizes} keys per "
            f"layer in {seconds:.1f}s; inertia per layer [{inertia}], {empty} empty clusters "
            f"-> {run.spec.output}")
    return {"layers": [s.__dict__ for s in stats], "k": m, "knn": knn,
            "prototypes": [c.prototypes for c in counts], "warnings": warnings,
            "seconds": round(seconds, 3)}
