"""`shared.prototypes` (FAISS K-Means, k-NN, PMA prototypes) and `python -m cluster`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cluster.__main__ import app
from cluster.activation_prototypes import NoBankDump, cluster_activations
from cluster.feature_prototypes import cluster_features
from shared.config import Config, load_config
from shared.feature_store import ArraySpec, FeatureStore
from shared.manifest import read_manifest, write_manifest
from shared.prototypes import (PrototypeCount, fit_sample_size, kmeans, knn_search,
                               memory_prototypes, prototype_count, read_banks,
                               read_feature_prototypes, read_memory_prototypes, subsample_rows,
                               write_banks)
from shared.stages import (clip_stage, cluster_activations_stage, cluster_features_stage,
                           concepts_stage, encode_stage, fit_stage, memory_banks_path,
                           memory_banks_stage, vocab_stage)
from tests.conftest import DEMO_CONFIG, karpathy_entry, write_karpathy

RNG = np.random.default_rng


def blobs(n_centres: int, per_centre: int, dim: int, spread: float = 10.0, seed: int = 0
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points around well-separated centres: (points, labels, centres)."""
    rng = RNG(seed)
    centres = rng.standard_normal((n_centres, dim)).astype(np.float32) * spread
    labels = np.repeat(np.arange(n_centres), per_centre)
    points = centres[labels] + rng.standard_normal((len(labels), dim)).astype(np.float32)
    order = rng.permutation(len(labels))
    return points[order], labels[order], centres


# ------------------------------------------------------------------------- library
def test_kmeans_recovers_planted_clusters() -> None:
    points, _, centres = blobs(8, 400, 32)
    result = kmeans(points, 8, n_iter=20, seed=0)
    assert result.centroids.shape == (8, 32) and result.centroids.dtype == np.float32
    dist = np.linalg.norm(result.centroids[:, None] - centres[None], axis=-1)
    assert sorted(dist.argmin(axis=1).tolist()) == list(range(8))  # one centroid per centre
    assert dist.min(axis=1).max() < 0.5  # noise of the mean: sqrt(32 / 400) ~ 0.28
    assert result.empty_clusters == 0
    expected = ((points - centres[np.linalg.norm(
        points[:, None] - centres[None], axis=-1).argmin(1)]) ** 2).sum()
    assert result.inertia == pytest.approx(expected, rel=0.02)


def test_kmeans_is_deterministic_for_a_seed() -> None:
    points = RNG(1).standard_normal((3000, 24)).astype(np.float32)
    first, second = (kmeans(points, 32, n_iter=10, seed=5) for _ in range(2))
    np.testing.assert_array_equal(first.centroids, second.centroids)
    assert first.inertia == second.inertia
    other = kmeans(points, 32, n_iter=10, seed=6)
    assert not np.array_equal(first.centroids, other.centroids)


def test_kmeans_needs_as_many_points_as_centroids() -> None:
    with pytest.raises(ValueError, match=r"10 points < k=16"):
        kmeans(np.zeros((10, 4), np.float32), 16, n_iter=5, seed=0)
    with pytest.raises(ValueError, match="NaN"):
        kmeans(np.full((20, 4), np.nan, np.float32), 2, n_iter=5, seed=0)


