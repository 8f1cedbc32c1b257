"""Benchmark: `extract clip` throughput versus the bare model forward on pre-decoded tensors.

Same model (ViT-B-16, random weights: its forward dominates on CPU), same images, same batch
size, measured side by side in one process, alternating, best of `--repeats`. The ratio shows
how well decoding (DataLoader workers, or the GPU with `--decode gpu`) and writing (background
thread) hide behind compute. Also reported for `extract clip`: images/s, the model's GFLOP/s
(forward FLOPs per image counted by torch.utils.flop_counter x images/s) and the share of its
time the loop waited for the DataLoader (`input_wait_share`).

    .venv/bin/python -m bench.extract [--images 96] [--batch 16] [--workers 2]
        [--device cpu|cuda] [--decode cpu|gpu] [--precision fp32|bf16|auto]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.common import (bench_config, best_rate, image_set_overrides, make_parser,
                          peak_rss_mib, print_report, side_by_side, write_image_set)
from extract.clip_features import chunk_batches, extract_clip
from shared.clip_model import ClipBundle, create_clip, encode_images
from shared.devices import autocast
from shared.images import load_rgb
from shared.karpathy import load_karpathy


def forward_flops_per_image(bundle: ClipBundle, device: torch.device) -> float:
    """Forward FLOPs of the vision tower (as `extract clip` runs it) for one image."""
    images = torch.randn(1, 3, bundle.image_size, bundle.image_size, device=device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        encode_images(bundle, images)
    return float(counter.get_total_flops())


def main() -> None:
    parser = make_parser(__doc__)
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--format", default="zarr", choices=["zarr", "hdf5"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--decode", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--size", type=int, default=320, help="side of the generated JPEGs")
    args = parser.parse_args()
    if args.decode == "gpu" and args.device != "cuda":
        raise SystemExit("bench.extract: --decode gpu needs --device cuda")
    device = torch.device(args.device)

    with tempfile.TemporaryDirectory() as tmp:
        data = write_image_set(Path(tmp) / "data", args.images, size=args.size)
        bundle = create_clip(args.model, "random", device=device)
        records = load_karpathy(data / "dataset.json", data / "images")
        batches = chunk_batches(list(range(-(-args.images // args.batch))), args.batch,
                                args.images, args.batch)
        decoded = [torch.stack([bundle.preprocess(load_rgb(records[r].path, bundle.image_size))
                                for r in batch]).to(device) for batch in batches]
        summaries: list[dict] = []

        def bare(_: int) -> float:
            start = time.perf_counter()
            with torch.no_grad(), autocast(device, args.precision):
                for images in decoded:
                    pooled, tokens = encode_images(bundle, images)
                    pooled.float().cpu().numpy(), tokens.float().cpu().numpy()
            return time.perf_counter() - start

        def pipeline(i: int) -> float:
            config = bench_config("coco", [
                *image_set_overrides(data, Path(tmp) / f"r{i}", args.model, args.device,
                                     args.batch, args.workers), f'store.format="{args.format}"',
                f'clip.decode="{args.decode}"', f'clip.precision="{args.precision}"'])
            result = extract_clip(config, progress=False)
            assert result.complete and result.summary["processed"] == args.images
            summaries.append(result.summary)
            return result.summary["seconds"]

        bare_s, pipe_s = side_by_side(args.repeats, bare, pipeline)
        bare_ips, pipe_ips = best_rate(args.images, bare_s), best_rate(args.images, pipe_s)
        best = min(summaries, key=lambda summary: summary["seconds"])
        flops = forward_flops_per_image(bundle, device)
        report = {"model": args.model, "images": args.images, "image_size": args.size,
                  "batch": args.batch, "workers": args.workers, "store": args.format,
                  "device": args.device, "decode": args.decode, "precision": args.precision,
                  "torch_threads": torch.get_num_threads(),
                  "bare_forward_img_per_s": round(bare_ips, 2),
                  "extract_clip_img_per_s": round(pipe_ips, 2),
                  "extract_clip_gflops_per_s": round(pipe_ips * flops / 1e9, 1),
                  "gflops_per_image": round(flops / 1e9, 2),
                  "input_wait_share": round(best["input_wait_seconds"] / best["seconds"], 3),
                  "ratio": round(pipe_ips / bare_ips, 3), "target_ratio": 0.85,
                  "peak_rss": {"main_mib": round(peak_rss_mib(), 1),
                               "largest_child_mib": round(peak_rss_mib(children=True), 1)}}
        print_report(report)


if __name__ == "__main__":
    main()
