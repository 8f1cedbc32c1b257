"""`extract clip`: run the frozen CLIP once over every image into a row-chunked feature store.

Writes per row (one image): `patch_tokens` [P, W] (after ln_post, without CLS), `image_embed`
[E] (pooled, projected), `image_ids`, `valid` (0 where the image could not be read); and once:
`visual_proj` [W, E], the projection FSGR uses to bring patch tokens into the joint space; the
store attributes also record the model's `logit_scale.exp()` (FSGR's patch-concept scale).
`clip.patch_attention = "csa"` takes the patch tokens from the last block's correlative
self-attention (SCLIP; `shared.clip_model.encode_images`); `image_embed` stays the standard one.
Images are decoded in DataLoader workers; chunks are written by a background thread while the
next batch runs; each chunk is committed atomically, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from shared.chunked_stage import ChunkedOutput, Shard, failures_path
from shared.clip_model import ClipBundle, create_clip, encode_images
from shared.config import Config
from shared.devices import autocast, resolve_device
from shared.feature_store import ArraySpec
from shared.images import ImageError, load_rgb
from shared.karpathy import ImageRecord, load_karpathy
from shared.stages import clip_stage


@dataclass
class ExtractResult:
    """What a run of `extract clip` did."""

    store: Path
    skipped: bool
    complete: bool
    processed: int = 0
    failed: int = 0
    seconds: float = 0.0
    messages: list[str] = field(default_factory=list)


class ImageFiles(Dataset):
    """Rows -> (row, preprocessed image tensor, failure reason or '')."""

    def __init__(self, records: list[ImageRecord], preprocess: Any, image_size: int) -> None:
        self.records, self.preprocess, self.image_size = records, preprocess, image_size

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, row: int) -> tuple[int, torch.Tensor, str]:
        record = self.records[row]
        try:
            image = load_rgb(record.path, target_size=self.image_size)
            return row, self.preprocess(image), ""
        except ImageError as err:
            reason = str(err)
        except Exception as err:  # one bad file must not end a long run: record it instead
            reason = f"{type(err).__name__}: {err}"
        return row, torch.zeros(3, self.image_size, self.image_size), reason


def chunk_batches(chunks: list[int], rows_per_chunk: int, n_rows: int,
                  batch_size: int) -> list[list[int]]:
    """Batches of rows that never straddle a chunk boundary (several whole chunks per batch
    when the batch is larger than a chunk), so a resumed run computes the same batches."""
    batches: list[list[int]] = []
    per_batch = max(1, batch_size // rows_per_chunk)
    if batch_size < rows_per_chunk:
        for chunk in chunks:
            rows = list(range(chunk * rows_per_chunk, min((chunk + 1) * rows_per_chunk, n_rows)))
            batches.extend(rows[i:i + batch_size] for i in range(0, len(rows), batch_size))
        return batches
    for i in range(0, len(chunks), per_batch):
        group = chunks[i:i + per_batch]
        batches.append([r for c in group for r in
                        range(c * rows_per_chunk, min((c + 1) * rows_per_chunk, n_rows))])
    return batches


def store_arrays(bundle: ClipBundle, dtype: str) -> list[ArraySpec]:
    """Array layout of the CLIP store, sized from the model (never hard-coded)."""
    return [ArraySpec("patch_tokens", (bundle.n_patches, bundle.width), dtype),
            ArraySpec("image_embed", (bundle.embed_dim,), dtype),
            ArraySpec("image_ids", (), "int64"),
            ArraySpec("valid", (), "uint8"),
            ArraySpec("visual_proj", (bundle.width, bundle.embed_dim), "float32", per_row=False)]


def store_attrs(bundle: ClipBundle, config: Config) -> dict[str, Any]:
    """Attributes later stages check before trusting the cache."""
    return {"kind": "clip", "model": bundle.name, "pretrained": config.clip.pretrained,
            "grid": list(bundle.grid_size), "n_patches": bundle.n_patches,
            "width": bundle.width, "embed_dim": bundle.embed_dim,
            "image_size": bundle.image_size, "patch_attention": bundle.patch_attention,
            "logit_scale": float(bundle.model.logit_scale.detach().float().exp())}


class _ChunkAssembler:
    """Collects batch outputs per chunk and hands full chunks to a background writer."""

    def __init__(self, output: ChunkedOutput, records: list[ImageRecord], dtype: str) -> None:
        self.output, self.records, self.dtype = output, records, np.dtype(dtype)
        self.rpc = output.store.rows_per_chunk  # type: ignore[union-attr]
        self.n_rows = len(records)
        self.buffers: dict[int, dict[str, Any]] = {}
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.pending: list[Future] = []
        self.failed = 0

    def add(self, rows: list[int], pooled: np.ndarray, tokens: np.ndarray,
            reasons: list[str]) -> None:
        for i, row in enumerate(rows):
            chunk = row // self.rpc
            start = chunk * self.rpc
            size = min(start + self.rpc, self.n_rows) - start
            buf = self.buffers.get(chunk)
            if buf is None:
                buf = self.buffers[chunk] = {
                    "patch_tokens": np.zeros((size, *tokens.shape[1:]), self.dtype),
                    "image_embed": np.zeros((size, pooled.shape[1]), self.dtype),
                    "valid": np.zeros(size, np.uint8), "filled": 0, "failures": []}
            if reasons[i]:
                record = self.records[row]
                buf["failures"].append({"row": row, "image_id": record.image_id,
                                        "path": str(record.path), "reason": reasons[i]})
                self.failed += 1
            else:
                buf["patch_tokens"][row - start] = tokens[i]
                buf["image_embed"][row - start] = pooled[i]
                buf["valid"][row - start] = 1
            buf["filled"] += 1
            if buf["filled"] == size:
                self._flush(chunk, start, size)

    def _flush(self, chunk: int, start: int, size: int) -> None:
        buf = self.buffers.pop(chunk)
        ids = np.array([r.image_id for r in self.records[start:start + size]], np.int64)
        values = {"patch_tokens": buf["patch_tokens"], "image_embed": buf["image_embed"],
                  "valid": buf["valid"], "image_ids": ids}
        while len(self.pending) >= 2:  # bound memory: at most two chunks in flight
            self.pending.pop(0).result()
        self.pending.append(self.pool.submit(self.output.write_chunk, chunk, values,
                                             buf["failures"]))

    def close(self) -> None:
        for fut in self.pending:
            fut.result()
        self.pool.shutdown()


def extract_clip(config: Config, *, force: bool = False, shard: Shard = Shard(),
                 progress: bool = True) -> ExtractResult:
    """Fill (or resume, or skip) the CLIP feature store of `config`'s dataset."""
    spec = clip_stage(config)
    output = ChunkedOutput(spec, config, force=force, shard=shard)
    if output.up_to_date:
        return ExtractResult(spec.output, skipped=True, complete=True,
                             failed=output.failure_count(),
                             messages=[f"extract clip: {output.reason}"])
    if shard.count > 1 and config.store.format != "zarr":
        raise ValueError("--shard needs store.format = 'zarr' (HDF5 files take one writer)")
    records = load_karpathy(config.data.karpathy_json, config.data.image_root)
    device = resolve_device(config.clip.device)
    bundle = create_clip(config.clip.model, config.clip.pretrained, device=device,
                         patch_attention=config.clip.patch_attention)
    visual_proj = bundle.model.visual.proj
    proj = (visual_proj.detach().float().cpu().numpy() if visual_proj is not None
            else np.eye(bundle.width, bundle.embed_dim, dtype=np.float32))
    action = output.open(store_arrays(bundle, config.store.dtype), len(records),
                         store_attrs(bundle, config), whole={"visual_proj": proj})
    messages = [f"extract clip: {action}"]
    chunks = output.pending_chunks()
    rpc = config.store.rows_per_chunk
    batches = chunk_batches(chunks, rpc, len(records), config.clip.batch_size)
    dataset = ImageFiles(records, bundle.preprocess, bundle.image_size)
    workers = config.clip.num_workers
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=workers,
                        pin_memory=device.type == "cuda", persistent_workers=False,
                        prefetch_factor=4 if workers > 0 else None)
    assembler = _ChunkAssembler(output, records, config.store.dtype)
    n_todo = sum(len(b) for b in batches)
    started = time.perf_counter()
    try:
        with tqdm(total=n_todo, unit="img", desc="extract clip", disable=not progress) as bar:
            for rows, images, reasons in loader:
                rows, images = rows.tolist(), images.to(device, non_blocking=True)
                with torch.no_grad(), autocast(device, config.clip.precision):
                    pooled, tokens = encode_images(bundle, images)
                assembler.add(rows, pooled.float().cpu().numpy(), tokens.float().cpu().numpy(),
                              list(reasons))
                bar.update(len(rows))
    finally:
        assembler.close()
    seconds = time.perf_counter() - started
    complete = output.finish({"images": len(records), "model": bundle.name,
                              "grid": list(bundle.grid_size),
                              "patch_attention": bundle.patch_attention})
    failed = output.failure_count() if complete else assembler.failed
    messages.append(f"extract clip: {n_todo} images in {seconds:.1f}s "
                    f"({n_todo / max(seconds, 1e-9):.1f} img/s), {failed} failed"
                    + (f" (see {failures_path(spec.output)})" if failed else "")
                    + ("" if complete else "; other shards still running"))
    return ExtractResult(spec.output, skipped=False, complete=complete, processed=n_todo,
                         failed=failed, seconds=seconds, messages=messages)