def test_knn_matches_brute_force() -> None:
    rng = RNG(2)
    base, queries = rng.standard_normal((500, 16)), rng.standard_normal((40, 16))
    distances, indices = knn_search(base.astype(np.float16), queries, k=7)
    exact = ((queries[:, None] - base.astype(np.float16).astype(np.float64)[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(indices, np.argsort(exact, axis=1)[:, :7])
    np.testing.assert_allclose(distances, np.sort(exact, axis=1)[:, :7], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="k=501, 500 points"):
        knn_search(base, queries, k=501)


def test_subsample_rows() -> None:
    picked = subsample_rows(10_000, 300, seed=3)
    assert len(picked) == 300 == len(np.unique(picked))
    assert (np.diff(picked) > 0).all() and picked.min() >= 0 and picked.max() < 10_000
    np.testing.assert_array_equal(picked, subsample_rows(10_000, 300, seed=3))
    np.testing.assert_array_equal(subsample_rows(50, 300, seed=3), np.arange(50))
    # uniform: each half of the range gets about half of the sample
    halves = np.bincount(subsample_rows(1_000_000, 20_000, seed=0) // 500_000)
    assert abs(halves[0] - 10_000) < 400


def test_memory_prototype_values_are_the_cluster_value_means() -> None:
    keys, labels, centres = blobs(8, 50, 16)
    rng = RNG(4)
    cluster_values = rng.standard_normal((8, 12)).astype(np.float32) * 5
    values = cluster_values[labels] + rng.standard_normal((len(labels), 12)).astype(np.float32)
    mk, mv, stats = memory_prototypes(keys, values, m=8, knn=50, n_iter=20, seed=0)
    assert mk.shape == (8, 16) and mv.shape == (8, 12) and stats.n_points == 400
    owner = np.linalg.norm(mk[:, None] - centres[None], axis=-1).argmin(axis=1)
    assert sorted(owner.tolist()) == list(range(8))
    means = np.stack([values[labels == c].mean(0) for c in range(8)])
    np.testing.assert_allclose(mv, means[owner], rtol=1e-5, atol=1e-5)
    # with fewer neighbours than cluster members the value stays the cluster's own
    _, mv_small, _ = memory_prototypes(keys, values, m=8, knn=10, n_iter=20, seed=0)
    assert np.abs(mv_small - cluster_values[owner]).max() < 1.5


def test_kmeans_sample_size_is_explicit() -> None:
    assert fit_sample_size(200_000, 1024, None) == (196, 200_000)        # every key
    assert fit_sample_size(200_000, 1024, 65_536) == (64, 65_536)
    assert fit_sample_size(200_000, 1024, 70_000) == (68, 69_632)        # k x (max // k)
    assert fit_sample_size(30_000, 1024, 65_536) == (64, 30_000)         # bank smaller
    with pytest.raises(ValueError, match="max_points >= k"):
        fit_sample_size(5000, 1024, 1000)
    points, _, _ = blobs(16, 500, 8)
    sampled = kmeans(points, 16, n_iter=10, seed=0, max_points=16 * 40)
    assert sampled.fit_points == 640
    again = kmeans(points, 16, n_iter=10, seed=0, max_points=16 * 40)
    np.testing.assert_array_equal(sampled.centroids, again.centroids)   # seeded sample
    every = kmeans(points, 16, n_iter=10, seed=0)
    assert every.fit_points == 8000 and not np.array_equal(every.centroids, sampled.centroids)
    # the inertia is over every point given, not over the sample
    _, nearest = knn_search(sampled.centroids, points, 1)
    whole = ((points - sampled.centroids[nearest[:, 0]]) ** 2).sum(dtype=np.float64)
    assert sampled.inertia == pytest.approx(whole, rel=1e-4)
    # FAISS did train on 640 points: its objective sums 640 squared distances, not 8000
    assert sampled.fit_inertia < 0.15 * sampled.inertia
    assert every.fit_inertia == pytest.approx(every.inertia, rel=0.05)


def test_sampled_kmeans_is_within_one_percent_of_all_points() -> None:
    """Prototype quality = K-Means inertia over the WHOLE bank. With the default sample ratio
    (memory.kmeans_max_points = 131,072 for 1,024 prototypes: 128 keys per prototype) it stays
    within 1% of K-Means trained on every key, on a clustered bank (many more clusters than
    prototypes, unequal sizes and spreads: where K-Means is stable, so the difference is the
    sample's, not a local minimum's). 64 per prototype loses ~1-1.5% here, 32 ~2.5%."""
    rng = RNG(11)
    n, d, m, planted = 40_000, 64, 128, 2000
    centres = rng.standard_normal((planted, d)).astype(np.float32) * 3
    labels = rng.choice(planted, n, p=rng.dirichlet(np.full(planted, 2.0)))
    spread = rng.uniform(0.5, 1.5, planted).astype(np.float32)[labels, None]
    keys = centres[labels] + rng.standard_normal((n, d)).astype(np.float32) * spread
    values = rng.standard_normal((n, 8)).astype(np.float32)
    _, _, every = memory_prototypes(keys, values, m, knn=8, n_iter=20, seed=0)
    mk, _, sample = memory_prototypes(keys, values, m, knn=8, n_iter=20, seed=0,
                                      max_points=128 * m)
    assert every.n_fit_points == n and sample.n_fit_points == 128 * m == 16_384
    nearest, _ = knn_search(mk, keys, 1)
    assert sample.inertia == pytest.approx(float(nearest.sum(dtype=np.float64)), rel=1e-4)
    assert sample.inertia <= 1.01 * every.inertia, (sample.inertia, every.inertia)


def test_bank_format_round_trip(tmp_path: Path) -> None:
    rng = RNG(5)
    keys = [rng.standard_normal((30, 8)), rng.standard_normal((20, 8))]
    values = [rng.standard_normal((30, 8)), rng.standard_normal((20, 8))]
    write_banks(tmp_path / "banks.npz", keys, values)
    back = read_banks(tmp_path / "banks.npz")
    assert [k.shape for k, _ in back] == [(30, 8), (20, 8)]
    assert back[0][0].dtype == np.float16
    np.testing.assert_allclose(back[1][1], values[1], atol=1e-2)
    np.savez(tmp_path / "bad.npz", n_layers=2, keys_0=keys[0], values_0=values[0])
    with pytest.raises(ValueError, match=r"bad\.npz: missing array 'keys_1'"):
        read_banks(tmp_path / "bad.npz")


# ------------------------------------------------------------------------- the stage
N_TRAIN, N_HELD_OUT, PATCHES, DIM = 24, 8, 16, 12


def stage_config(root: Path, *extra: str) -> tuple[Config, list[str]]:
    """The demo config pointed at a tiny Karpathy json and run folder under `root`."""
    sets = [f"data.karpathy_json={json.dumps(str(root / 'dataset.json'))}",
            f"data.image_root={json.dumps(str(root / 'images'))}",
            f"data.run_root={json.dumps(str(root / 'runs'))}", 'clip.pretrained="random"',
            "store.rows_per_chunk=5", "memory.n_cross_prototypes=6", "cluster.max_points=300",
            "memory.n_prototypes=8", "memory.knn=4", "cluster.n_iter=10", *extra]
    return load_config(DEMO_CONFIG, sets), sets


def fake_caches(root: Path) -> tuple[Config, list[str], np.ndarray]:
    """Karpathy json, CLIP and FSGR caches with manifests; train patches around 6 centres.

    Held-out (val/test) images and one failed train image sit far away from those centres,
    so prototypes that come near them would show that those rows were used.
    """
    root.mkdir(parents=True, exist_ok=True)
    splits = ["train"] * 20 + ["restval"] * 4 + ["val"] * 4 + ["test"] * 4
    write_karpathy(root / "dataset.json",
                   [karpathy_entry(i, s, f"{i}.jpg") for i, s in enumerate(splits)])
    config, sets = stage_config(root)
    rng = RNG(7)
    centres = rng.standard_normal((6, DIM)).astype(np.float32) * 8
    n = len(splits)
    feats = centres[rng.integers(0, 6, (n, PATCHES))] + rng.standard_normal(
        (n, PATCHES, DIM)).astype(np.float32) * 0.3
    feats[N_TRAIN:] += 200.0  # val / test
    valid = np.ones(n, np.uint8)
    valid[3] = 0
    feats[3] = -200.0  # a failed image's row
    ids = np.array([1000 + i for i in range(n)], np.int64)  # cocoid of karpathy_entry
    for spec, array in ((clip_stage(config), "patch_tokens"), (encode_stage(config), "features")):
        with FeatureStore.create(spec.output, [
                ArraySpec(array, (PATCHES, DIM), "float16"), ArraySpec("image_ids", (), "int64"),
                ArraySpec("valid", (), "uint8")], n, config.store.rows_per_chunk, {}) as store:
            store.write_rows(0, {array: feats.astype(np.float16), "image_ids": ids,
                                 "valid": valid})
    for spec in (vocab_stage(config), clip_stage(config), concepts_stage(config),
                 fit_stage(config), encode_stage(config)):
        if not spec.output.exists():  # a file output (vocab, concepts, fsgr.pt): a stand-in
            spec.output.parent.mkdir(parents=True, exist_ok=True)
            spec.output.write_bytes(b"")
        write_manifest(spec, config)
    return config, sets, centres


def test_cluster_features_writes_skips_and_reruns(tmp_path: Path) -> None:
    config, sets, centres = fake_caches(tmp_path)
    lines = cluster_features(config, progress=False).lines
    assert lines[0] == "cluster features: no complete output yet"
    assert "6 prototypes of 300/368 fsgr patch vectors (23 train images, d=12)" in lines[1]
    spec = cluster_features_stage(config)
    centroids = read_feature_prototypes(spec.output)
    assert centroids.shape == (6, DIM) and centroids.dtype == np.float32
    # only valid training rows: every centroid sits on a planted centre
    dist = np.linalg.norm(centroids[:, None] - centres[None], axis=-1)
    assert sorted(dist.argmin(1).tolist()) == list(range(6)) and dist.min(1).max() < 0.5
    with np.load(spec.output) as data:
        assert str(data["source"]) == "fsgr" and str(data["array"]) == "features"
        assert int(data["n_points"]) == 300 and int(data["empty_clusters"]) == 0
    summary = read_manifest(spec.output)["summary"]
    assert summary["n_images"] == 23 and summary["n_candidates"] == 23 * PATCHES

    assert cluster_features(config, progress=False).lines == [
        f"cluster features: up to date ({spec.output})"]
    again = load_config(DEMO_CONFIG, [*sets, "memory.n_cross_prototypes=4"])
    lines = cluster_features(again, progress=False).lines
    assert lines[0] == ("cluster features: config changed "
                        "(memory.n_cross_prototypes: 6 -> 4)")
    assert read_feature_prototypes(spec.output).shape == (4, DIM)
    clip = load_config(DEMO_CONFIG, [*sets, 'decoder.visual_input="clip"'])
    assert "decoder.visual_input: 'fsgr' -> 'clip'" in \
        cluster_features(clip, progress=False).lines[0]
    with np.load(spec.output) as data:
        assert str(data["source"]) == "clip" and str(data["array"]) == "patch_tokens"
    assert cluster_features(clip, force=True, progress=False).lines[0] == \
        "cluster features: --force"


def test_cluster_features_refuses_a_missing_or_stale_cache(tmp_path: Path) -> None:
    config, sets, _ = fake_caches(tmp_path / "a")
    empty, _ = stage_config(tmp_path / "a", f"data.run_root={json.dumps(str(tmp_path / 'b'))}")
    with pytest.raises(RuntimeError, match=r"extract\.encode: its input extract\.clip \(.*"
                                           r"clip\.zarr\) has not been built: rebuild it with "
                                           r"`python -m extract clip`"):
        cluster_features(empty, progress=False)
    stale = load_config(DEMO_CONFIG, [*sets, 'store.dtype="float32"'])
    with pytest.raises(RuntimeError, match=r"is stale \(config changed \(store\.dtype"):
        cluster_features(stale, progress=False)
    too_many = load_config(DEMO_CONFIG, [*sets, "memory.n_cross_prototypes=400"])
    with pytest.raises(ValueError, match="memory.n_cross_prototypes=400 is more than the 300"):
        cluster_features(too_many, progress=False)


def write_bank_dump(config: Config, n: int = 200, seed: int = 0) -> None:
    """Banks as the trainer dumps them: the npz and its manifest (the training run's identity)."""
    rng = RNG(seed)
    keys = [rng.standard_normal((n, 16)) for _ in range(2)]
    values = [rng.standard_normal((n, 16)) for _ in range(2)]
    write_banks(memory_banks_path(config), keys, values)
    write_manifest(memory_banks_stage(config), config, {"rows": [n, n]})


def test_cluster_activations(tmp_path: Path) -> None:
    config, sets, _ = fake_caches(tmp_path)
    with pytest.raises(NoBankDump, match=r"run `make train` first"):
        cluster_activations(config, progress=False)
    write_bank_dump(config)
    lines = cluster_activations(config, progress=False).lines
    assert "2 layers x 8 prototypes (knn 4) from 200 keys per layer" in lines[1]
    spec = cluster_activations_stage(config)
    layers = read_memory_prototypes(spec.output)
    assert [(k.shape, v.shape) for k, v in layers] == [((8, 16), (8, 16))] * 2
    banks = read_banks(memory_banks_path(config))
    keys, values = (b.astype(np.float32) for b in banks[1])
    _, nearest = knn_search(keys, layers[1][0], 4)
    np.testing.assert_allclose(layers[1][1], values[nearest].mean(1), atol=1e-5)
    assert cluster_activations(config, progress=False).lines[0].startswith(
        "cluster activations: up to date")
    other = load_config(DEMO_CONFIG, [*sets, "memory.knn=6"])
    write_bank_dump(other)  # [memory] is part of the training run: its banks are another run's
    assert "memory.knn: 4 -> 6" in cluster_activations(other, progress=False).lines[0]
    retrained = load_config(DEMO_CONFIG, [*sets, "memory.knn=6", "train.lr=1e-3"])
    write_bank_dump(retrained, seed=1)  # a new dump, from a run with another train.lr
    assert "input changed" in cluster_activations(retrained, progress=False).lines[0]
    # a bank smaller than memory.n_prototypes: one prototype per key, said (the trainer's rule)
    too_many = load_config(DEMO_CONFIG, [*sets, "memory.n_prototypes=300", "memory.knn=250"])
    write_bank_dump(too_many)
    lines = cluster_activations(too_many, progress=False).lines
    warning = (f"warning: {memory_banks_path(config)} layer 0: 200 keys, fewer than "
               "memory.n_prototypes=300: 200 prototypes built; memory.knn=250 clipped to 200")
    assert lines[1] == warning and lines[2].startswith("warning: ")
    assert "2 layers x 200 prototypes (knn 200) from 200 keys" in lines[3]
    assert [k.shape for k, _ in read_memory_prototypes(spec.output)] == [(200, 16)] * 2
    summary = read_manifest(spec.output)["summary"]
    assert summary["prototypes"] == [200, 200] and summary["warnings"][0] == warning
    write_banks(memory_banks_path(config), [np.zeros((0, 16))] * 2, [np.zeros((0, 16))] * 2)
    with pytest.raises(ValueError, match="layer 0 has no keys: nothing to build memory "
                                         "prototypes from"):
        cluster_activations(too_many, force=True, progress=False)


def test_prototype_count_is_one_rule() -> None:
    """What `cluster activations` and every trainer refresh build from a bank."""
    assert prototype_count(500, 64, 16, "bank") == PrototypeCount(64, 16, "")
    small = prototype_count(40, 64, 16, "layer 1 bank")
    assert (small.prototypes, small.knn) == (40, 16)
    assert small.warning == ("warning: layer 1 bank: 40 keys, fewer than memory.n_prototypes=64"
                             ": 40 prototypes built")
    assert prototype_count(5, 4, 8, "b").warning == "warning: b: memory.knn=8 clipped to 5"
    for bad in ((0, 64, 16), (10, 0, 4), (10, 4, 0)):
        with pytest.raises(ValueError):
            prototype_count(*bad, "bank")


def test_cli_activations_without_banks(tmp_path: Path) -> None:
    _, sets, _ = fake_caches(tmp_path)
    args = ["--config", str(DEMO_CONFIG), *[a for s in sets for a in ("--set", s)]]
    alone = CliRunner().invoke(app, ["activations", *args])
    assert alone.exit_code == 2
    assert "error: activation prototypes come after training has dumped key/value banks (" \
        in alone.output and "run `make train` first" in alone.output
    everything = CliRunner().invoke(app, ["all", *args])
    assert everything.exit_code == 0, everything.output
    assert "cluster features: 6 prototypes" in everything.output
    assert "cluster activations: skipped: activation prototypes come after" in everything.output


def test_cli_all_skips_a_stale_bank_dump(tmp_path: Path) -> None:
    """`make all` runs `cluster all` before `train`: banks dumped by a run of another config
    are skipped (training rebuilds them next), while `cluster activations` alone refuses."""
    config, sets, _ = fake_caches(tmp_path)
    write_bank_dump(config)
    sets = [*sets, "train.max_epochs=3"]  # the banks come from a run with another schedule
    args = ["--config", str(DEMO_CONFIG), *[a for s in sets for a in ("--set", s)]]
    alone = CliRunner().invoke(app, ["activations", *args])
    assert alone.exit_code == 2 and "its input train.banks" in alone.output \
        and "is stale" in alone.output
    everything = CliRunner().invoke(app, ["all", *args])
    assert everything.exit_code == 0, everything.output
    assert "cluster activations: skipped until training has run again: " in everything.output
    assert not cluster_activations_stage(config).output.exists()
