"""`extract encode`: run the fitted FSGR modules once over every image of the CLIP cache.

Writes `features/fsgr.{zarr|h5}`: `features` V~ [N, P, d_model] (float16), `codebook_index`
[N, P] (index into the concept vocabulary), `topk_ids` [N, k], `image_ids`, `valid`. Chunks
line up with the CLIP cache's; resumable, shardable (`--shard i/n` or torchrun: each process
encodes its shard's chunks on its own GPU) and manifest-checked like `extract clip`.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from shared.models.factory import FsgrMeta, load_fsgr
from shared.chunked_stage import ChunkedOutput, Shard, rank_device, run_chunked
from shared.config import Config
from shared.devices import autocast, resolve_device
from shared.feature_store import ArraySpec, FeatureStore
from shared.manifest import read_manifest, require_current, upstream_token
from shared.stage_runner import StageResult
from shared.stages import clip_stage, concepts_stage, encode_stage, fit_stage


def check_compatible(meta: FsgrMeta, clip_attrs: dict, concepts_identity: str,
                     store_name: str) -> None:
    """Refuse a cache from another CLIP model, grid size or concept vocabulary than the fit."""
    if clip_attrs["model"] != meta.clip_model:
        raise RuntimeError(f"{store_name} was written by CLIP '{clip_attrs['model']}' but the "
                           f"FSGR modules were fitted on '{meta.clip_model}'")
    if tuple(clip_attrs["grid"]) != tuple(meta.grid):
        raise RuntimeError(f"{store_name} has a {clip_attrs['grid'][0]}x{clip_attrs['grid'][1]} "
                           f"patch grid but the FSGR modules were fitted on "
                           f"{meta.grid[0]}x{meta.grid[1]}")
    if concepts_identity != meta.concepts_identity:
        raise RuntimeError("the concept vocabulary (fsgr/concepts.npz) differs from the one the "
                           "FSGR modules were fitted with: re-run `python -m extract fit`")


def _encode_chunk(encoder: torch.nn.Module, data: dict[str, np.ndarray], meta: FsgrMeta,
                  config: Config, device: torch.device) -> dict[str, np.ndarray]:
    """FSGR outputs of one chunk of CLIP rows (rows that failed extraction stay zero)."""
    tokens = torch.from_numpy(data["patch_tokens"]).to(device)
    pooled = torch.from_numpy(data["image_embed"]).to(device)
    with torch.no_grad(), autocast(device, config.clip.precision):
        out = encoder(tokens, pooled, meta.grid)
    keep = data["valid"][:, None, None].astype(bool)
    return {"features": np.where(keep, out.features.float().cpu().numpy(), 0).astype(
                config.store.dtype),
            "codebook_index": out.codebook_index.cpu().numpy().astype(np.int32),
            "topk_ids": out.topk_ids.cpu().numpy().astype(np.int32),
            "image_ids": data["image_ids"], "valid": data["valid"]}


def encode_fsgr(config: Config, force: bool = False, progress: bool = True,
                shard: Shard = Shard()) -> StageResult:
    """Fill (or resume, or skip) the FSGR feature store, or `shard`'s chunks of it (the last
    shard to finish writes the manifest).

    Raises `OutputBusy` when another process is writing the store (other shards excepted).
    """
    require_current(clip_stage(config), config)
    require_current(fit_stage(config), config)
    return run_chunked(encode_stage(config), config, lambda output: _encode(output, progress),
                       force=force, shard=shard)


def _encode(output: ChunkedOutput, progress: bool) -> dict[str, Any]:
    """The work of `encode_fsgr` once it is known there is some; returns the summary."""
    config, run, clip_path = output.config, output.run, clip_stage(output.config).output
    if output.shard.count > 1 and config.store.format != "zarr":
        raise ValueError("--shard needs store.format = 'zarr' (HDF5 files take one writer)")
    device = rank_device(resolve_device(config.run.device))
    encoder, meta = load_fsgr(config, device)
    concepts = read_manifest(concepts_stage(config).output) or {}
    with FeatureStore.open(clip_path) as clip_store:
        check_compatible(meta, clip_store.attrs, upstream_token(concepts) if concepts else "",
                         str(clip_path))
        if clip_store.rows_per_chunk != config.store.rows_per_chunk:
            raise RuntimeError(f"{clip_path} has {clip_store.rows_per_chunk} rows per "
                               f"chunk but store.rows_per_chunk is {config.store.rows_per_chunk}")
        n_rows, k = clip_store.n_rows, min(config.fsgr.top_k, meta.n_concepts)
        n_patches = meta.grid[0] * meta.grid[1]
        arrays = [ArraySpec("features", (n_patches, config.fsgr.d_model), config.store.dtype),
                  ArraySpec("codebook_index", (n_patches,), "int32"),
                  ArraySpec("topk_ids", (k,), "int32"),
                  ArraySpec("image_ids", (), "int64"), ArraySpec("valid", (), "uint8")]
        attrs = {"kind": "fsgr", "clip_model": meta.clip_model, "grid": list(meta.grid),
                 "n_patches": n_patches, "width": config.fsgr.d_model, "top_k": k,
                 "n_concepts": meta.n_concepts, "concepts_identity": meta.concepts_identity}
        run.say(output.open(arrays, n_rows, attrs))
        chunks = output.pending_chunks()

        def read(chunk: int) -> dict[str, np.ndarray]:
            start, stop = clip_store.chunk_rows(chunk)
            return {name: clip_store.read(name, start, stop)
                    for name in ("patch_tokens", "image_embed", "valid", "image_ids")}

        started, done = time.perf_counter(), 0
        # the next chunk is read and the previous one written while this one computes
        with ThreadPoolExecutor(max_workers=1) as reader, \
                ThreadPoolExecutor(max_workers=1) as writer:
            upcoming = reader.submit(read, chunks[0]) if chunks else None
            writing = None
            for i, chunk in enumerate(tqdm(chunks, desc="extract encode", unit="chunk",
                                           disable=not progress)):
                data = upcoming.result()
                if i + 1 < len(chunks):
                    upcoming = reader.submit(read, chunks[i + 1])
                if output.claim(chunk) is None:  # taken by another process meanwhile
                    continue
                values = _encode_chunk(encoder, data, meta, config, device)
                done += len(values["valid"])
                if writing is not None:
                    writing.result()
                writing = writer.submit(output.write_chunk, chunk, values, [])
            if writing is not None:
                writing.result()
    seconds = time.perf_counter() - started
    failed = output.finish()
    run.say(f"{done} images in {seconds:.1f}s ({done / max(seconds, 1e-9):.1f} img/s)"
            + ("" if run.complete else "; incomplete (other shards still running?)"))
    return {"images": n_rows, "grid": list(meta.grid), "top_k": k, "failed": failed}
