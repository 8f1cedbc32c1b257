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
                          side_by_side)
from extract.fsgr_encode import encode_fsgr
from shared.models.factory import FsgrMeta, build_encoder
from shared.feature_store import ArraySpec, FeatureStore
from shared.manifest import write_manifest
from shared.stages import clip_stage, concepts_stage, fit_stage, vocab_stage
from shared.vocabulary import SPECIALS, Vocabulary


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
    rng = np.random.default_rng(0)
    n_patches = args.grid * args.grid

    with tempfile.TemporaryDirectory() as tmp:
        json_path = Path(tmp) / "dataset.json"
        json_path.write_text(json.dumps({"images": []}))
        sets = [f'data.run_root="{tmp}"', f'data.karpathy_json="{json_path}"',
                'clip.model="bench-clip"', 'clip.pretrained="random"', 'run.device="cpu"',
                f'store.format="{args.format}"']
        config = bench_config("coco", sets)
        # a synthetic CLIP cache + concept codebook + FSGR checkpoint, with manifests
        clip = clip_stage(config)
        proj = rng.standard_normal((args.width, args.embed)).astype(np.float32) / 30
        with FeatureStore.create(clip.output, [
                ArraySpec("patch_tokens", (n_patches, args.width), "float16"),
                ArraySpec("image_embed", (args.embed,), "float16"),
                ArraySpec("image_ids", (), "int64"), ArraySpec("valid", (), "uint8"),
                ArraySpec("visual_proj", (args.width, args.embed), "float32", per_row=False)],
                args.images, config.store.rows_per_chunk,
                {"model": "bench-clip", "grid": [args.grid, args.grid]}) as store:
            for start in range(0, args.images, config.store.rows_per_chunk):
                stop = min(start + config.store.rows_per_chunk, args.images)
                store.write_rows(start, {
                    "patch_tokens": rng.standard_normal((stop - start, n_patches, args.width),
                                                        np.float32).astype(np.float16),
                    "image_embed": rng.standard_normal((stop - start, args.embed),
                                                       np.float32).astype(np.float16),
                    "image_ids": np.arange(start, stop), "valid": np.ones(stop - start, np.uint8)})
            store.write_whole("visual_proj", proj)
        write_manifest(clip, config)
        vocab = vocab_stage(config)
        Vocabulary(list(SPECIALS)).save(vocab.output)
        write_manifest(vocab, config)
        concepts = concepts_stage(config)
        concepts.output.parent.mkdir(parents=True, exist_ok=True)
        concepts.output.write_bytes(b"synthetic")
        write_manifest(concepts, config)
        meta = FsgrMeta("bench-clip", (args.grid, args.grid), args.width, args.embed,
                        "synthetic", args.concepts)
        codebook = torch.randn(args.concepts, args.embed)
        encoder = build_encoder(config, meta, torch.from_numpy(proj), codebook).eval()
        fit = fit_stage(config)
        torch.save({"encoder": encoder.state_dict(), "meta": {**meta.__dict__,
                    "concepts_identity": json.loads(concepts.manifest_path.read_text())[
                        "identity"]}}, fit.output)
        write_manifest(fit, config)

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
