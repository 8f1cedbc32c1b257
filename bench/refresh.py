"""Benchmark: one PMA prototype refresh at the COCO config, all keys vs the K-Means sample.

A refresh (`train.self_memory.layer_prototypes`, the code the trainer runs) rebuilds M_K / M_V
of every decoder layer from its bank: FAISS K-Means (`cluster.n_iter` iterations,
`memory.n_prototypes` centroids) on the keys, then k-NN (`memory.knn`) of each centroid over the
whole bank for M_V, plus one assignment of the whole bank for the inertia. Banks are random
(float16, as the trainer keeps them): `memory.bank_cap` keys of width `decoder.d_model` per
layer, drawn around 4096 random centres, one bank per layer of `decoder.n_dec_layers`.

Side by side in one run (layer by layer, alternating): the refresh with K-Means trained on
every key
(`memory.kmeans_max_points = 0`) and on the sample (`memory.kmeans_max_points` of the config);
seconds per refresh, and the prototypes' quality as the K-Means inertia over the WHOLE bank
(sum of squared distances of every key to its nearest centroid), sample / all.

Share of XE wall time (the <= 5% target):

    share = refresh_seconds x refreshes_per_epoch / epoch_seconds
          = refresh_seconds x (steps_per_epoch / refresh_stride) / (steps_per_epoch / steps_per_s)
          = refresh_seconds x steps_per_s / refresh_stride

(epoch_seconds = the training steps alone, refreshes not counted; steps_per_epoch = train
images x 5 captions / batch size = 113,287 x 5 / 50 = 11,329 at COCO, 22.7 refreshes per epoch
at stride 500). The step rate is measured here (`--measure-steps` XE steps of the COCO-size
decoder on this machine's device, as `bench/gpu_check.py`'s train_step) and also stated
(`--steps-per-s`, e.g. a GPU's rate): refresh seconds measured on a CPU say nothing about a
GPU refresh, and the shares at stated rates are for FAISS running where it ran here.

    .venv/bin/python -m bench.refresh [--config configs/coco.toml] [--set memory.bank_cap=...]
        [--layers N] [--steps-per-s 5 10 20] [--measure-steps 3]
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import faiss
import numpy as np
import torch

from bench.common import (CAPTIONS_PER_IMAGE, add_overrides, config_path, make_parser,
                          print_report, timed)
from shared.config import Config, load_config
from shared.prototypes import faiss_gpus, fit_sample_size, use_gpu_for
from train.self_memory import layer_prototypes, to_bank_dtype

COCO_TRAIN_IMAGES = 113_287  # Karpathy train + restval


def random_bank(n: int, width: int, seed: int, centres: int = 4096
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Float16 keys / values [n, width] around `centres` random centres (unit noise)."""
    rng = np.random.default_rng(seed)
    centre_keys = rng.standard_normal((centres, width), dtype=np.float32) * 2
    labels = rng.integers(0, centres, n)
    keys = centre_keys[labels] + rng.standard_normal((n, width), dtype=np.float32)
    values = rng.standard_normal((n, width), dtype=np.float32)
    return to_bank_dtype(torch.from_numpy(keys)), to_bank_dtype(torch.from_numpy(values))


def timed_refreshes(banks: list, configs: dict, gpu_device: int | None) -> dict:
    """One refresh per config, layer by layer and alternating between the configs (so a
    change in the machine's load hits both sides alike); per config the summed seconds."""
    runs = {name: {"seconds": 0.0, "fit_points": [], "inertia": [], "layer_seconds": []}
            for name in configs}
    for bank in banks:
        for name, config in configs.items():
            (_, (stats,)), seconds = timed(lambda: layer_prototypes([bank], config, gpu_device))
            run = runs[name]
            run["seconds"] += seconds
            run["fit_points"].append(stats.n_fit_points)
            run["inertia"].append(stats.inertia)
            run["layer_seconds"].append(round(seconds, 2))
    return runs


