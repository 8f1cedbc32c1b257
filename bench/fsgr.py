"""Benchmark: `extract encode` (reads the CLIP cache, writes the FSGR cache) versus the same
FSGR modules on in-memory tensors, same rows, same chunking, measured side by side.

Builds a synthetic CLIP cache (random float16 tokens in the shape the config's CLIP writes),
random FSGR weights, then times both paths (best of `--repeats`, alternating).

    .venv/bin/python -m bench.fsgr [--images 2048] [--grid 16] [--width 1024]
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import (bench_config, best_rate, make_parser, peak_rss_mib, print_report,
                          side_by_side, write_synthetic_fsgr_inputs)
from extract.fsgr_encode import encode_fsgr
from shared.feature_store import FeatureStore
from shared.stages import clip_stage


def main() -> None:
    parser = make_parser(__doc__)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--grid", type=int, default=16)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--embed", type=int, default=768)
    parser.add_argument("--concepts", type=int, default=4585)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--format", default="zarr", choices=["zarr", "hdf5"])
    args = parser.parse_args()
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as tmp:
        json_path = Path(tmp) / "dataset.json"
        json_path.write_text(json.dumps({"images": []}))
        sets = [f'data.run_root="{tmp}"', f'data.karpathy_json="{json_path}"',
                'clip.model="bench-clip"', 'clip.pretrained="random"', 'run.device="cpu"',
                f'store.format="{args.format}"']
        config = bench_config("coco", sets)
        # a synthetic CLIP cache + concept codebook + FSGR checkpoint, with manifests
        encoder, meta = write_synthetic_fsgr_inputs(config, args.images, args.grid,
                                                    args.width, args.embed, args.concepts)
        clip = clip_stage(config)
        with FeatureStore.open(clip.output) as store:
            tokens = torch.from_numpy(store.read("patch_tokens"))
            pooled = torch.from_numpy(store.read("image_embed"))

        def in_memory(_: int) -> float:
            start = time.perf_counter()
            with torch.no_grad():
                for i in range(0, args.images, config.store.rows_per_chunk):
                    j = i + config.store.rows_per_chunk
                    out = encoder(tokens[i:j], pooled[i:j], meta.grid)
                    out.features.numpy().astype(np.float16), out.codebook_index.numpy()
            return time.perf_counter() - start

        def pipeline(_: int) -> float:
            start = time.perf_counter()
            encode_fsgr(config, force=True, progress=False)
            return time.perf_counter() - start

        memory_s, pipe_s = side_by_side(args.repeats, in_memory, pipeline)
        mem_ips, pipe_ips = best_rate(args.images, memory_s), best_rate(args.images, pipe_s)
        print_report({
            "images": args.images, "grid": args.grid, "clip_width": args.width,
            "d_model": config.fsgr.d_model, "store": args.format,
            "in_memory_img_per_s": round(mem_ips, 1), "extract_encode_img_per_s":
            round(pipe_ips, 1), "ratio": round(pipe_ips / mem_ips, 3),
            "peak_rss_mib": round(peak_rss_mib(), 1)})


if __name__ == "__main__":
    main()
