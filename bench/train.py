"""Benchmark: training steps/s streaming from the Zarr cache versus the same batches in memory,
side by side, and peak RSS of the streaming path for a cache 1x and 4x as large.

Builds synthetic visual caches with `FeatureStore.create` (arrays as in the FSGR store:
`features` [N, P, d] float16, `image_ids`, `valid`; `--rows` and 4x as many rows) and synthetic
`CaptionSamples` (5 captions per image, random word ids, `<bos> .. <eos>` 0-padded to
`data.max_caption_words + 2`). The decoder is `shared.models.factory.build_decoder` of
`configs/demo.toml` (plus `--set` overrides); with `memory.self` on, `memory.n_prototypes`
random prototypes are installed in every layer so the memory attention is exercised. A step is
the trainer's: forward (autocast per `train.precision`), `caption_loss`, backward, gradient
clipping, Adam (memory-bank collection and prototype refresh are not part of it).

* Streaming: `CacheBatches(store, ["features"], samples, batch_size, seed=0).epoch(0)` for K
  steps, timed from creating the iterator (thread start and shuffle-buffer fill included).
* In memory: the SAME K batches, materialised beforehand from the same epoch iterator.
The two alternate, best of `--repeats` each.
* Loader alone (`loader_only`): batches/s of `CacheBatches(...).epoch(0)` with nothing done
  per batch, on a separate cache of `--loader-rows` images of `--loader-patches` x
  `--loader-dim` float16 (COCO's FSGR cache: 256 x 512), 5 captions each, batch
  `--loader-batch`, the default 2048-sample shuffle buffer; whole epochs, best of `--repeats`,
  timed from creating the iterator.
Peak RSS: the streaming path over a whole epoch
(or `--rss-steps`) of the 1x and the 4x cache, each in a fresh subprocess: ru_maxrss per run
(which includes start-up transients such as imports) and VmHWM reset just before streaming
(after two warm-up steps), the peak of the streaming phase alone, and its growth over the RSS
at that point. Torch uses CPUs - 1 threads by default (`--threads`), leaving a core to the
prefetch thread: on a small shared machine an oversubscribed OpenMP pool is many times slower.

    .venv/bin/python -m bench.train [--rows 512] [--patches 64] [--dim 256] [--steps 30]
                                    [--loader-rows 2048] [--loader-patches 256] [--loader-dim 512]
                                    [--loader-only]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import (BOS, CAPTIONS_PER_IMAGE, EOS, REPO, add_overrides, bench_config,
                          best_rate, install_random_prototypes, make_parser, peak_rss_mib,
                          print_report, side_by_side, xe_step)
from shared.cache_batches import CacheBatches, CaptionSamples
from shared.config import Config
from shared.feature_store import ArraySpec, FeatureStore
from shared.models.caption_decoder import CaptionDecoder
from shared.vocabulary import SPECIALS
from shared.models.factory import build_decoder


def proc_status_mib(field: str) -> float:
    """`VmRSS` (current) or `VmHWM` (peak since start or last reset) from /proc/self/status."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def make_store(path: Path, n_rows: int, patches: int, dim: int, rows_per_chunk: int,
               seed: int) -> None:
    """A synthetic FSGR-like cache: random float16 `features`, ids, all rows valid."""
    rng = np.random.default_rng(seed)
    with FeatureStore.create(path, [
            ArraySpec("features", (patches, dim), "float16"),
            ArraySpec("image_ids", (), "int64"), ArraySpec("valid", (), "uint8")],
            n_rows, rows_per_chunk, {"synthetic": True}) as store:
        for start in range(0, n_rows, rows_per_chunk):
            stop = min(start + rows_per_chunk, n_rows)
            store.write_rows(start, {
                "features": rng.standard_normal((stop - start, patches, dim),
                                                np.float32).astype(np.float16),
                "image_ids": np.arange(start, stop), "valid": np.ones(stop - start, np.uint8)})


def make_samples(n_rows: int, max_words: int, vocab_size: int, seed: int) -> CaptionSamples:
    """5 captions per row: `<bos>`, 8..max_words random words, `<eos>`, 0-padding."""
    rng = np.random.default_rng(seed)
    n = n_rows * CAPTIONS_PER_IMAGE
    tokens = np.zeros((n, max_words + 2), np.int64)
    lengths = rng.integers(min(8, max_words), max_words + 1, n)
    words = rng.integers(len(SPECIALS), vocab_size, (n, max_words))
    for i, length in enumerate(lengths.tolist()):
        tokens[i, 0] = BOS
        tokens[i, 1:length + 1] = words[i, :length]
        tokens[i, length + 1] = EOS
    return CaptionSamples(np.repeat(np.arange(n_rows, dtype=np.int64), CAPTIONS_PER_IMAGE),
                          tokens)


def build_config(args: argparse.Namespace) -> Config:
    sets = [] if args.precision is None else [f'train.precision="{args.precision}"']
    if args.no_memory:
        sets.append("memory.self=false")
    return bench_config("demo", [*sets, *args.set])


