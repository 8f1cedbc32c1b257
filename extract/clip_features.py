"""`extract clip`: run the frozen CLIP once over every image into a row-chunked feature store.

Writes per row (one image): `patch_tokens` [P, W] (after ln_post, without CLS), `image_embed`
[E] (pooled, projected), `image_ids`, `valid` (0 where the image could not be read); and once:
`visual_proj` [W, E], the projection FSGR uses to bring patch tokens into the joint space; the
store attributes also record the model's `logit_scale.exp()` (FSGR's patch-concept scale).
`clip.patch_attention = "csa"` takes the patch tokens from the last block's correlative
self-attention (SCLIP; `shared.clip_model.encode_images`); `image_embed` stays the standard one.
Images are decoded in DataLoader workers (`clip.decode = "cpu"`), or, with `clip.decode = "gpu"`,
the workers read JPEG bytes and each batch is decoded, resized and normalised on the GPU
(`shared.gpu_decode`; other files and JPEGs the GPU cannot decode take the CPU path). A batch's
outputs are copied back once the next batch is queued, and chunks are written by a background
thread while the next batch runs; each chunk is committed atomically, so a killed run resumes
where it stopped. Under `torchrun` each process fills its shard (`shared.chunked_stage`).
A missing or empty `data.image_root` stops the run before any work. Unreadable images are
listed in `<store>.failures.jsonl`; beyond `clip.max_failed_fraction` of them the store is not
marked complete and the next run re-computes only those rows (`shared.chunked_stage`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from shared.chunked_stage import (ChunkedOutput, ChunkWork, FailureLimit, Shard, failures_path,
                                  rank_device, run_chunked)
from shared.clip_model import ClipBundle, create_clip, encode_images
from shared.config import Config
from shared.devices import autocast, resolve_device
from shared.feature_store import ArraySpec
from shared.gpu_decode import TensorPreprocess, assemble, collate_mixed, jpeg_bytes
from shared.images import ImageError, load_rgb
from shared.karpathy import ImageRecord, load_karpathy
from shared.stage_runner import StageResult
from shared.stages import clip_stage


def load_preprocessed(path: str | Path, preprocess: Any, image_size: int
                      ) -> tuple[torch.Tensor, str]:
    """The CPU path: the image decoded by PIL and preprocessed by open_clip's transform, with
    '' as reason; zeros and the reason when it cannot be read."""
    try:
        image = load_rgb(path, target_size=image_size)
        return preprocess(image), ""
    except ImageError as err:
        reason = str(err)
    except Exception as err:  # one bad file must not end a long run: record it instead
        reason = f"{type(err).__name__}: {err}"
    return torch.zeros(3, image_size, image_size), reason


class ImageFiles(Dataset):
    """Rows -> (row, preprocessed image tensor, failure reason or '').

    With `jpeg_bytes_out` (`clip.decode = "gpu"`) a JPEG the GPU path takes comes back as its
    bytes (a 1-D uint8 tensor) instead, to be decoded in batches on the GPU
    (`shared.gpu_decode`); other files still go through the CPU path here."""

    def __init__(self, records: list[ImageRecord], preprocess: Any, image_size: int,
                 jpeg_bytes_out: bool = False) -> None:
        self.records, self.preprocess, self.image_size = records, preprocess, image_size
        self.jpeg_bytes_out = jpeg_bytes_out

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, row: int) -> tuple[int, torch.Tensor, str]:
        path = self.records[row].path
        if self.jpeg_bytes_out:
            data = jpeg_bytes(path)
            if data is not None:
                return row, data, ""
        return (row, *load_preprocessed(path, self.preprocess, self.image_size))


def pack_batches(groups: Iterable[list[int]], batch_size: int) -> Iterator[list[int]]:
    """Batches from groups of rows (one group per chunk): whole groups are packed together
    while they fit; a larger group is split on its own, so a batch never straddles a chunk
    it does not hold whole, and a resumed run computes the same batches."""
    batch: list[int] = []
    for rows in groups:
        if len(rows) > batch_size:
            if batch:
                yield batch
                batch = []
            yield from (rows[i:i + batch_size] for i in range(0, len(rows), batch_size))
            continue
        if len(batch) + len(rows) > batch_size:
            yield batch
            batch = []
        batch = batch + rows
        if len(batch) == batch_size:  # full: yield before looking at (claiming) the next
            yield batch
            batch = []
    if batch:
        yield batch


def chunk_batches(chunks: list[int], rows_per_chunk: int, n_rows: int,
                  batch_size: int) -> list[list[int]]:
    """`pack_batches` of whole chunks."""
    groups = (list(range(c * rows_per_chunk, min((c + 1) * rows_per_chunk, n_rows)))
              for c in chunks)
    return list(pack_batches(groups, batch_size))


class ClaimedBatches:
    """The loader's batch sampler: claims each pending chunk just before its rows are
    batched (lazily, so a process holds few claims) and records the rows it got."""

    def __init__(self, output: ChunkedOutput, chunks: list[int], batch_size: int) -> None:
        self.output, self.chunks, self.batch_size = output, chunks, batch_size
        self.claimed: dict[int, ChunkWork] = {}

    def _groups(self) -> Iterator[list[int]]:
        for chunk in self.chunks:
            work = self.output.claim(chunk)
            if work is not None:
                self.claimed[chunk] = work
                yield work.rows

    def __iter__(self) -> Iterator[list[int]]:
        return pack_batches(self._groups(), self.batch_size)


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
            "weights": bundle.weights,
            "grid": list(bundle.grid_size), "n_patches": bundle.n_patches,
            "width": bundle.width, "embed_dim": bundle.embed_dim,
            "image_size": bundle.image_size, "patch_attention": bundle.patch_attention,
            "decode": config.clip.decode,
            "logit_scale": float(bundle.model.logit_scale.detach().float().exp())}


class _ChunkAssembler:
    """Collects batch outputs per chunk and hands full chunks (or a chunk's retried rows) to
    a background writer."""

    def __init__(self, output: ChunkedOutput, records: list[ImageRecord], dtype: str,
                 claimed: dict[int, ChunkWork]) -> None:
        self.output, self.records, self.dtype = output, records, np.dtype(dtype)
        self.claimed = claimed
        self.rpc = output.store.rows_per_chunk  # type: ignore[union-attr]
        self.buffers: dict[int, dict[str, Any]] = {}
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.pending: list[Future] = []
        self.failed = 0
        self.retried = 0

    def add(self, rows: list[int], pooled: np.ndarray, tokens: np.ndarray,
            reasons: list[str]) -> None:
        for i, row in enumerate(rows):
            chunk = row // self.rpc
            buf = self.buffers.get(chunk)
            if buf is None:
                work = self.claimed[chunk]
                todo = work.rows
                buf = self.buffers[chunk] = {
                    "rows": todo, "retry": work.retry, "at": {r: j for j, r in enumerate(todo)},
                    "patch_tokens": np.zeros((len(todo), *tokens.shape[1:]), self.dtype),
                    "image_embed": np.zeros((len(todo), pooled.shape[1]), self.dtype),
                    "valid": np.zeros(len(todo), np.uint8), "filled": 0, "failures": []}
            at = buf["at"][row]
            if reasons[i]:
                record = self.records[row]
                buf["failures"].append({"row": row, "image_id": record.image_id,
                                        "path": str(record.path), "reason": reasons[i]})
                self.failed += 1
            else:
                buf["patch_tokens"][at] = tokens[i]
                buf["image_embed"][at] = pooled[i]
                buf["valid"][at] = 1
            buf["filled"] += 1
            if buf["filled"] == len(buf["rows"]):
                self._flush(chunk)

    def _flush(self, chunk: int) -> None:
        buf = self.buffers.pop(chunk)
        values = {"patch_tokens": buf["patch_tokens"], "image_embed": buf["image_embed"],
                  "valid": buf["valid"]}
        while len(self.pending) >= 2:  # bound memory: at most two chunks in flight
            self.pending.pop(0).result()
        if buf["retry"]:
            self.retried += len(buf["rows"])
            job = self.pool.submit(self.output.write_retry, chunk, buf["rows"], values,
                                   buf["failures"])
        else:
            values["image_ids"] = np.array([self.records[r].image_id for r in buf["rows"]],
                                           np.int64)
            job = self.pool.submit(self.output.write_chunk, chunk, values, buf["failures"])
        self.pending.append(job)

    def close(self) -> None:
        for fut in self.pending:
            fut.result()
        self.pool.shutdown()


def check_image_root(root: str) -> None:
    """Refuse a missing, non-folder or empty `data.image_root` before any work."""
    path = Path(root)
    if not path.exists():
        raise FileNotFoundError(f"data.image_root: {path} does not exist "
                                "(a wrong path, or a disk that is not mounted?)")
    if not path.is_dir():
        raise NotADirectoryError(f"data.image_root: {path} is not a folder")
    if next(path.iterdir(), None) is None:
        raise FileNotFoundError(f"data.image_root: {path} is empty "
                                "(a disk that is not mounted?)")


def failure_limit(config: Config) -> FailureLimit:
    """`clip.max_failed_fraction`: the share of unreadable images a complete store may have."""
    return FailureLimit(config.clip.max_failed_fraction, "clip.max_failed_fraction", "images")


def extract_clip(config: Config, *, force: bool = False, shard: Shard = Shard(),
                 progress: bool = True) -> StageResult:
    """Fill (or resume, or skip) the CLIP feature store of `config`'s dataset; the summary
    holds `failed` (also when skipped) and this run's `processed`, `retried`, `seconds`.

    Raises `OutputBusy` when another process writes the store (other shards excepted) and
    `TooManyFailures` when the store is full but more images failed than
    `clip.max_failed_fraction` allows (it is then not marked complete; a re-run retries only
    the failed rows).
    """
    return run_chunked(clip_stage(config), config, lambda output: _run(output, progress),
                       force=force, shard=shard)


GPU_DECODE_DEVICES = ("cuda",)
"""Device types `clip.decode = "gpu"` runs on (the tests add "cpu": the same code on the CPU)."""


def _run(output: ChunkedOutput, progress: bool) -> dict[str, Any]:
    """The work of `extract_clip` once it is known there is some; returns the summary."""
    config, run, store = output.config, output.run, output.spec.output
    if output.shard.count > 1 and config.store.format != "zarr":
        raise ValueError("--shard needs store.format = 'zarr' (HDF5 files take one writer)")
    check_image_root(config.data.image_root)
    records = load_karpathy(config.data.karpathy_json, config.data.image_root)
    device = rank_device(resolve_device(config.run.device))
    gpu_decode = config.clip.decode == "gpu"
    if gpu_decode and device.type not in GPU_DECODE_DEVICES:
        raise ValueError(f"clip.decode = 'gpu' needs a CUDA device (run.device gives "
                         f"{device.type}); use clip.decode = 'cpu'")
    bundle = create_clip(config.clip.model, config.clip.pretrained, device=device,
                         patch_attention=config.clip.patch_attention)
    spec = TensorPreprocess.from_transform(bundle.preprocess) if gpu_decode else None
    visual_proj = bundle.model.visual.proj
    proj = (visual_proj.detach().float().cpu().numpy() if visual_proj is not None
            else np.eye(bundle.width, bundle.embed_dim, dtype=np.float32))
    run.say(output.open(store_arrays(bundle, config.store.dtype), len(records),
                        store_attrs(bundle, config), whole={"visual_proj": proj}))
    pending = output.pending()
    sampler = ClaimedBatches(output, [w.chunk for w in pending], config.clip.batch_size)
    dataset = ImageFiles(records, bundle.preprocess, bundle.image_size, jpeg_bytes_out=gpu_decode)
    workers = config.clip.num_workers
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=workers,
                        collate_fn=collate_mixed if gpu_decode else None,
                        pin_memory=device.type == "cuda", persistent_workers=False,
                        prefetch_factor=4 if workers > 0 else None)

    def images_of(batch: Any) -> tuple[list[int], torch.Tensor, list[str]]:
        if spec is None:
            rows, images, reasons = batch
            return rows.tolist(), images.to(device, non_blocking=True), list(reasons)
        images, reasons = assemble(batch, spec, device, lambda row: load_preprocessed(
            records[row].path, bundle.preprocess, bundle.image_size))
        return batch.rows, images, reasons

    assembler = _ChunkAssembler(output, records, config.store.dtype, sampler.claimed)
    n_done, waited = 0, 0.0
    started = time.perf_counter()
    previous: tuple[list[int], torch.Tensor, torch.Tensor, list[str]] | None = None

    def hand_over(done: tuple[list[int], torch.Tensor, torch.Tensor, list[str]]) -> None:
        """A batch's outputs to the store writer (called once the next batch is queued on
        the device, so copying them back overlaps its compute)."""
        rows, pooled, tokens, reasons = done
        assembler.add(rows, pooled.float().cpu().numpy(), tokens.float().cpu().numpy(),
                      reasons)

    try:
        with tqdm(total=sum(len(w.rows) for w in pending), unit="img", desc="extract clip",
                  disable=not progress) as bar:
            batches = iter(loader)
            while True:
                wait_start = time.perf_counter()
                batch = next(batches, None)
                waited += time.perf_counter() - wait_start
                if batch is None:
                    break
                rows, images, reasons = images_of(batch)
                with torch.no_grad(), autocast(device, config.clip.precision):
                    pooled, tokens = encode_images(bundle, images)
                if previous is not None:
                    hand_over(previous)
                previous = (rows, pooled, tokens, reasons)
                n_done += len(rows)
                bar.update(len(rows))
            if previous is not None:
                hand_over(previous)
    finally:
        assembler.close()
    seconds = time.perf_counter() - started
    limit = failure_limit(config)
    failed = output.finish(limit)
    failed = assembler.failed if failed is None else failed
    run.say(f"{n_done} images in {seconds:.1f}s ({n_done / max(seconds, 1e-9):.1f} img/s"
            + (f", {assembler.retried} retried" if assembler.retried else "")
            + f", {config.clip.decode} decode, {100 * waited / max(seconds, 1e-9):.0f}% waiting "
            f"for input), {failed} failed"
            + ("" if run.complete else "; other shards still running"))
    if run.complete and failed:
        run.lines.append(f"warning: extract clip: {failed} of {len(records)} images could not "
                         f"be read (within {limit.key} = {limit.fraction:g}); they are kept as "
                         f"valid = 0 and listed in {failures_path(store)}")
    return {"images": len(records), "model": bundle.name, "weights": bundle.weights,
            "grid": list(bundle.grid_size), "patch_attention": bundle.patch_attention,
            "decode": config.clip.decode, "failed": failed, "processed": n_done,
            "retried": assembler.retried, "seconds": round(seconds, 3),
            "input_wait_seconds": round(waited, 3)}