def measure_refresh(config: Config, layers: int = 0, seed: int = 0) -> dict:
    """One prototype refresh at `config`'s sizes (`memory.bank_cap` random keys of width
    `decoder.d_model` per layer, `layers` of them, default every decoder layer), as the trainer
    runs it: seconds, where FAISS ran (`cluster.device`), the points K-Means trained on and
    the inertia over the whole banks (`bench/gpu_check.py`'s `refresh` section)."""
    mem = config.memory
    layers = layers or config.decoder.n_dec_layers
    gpu_device = 0 if faiss_gpus(use_gpu_for(config.cluster.device)) else None
    banks = [random_bank(mem.bank_cap, config.decoder.d_model, seed + layer)
             for layer in range(layers)]
    run = timed_refreshes(banks, {"refresh": config}, gpu_device)["refresh"]
    return {"layers": layers, "bank_keys": mem.bank_cap, "width": config.decoder.d_model,
            "m": mem.n_prototypes, "knn": mem.knn, "n_iter": config.cluster.n_iter,
            "kmeans_max_points": mem.kmeans_max_points, "fit_points": run["fit_points"],
            "faiss": faiss.__version__, "faiss_on": "gpu" if gpu_device is not None else "cpu",
            "seconds": round(run["seconds"], 2), "layer_seconds": run["layer_seconds"],
            "share_of_xe_at_5_steps_per_s": round(run["seconds"] * 5 / mem.refresh_stride, 4),
            "inertia": round(sum(run["inertia"]), 2)}


def measure_step_rate(config_file: Path, sets: list[str], device: torch.device,
                      steps: int) -> dict:
    """XE steps/s of the COCO-size decoder on `device` (bench/gpu_check.py's train_step)."""
    from bench.gpu_check import check_train_step
    precision = "bf16" if device.type == "cuda" else "fp32"
    overrides = [*sets, f'train.precision="{precision}"']
    if config_file.resolve() != config_path("coco").resolve():
        raise SystemExit("--measure-steps uses configs/coco.toml sizes; use --measure-steps 0")
    return check_train_step(device, visual_tokens=256, vocab_size=10_000, steps=steps,
                            warmup=1, overrides=overrides)