def build_model(config: Config, dim: int, vocab_size: int
                ) -> tuple[CaptionDecoder, torch.optim.Optimizer]:
    torch.manual_seed(0)
    decoder = build_decoder(config, dim, vocab_size)
    if config.memory.self:
        install_random_prototypes(decoder, config)
    decoder.train()
    optimizer = torch.optim.Adam(decoder.parameters(), lr=config.train.lr, betas=(0.9, 0.98))
    return decoder, optimizer


def train_step(decoder: CaptionDecoder, optimizer: torch.optim.Optimizer, batch: dict,
               config: Config, device: torch.device) -> float:
    """One XE step as in `train.trainer.train` (without memory-bank collection)."""
    tokens = batch["tokens"].to(device)
    return xe_step(decoder, optimizer, batch["features"].to(device), tokens, config, device)


def stream(batches: CacheBatches, steps: int | None, step_fn) -> tuple[int, float]:
    """Run up to `steps` steps (None: the whole epoch) from the cache; (steps, seconds)."""
    start = time.perf_counter()
    iterator = batches.epoch(0)
    done = 0
    try:
        for batch in iterator:
            step_fn(batch)
            done += 1
            if steps is not None and done == steps:
                break
        seconds = time.perf_counter() - start
    finally:
        iterator.close()  # stops the prefetch thread
    return done, seconds


def rss_only(args: argparse.Namespace) -> None:
    """Child process: stream one epoch (or --rss-steps) of `--store`, print peak RSS as JSON."""
    config = build_config(args)
    device = torch.device("cpu")
    with FeatureStore.open(args.store) as store:
        n_rows = store.n_rows
        shape = store.array("features").shape
    cache_mib = float(np.prod(shape)) * 2 / 2**20
    args.patches, args.dim = int(shape[1]), int(shape[2])
    samples = make_samples(n_rows, config.data.max_caption_words, args.vocab, seed=1)
    decoder, optimizer = build_model(config, args.dim, args.vocab)
    batches = CacheBatches(Path(args.store), ["features"], samples, config.train.batch_size,
                           seed=0)
    for _ in range(2):  # warm-up on a synthetic batch: allocator and optimizer state exist
        train_step(decoder, optimizer, {"tokens": torch.from_numpy(samples.tokens[:50]),
                                        "features": torch.zeros(50, args.patches, args.dim,
                                                                dtype=torch.float16)},
                   config, device)
    # ru_maxrss also holds start-up transients (imports); VmHWM, reset here, is the peak of
    # the streaming phase alone
    before, reset = proc_status_mib("VmRSS"), reset_peak_rss()
    steps, seconds = stream(batches, args.rss_steps or None,
                            lambda b: train_step(decoder, optimizer, b, config, device))
    streaming_peak = proc_status_mib("VmHWM") if reset else float("nan")
    print_report({"rows": n_rows, "cache_mib": round(cache_mib, 1),
                      "samples": len(samples), "steps": steps,
                      "steps_per_s": round(steps / seconds, 2),
                      "peak_rss_mib": round(peak_rss_mib(), 1),
                      "rss_before_streaming_mib": round(before, 1),
                      "peak_rss_streaming_mib": round(streaming_peak, 1),
                      "streaming_growth_mib": round(streaming_peak - before, 1)}, indent=None)


def loader_only(args: argparse.Namespace, path: Path) -> dict:
    """Batches/s of the streaming loader alone (nothing done per batch), whole epochs."""
    make_store(path, args.loader_rows, args.loader_patches, args.loader_dim,
               args.rows_per_chunk, seed=2)
    samples = make_samples(args.loader_rows, 20, args.vocab, seed=3)
    seconds, count = [], 0
    for _ in range(args.repeats):
        # a fresh loader: the epoch's order is computed inside the timing, as in training
        batches = CacheBatches(path, ["features"], samples, args.loader_batch, seed=0)
        start = time.perf_counter()
        count = sum(1 for _ in batches.epoch(0))
        seconds.append(time.perf_counter() - start)
    batch_mib = args.loader_batch * args.loader_patches * args.loader_dim * 2 / 2**20
    return {"rows": args.loader_rows, "patches": args.loader_patches, "dim": args.loader_dim,
            "dtype": "float16", "batch_size": args.loader_batch,
            "captions_per_image": CAPTIONS_PER_IMAGE, "shuffle_buffer": batches.shuffle_buffer,
            "batches": count, "seconds": [round(s, 3) for s in seconds],
            "batches_per_s": round(count / min(seconds), 1),
            "feature_mib_per_s": round(count * batch_mib / min(seconds), 1)}


