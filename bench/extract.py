"""Benchmark: `extract clip` throughput versus the bare model forward on pre-decoded tensors.

Same model (ViT-B-16, random weights: its forward dominates on CPU), same images, same batch
size, measured side by side in one process, alternating, best of `--repeats`. The ratio shows
how well decoding (DataLoader workers) and writing (background thread) hide behind compute.

    .venv/bin/python bench/extract.py [--images 96] [--batch 16] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.synthetic_images import write_image_set  # noqa: E402
from extract.clip_features import chunk_batches, extract_clip  # noqa: E402
from shared.clip_model import create_clip, encode_images  # noqa: E402
from shared.config import load_config  # noqa: E402
from shared.images import load_rgb  # noqa: E402
from shared.karpathy import load_karpathy  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def peak_rss_mib() -> dict[str, float]:
    """Peak resident memory of this process and of its (DataLoader worker) children."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"main_mib": round(own, 1), "largest_child_mib": round(kids, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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

        def bare() -> float:
            start = time.perf_counter()
            with torch.no_grad():
                for images in decoded:
                    pooled, tokens = encode_images(bundle, images)
                    pooled.numpy(), tokens.numpy()
            return time.perf_counter() - start

        def pipeline(i: int) -> float:
            config = load_config(REPO / "configs" / "coco.toml", [
                f'data.karpathy_json="{data / "dataset.json"}"',
                f'data.image_root="{data / "images"}"', f'data.run_root="{Path(tmp) / f"r{i}"}"',
                f'clip.model="{args.model}"', 'clip.pretrained="random"', 'clip.device="cpu"',
                f"clip.batch_size={args.batch}", f"clip.num_workers={args.workers}",
                f"store.rows_per_chunk={args.batch}", f'store.format="{args.format}"'])
            result = extract_clip(config, progress=False)
            assert result.complete and result.processed == args.images
            return result.seconds

        bare_s, pipe_s = [], []
        for i in range(args.repeats):
            bare_s.append(bare())
            pipe_s.append(pipeline(i))
        bare_ips, pipe_ips = args.images / min(bare_s), args.images / min(pipe_s)
        report = {"model": args.model, "images": args.images, "batch": args.batch,
                  "workers": args.workers, "store": args.format,
                  "torch_threads": torch.get_num_threads(),
                  "bare_forward_img_per_s": round(bare_ips, 2),
                  "extract_clip_img_per_s": round(pipe_ips, 2),
                  "ratio": round(pipe_ips / bare_ips, 3), "target_ratio": 0.85,
                  "peak_rss": peak_rss_mib()}
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