def main() -> None:
    parser = make_parser(__doc__)
    parser.add_argument("--config", type=Path, default=config_path("coco"))
    add_overrides(parser, dest="sets")
    parser.add_argument("--layers", type=int, default=0,
                        help="banks to refresh (default: decoder.n_dec_layers); the per-refresh "
                             "figures are scaled to all layers")
    parser.add_argument("--steps-per-s", type=float, nargs="*", default=[5.0, 10.0, 20.0],
                        help="stated XE step rates to report the share at")
    parser.add_argument("--measure-steps", type=int, default=3,
                        help="timed XE steps of the COCO-size decoder here (0: skip)")
    parser.add_argument("--train-images", type=int, default=COCO_TRAIN_IMAGES)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    config = load_config(args.config, args.sets)
    mem = config.memory
    all_layers = config.decoder.n_dec_layers
    layers = args.layers or all_layers
    width, n = config.decoder.d_model, mem.bank_cap
    print(f"refresh bench: {layers} of {all_layers} layer banks of {n:,} float16 keys x {width}, "
          f"m={mem.n_prototypes}, knn={mem.knn}, cluster.n_iter={config.cluster.n_iter}, "
          f"FAISS {faiss.__version__} on "
          f"{'GPU 0' if faiss_gpus(use_gpu_for(config.cluster.device)) else 'CPU'} "
          f"({faiss.omp_get_max_threads()} threads, {os.cpu_count()} cpus)", flush=True)
    banks = [random_bank(n, width, args.seed + layer) for layer in range(layers)]

    every = copy.deepcopy(config)
    every.memory.kmeans_max_points = 0
    per_centroid, sample = fit_sample_size(n, mem.n_prototypes, mem.kmeans_max_points or None)
    faiss_default = mem.n_prototypes * 256
    print(f"K-Means sample: memory.kmeans_max_points={mem.kmeans_max_points:,} -> FAISS "
          f"max_points_per_centroid={per_centroid} -> {sample:,} of {n:,} keys (FAISS's default "
          f"256 per centroid = {faiss_default:,} would "
          f"{'not sub-sample this bank' if faiss_default >= n else 'sub-sample it'})",
          flush=True)
    gpu_device = 0 if faiss_gpus(use_gpu_for(config.cluster.device)) else None
    runs = timed_refreshes(banks, {"all keys": every, "sample": config}, gpu_device)
    for name, run in runs.items():
        print(f"  {name}: {run['seconds']:.1f} s for {layers} layer(s) "
              f"({' + '.join(f'{s:.1f}' for s in run['layer_seconds'])})", flush=True)

    scale = all_layers / layers
    steps_per_epoch = args.train_images * CAPTIONS_PER_IMAGE / config.train.batch_size
    refreshes = steps_per_epoch / mem.refresh_stride
    rates: list[tuple[str, float]] = []
    measured = None
    if args.measure_steps > 0:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        measured = measure_step_rate(args.config, args.sets, device, args.measure_steps)
        rate = 1000.0 / measured["ms_per_step"]
        rates.append((f"measured {measured['device']} {rate:.3g} steps/s", rate))
    rates += [(f"stated {rate:g} steps/s", rate) for rate in args.steps_per_s]

    print(f"\nshare of XE wall time = refresh_s x refreshes/epoch / epoch_s = refresh_s x "
          f"steps_per_s / refresh_stride; steps/epoch = {args.train_images:,} x "
          f"{CAPTIONS_PER_IMAGE} / {config.train.batch_size} = {steps_per_epoch:,.0f}, "
          f"refreshes/epoch = {steps_per_epoch:,.0f} / {mem.refresh_stride} = {refreshes:.1f}")
    header = "| | " + " | ".join(["all keys", "sample", "all / sample"]) + " |"
    print(header + "\n|---|---:|---:|---:|")
    secs = {k: v["seconds"] * scale for k, v in runs.items()}
    print(f"| seconds per refresh ({all_layers} layers) | {secs['all keys']:.1f} | "
          f"{secs['sample']:.1f} | {secs['all keys'] / secs['sample']:.2f}x |")
    inertia = {k: sum(v["inertia"]) for k, v in runs.items()}
    print(f"| K-Means inertia over the whole bank | {inertia['all keys']:.5g} | "
          f"{inertia['sample']:.5g} | sample / all = "
          f"{inertia['sample'] / inertia['all keys']:.4f} |")
    shares = {}
    for label, rate in rates:
        share = {k: s * rate / mem.refresh_stride for k, s in secs.items()}
        shares[label] = share
        print(f"| share of XE time at {label} | {100 * share['all keys']:.1f}% | "
              f"{100 * share['sample']:.1f}% | |")
    for label, rate in rates:
        print(f"<= 5% at {label} needs a refresh <= 0.05 x {mem.refresh_stride} / {rate:.3g} = "
              f"{0.05 * mem.refresh_stride / rate:.2f} s")
    print_report({
        "bank_keys": n, "width": width, "m": mem.n_prototypes, "knn": mem.knn,
        "n_iter": config.cluster.n_iter, "layers_run": layers, "layers": all_layers,
        "kmeans_max_points": mem.kmeans_max_points, "fit_points": sample,
        "faiss": faiss.__version__, "faiss_on": "gpu" if gpu_device is not None else "cpu",
        "threads": faiss.omp_get_max_threads(),
        "seconds_per_refresh": {k: round(v, 2) for k, v in secs.items()},
        "per_layer_seconds": {k: v["layer_seconds"] for k, v in runs.items()},
        "inertia_sample_over_all": round(inertia["sample"] / inertia["all keys"], 5),
        "steps_per_epoch": round(steps_per_epoch), "refreshes_per_epoch": round(refreshes, 2),
        "measured_step": measured,
        "share_of_xe_time": {label: {k: round(v, 4) for k, v in s.items()}
                             for label, s in shares.items()}})


if __name__ == "__main__":
    main()