def run_child(args: argparse.Namespace, store: Path) -> dict:
    cmd = [sys.executable, "-m", "bench.train", "--rss-only", "--store", str(store),
           "--dim", str(args.dim), "--vocab", str(args.vocab),
           "--rss-steps", str(args.rss_steps), "--threads", str(args.threads)]
    if args.precision is not None:
        cmd += ["--precision", args.precision]
    if args.no_memory:
        cmd.append("--no-memory")
    for text in args.set:
        cmd += ["--set", text]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = make_parser(__doc__)
    parser.add_argument("--rows", type=int, default=512, help="images in the 1x cache")
    parser.add_argument("--scale", type=int, default=4, help="the large cache is this x rows")
    parser.add_argument("--patches", type=int, default=64)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--rows-per-chunk", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=30, help="K timed steps per pass")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rss-steps", type=int, default=0,
                        help="steps per RSS run (0: the whole epoch)")
    parser.add_argument("--loader-rows", type=int, default=2048,
                        help="images in the loader-only cache (0: skip that measurement)")
    parser.add_argument("--loader-patches", type=int, default=256)
    parser.add_argument("--loader-dim", type=int, default=512)
    parser.add_argument("--loader-batch", type=int, default=50)
    parser.add_argument("--loader-only", action="store_true",
                        help="only the loader-alone measurement")
    parser.add_argument("--no-memory", action="store_true", help="memory.self=false")
    parser.add_argument("--precision", default=None, choices=["auto", "fp32", "bf16"],
                        help="train.precision (default: the config's, 'auto' = fp32 on CPU)")
    add_overrides(parser, help="config override on configs/demo.toml (repeatable)")
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                        help="torch threads (default: CPUs - 1, a core for the prefetch thread)")
    parser.add_argument("--rss-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--store", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.rss_only:
        rss_only(args)
        return

    if args.loader_only:
        with tempfile.TemporaryDirectory() as tmp:
            print_report({"cpus": os.cpu_count(),
                          "load_avg_1m_at_start": round(os.getloadavg()[0], 2),
                          "loader_only": loader_only(args, Path(tmp) / "loader.zarr")})
        return

    config = build_config(args)
    device = torch.device("cpu")
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        small, large = Path(tmp) / "x1.zarr", Path(tmp) / f"x{args.scale}.zarr"
        make_store(small, args.rows, args.patches, args.dim, args.rows_per_chunk, seed=0)
        make_store(large, args.rows * args.scale, args.patches, args.dim, args.rows_per_chunk,
                   seed=1)
        samples = make_samples(args.rows, config.data.max_caption_words, args.vocab, seed=1)
        batches = CacheBatches(small, ["features"], samples, config.train.batch_size, seed=0)
        steps = min(args.steps, batches.n_batches(0))

        iterator = batches.epoch(0)
        held = list(itertools.islice(iterator, steps))  # the same K batches, in memory
        iterator.close()
        decoder, optimizer = build_model(config, args.dim, args.vocab)

        def step(batch: dict) -> float:
            return train_step(decoder, optimizer, batch, config, device)

        for _ in range(3):  # warm-up (allocator, kernels), untimed
            step(held[0])

        def streaming(_: int) -> float:
            done, seconds = stream(batches, steps, step)
            assert done == steps
            return seconds

        def in_memory(_: int) -> float:
            start = time.perf_counter()
            for batch in held:
                step(batch)
            return time.perf_counter() - start

        stream_s, memory_s = side_by_side(args.repeats, streaming, in_memory)
        del held
        stream_sps, memory_sps = best_rate(steps, stream_s), best_rate(steps, memory_s)

        rss_small, rss_large = run_child(args, small), run_child(args, large)
        loader = loader_only(args, Path(tmp) / "loader.zarr") if args.loader_rows else None

    print_report({
        "rows": args.rows, "patches": args.patches, "dim": args.dim,
        "rows_per_chunk": args.rows_per_chunk, "batch_size": config.train.batch_size,
        "captions_per_image": CAPTIONS_PER_IMAGE, "caption_length": samples.tokens.shape[1],
        "vocab": args.vocab, "d_model": config.decoder.d_model,
        "n_dec_layers": config.decoder.n_dec_layers, "d_ff": config.decoder.d_ff,
        "memory_self": config.memory.self,
        "prototypes": config.memory.n_prototypes if config.memory.self else 0,
        "precision": config.train.precision, "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(), "load_avg_1m_at_start": round(load_before, 2),
        "timed_steps": steps, "repeats": args.repeats,
        "streaming_steps_per_s": round(stream_sps, 2),
        "in_memory_steps_per_s": round(memory_sps, 2),
        "ratio_streaming_over_memory": round(stream_sps / memory_sps, 3),
        "streaming_seconds": [round(s, 3) for s in stream_s],
        "in_memory_seconds": [round(s, 3) for s in memory_s],
        "loader_only": loader,
        "rss": {
            "x1": rss_small, f"x{args.scale}": rss_large,
            "peak_rss_ratio_large_over_small": round(
                rss_large["peak_rss_mib"] / rss_small["peak_rss_mib"], 3),
            "streaming_peak_ratio_large_over_small": round(
                rss_large["peak_rss_streaming_mib"] / rss_small["peak_rss_streaming_mib"], 3)},
    })


if __name__ == "__main__":
    main()
