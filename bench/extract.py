"""Benchmark: `extract clip` throughput versus the bare model forward on pre-decoded tensors.

Same model (ViT-B-16, random weights: its forward dominates on CPU), same images, same batch
size, measured side by side in one process, alternating, best of `--repeats`. The ratio shows
how well decoding (DataLoader workers) and writing (background thread) hide behind compute.

    .venv/bin/python -m bench.extract [--images 96] [--batch 16] [--workers 2]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from bench.common import (bench_config, best_rate, image_set_overrides, make_parser,
                          peak_rss_mib, print_report, side_by_side, write_image_set)
from extract.clip_features import chunk_batches, extract_clip
from shared.clip_model import create_clip, encode_images
from shared.images import load_rgb
from shared.karpathy import load_karpathy


def main() -> None:
    parser = make_parser(__doc__)
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--format", default="zarr", choices=["zarr", "hdf5"])
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data = write_image_set(Path(tmp) / "data", args.images)
        bundle = create_clip(args.model, "random")
        records = load_karpathy(data / "dataset.json", data / "images")
        batches = chunk_batches(list(range(-(-args.images // args.batch))), args.batch,
                                args.images, args.batch)
        decoded = [torch.stack([bundle.preprocess(load_rgb(records[r].path, bundle.image_size))
                                for r in batch]) for batch in batches]

        def bare(_: int) -> float:
            start = time.perf_counter()
            with torch.no_grad():
                for images in decoded:
                    pooled, tokens = encode_images(bundle, images)
                    pooled.numpy(), tokens.numpy()
            return time.perf_counter() - start

        def pipeline(i: int) -> float:
            config = bench_config("coco", [
                *image_set_overrides(data, Path(tmp) / f"r{i}", args.model, "cpu", args.batch,
                                     args.workers), f'store.format="{args.format}"'])
            result = extract_clip(config, progress=False)
            assert result.complete and result.summary["processed"] == args.images
            return result.summary["seconds"]

        bare_s, pipe_s = side_by_side(args.repeats, bare, pipeline)
        bare_ips, pipe_ips = best_rate(args.images, bare_s), best_rate(args.images, pipe_s)
        report = {"model": args.model, "images": args.images, "batch": args.batch,
                  "workers": args.workers, "store": args.format,
                  "torch_threads": torch.get_num_threads(),
                  "bare_forward_img_per_s": round(bare_ips, 2),
                  "extract_clip_img_per_s": round(pipe_ips, 2),
                  "ratio": round(pipe_ips / bare_ips, 3), "target_ratio": 0.85,
                  "peak_rss": {"main_mib": round(peak_rss_mib(), 1),
                               "largest_child_mib": round(peak_rss_mib(children=True), 1)}}
        print_report(report)


if __name__ == "__main__":
    main()
