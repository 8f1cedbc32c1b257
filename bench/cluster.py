"""Benchmark: `shared.prototypes.kmeans` (FAISS) versus scikit-learn KMeans, side by side.

Same data (points around random centres, float32), same k, same starting centroids (a seeded
sample of the points, given to both), at most the same number of Lloyd iterations, n_init=1.
sklearn (tol=0) stops early when no label changes, FAISS when the objective stops falling, so
both iteration counts and per-iteration times are reported. Inertia of each is the sum of
squared distances of every point to its nearest final centroid. Empty clusters are handled
differently (FAISS splits a big cluster, sklearn moves the centroid to a far point).

    .venv/bin/python -m bench.cluster [--points 100000] [--dim 512] [--k 1024] [--iters 20]
"""

from __future__ import annotations

import os

import faiss
import numpy as np
from sklearn.cluster import KMeans

from bench.common import make_parser, print_report, timed
from shared.prototypes import kmeans


def clustered_points(n: int, dim: int, n_centres: int, seed: int) -> np.ndarray:
    """`n` points around `n_centres` random centres (unit noise, centres ~ N(0, 3^2))."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_centres, dim), dtype=np.float32) * 3
    points = centres[rng.integers(0, n_centres, n)]
    points += rng.standard_normal((n, dim), dtype=np.float32)
    return points


def main() -> None:
    parser = make_parser(__doc__)
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=1024)
    parser.add_argument("--centres", type=int, default=256, help="true centres")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    points = clustered_points(args.points, args.dim, args.centres, args.seed)
    init = points[np.random.default_rng(args.seed + 1).choice(args.points, args.k,
                                                                replace=False)].copy()

    result = kmeans(points, args.k, args.iters, args.seed, use_gpu=False, init_centroids=init)
    faiss_s = result.seconds

    skl, sklearn_s = timed(lambda: KMeans(
        n_clusters=args.k, init=init, n_init=1, max_iter=args.iters, tol=0.0,
        algorithm="lloyd", random_state=args.seed).fit(points))

    print_report({
        "points": args.points, "dim": args.dim, "k": args.k, "iterations": args.iters,
        "faiss_iterations": result.iterations, "sklearn_iterations": int(skl.n_iter_),
        "cpu_threads": faiss.omp_get_max_threads(), "cpus": os.cpu_count(),
        "faiss_version": faiss.__version__,
        "faiss_seconds": round(faiss_s, 2), "sklearn_seconds": round(sklearn_s, 2),
        "sklearn_over_faiss_time": round(sklearn_s / faiss_s, 2),
        "faiss_s_per_iteration": round(faiss_s / max(result.iterations, 1), 3),
        "sklearn_s_per_iteration": round(sklearn_s / max(int(skl.n_iter_), 1), 3),
        "faiss_inertia": round(result.inertia, 1),
        "sklearn_inertia": round(float(skl.inertia_), 1),
        "inertia_ratio_faiss_over_sklearn": round(result.inertia / float(skl.inertia_), 5),
        "faiss_empty_clusters": result.empty_clusters})


if __name__ == "__main__":
    main()
