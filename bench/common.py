"""What the benchmark scripts share: argument parsing, configs of the repository, generated
inputs, timing side by side, peak memory, the report, and the decoder pieces the training
benchmarks build alike.

Run a benchmark from the repository root as a module (which puts the root on `sys.path`):

    .venv/bin/python -m bench.<name> [--help]

torch is imported only by the helpers that use it, so the CPU-only benchmarks (CIDEr-D,
K-Means) start without it.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from PIL import Image

from shared.config import Config, load_config

if TYPE_CHECKING:
    import torch

    from shared.models.caption_decoder import CaptionDecoder

REPO = Path(__file__).resolve().parent.parent
BOS, EOS = 1, 2
CAPTIONS_PER_IMAGE = 5
T = TypeVar("T")


# ----------------------------------------------------------------------------- arguments, configs


def make_parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser described by the first line of a benchmark's module docstring."""
    return argparse.ArgumentParser(description=(doc or "").splitlines()[0])


def add_overrides(parser: argparse.ArgumentParser, flag: str = "--set", **kwargs: Any) -> None:
    """A repeatable `SECTION.KEY=VALUE` config override option (a list, empty by default)."""
    parser.add_argument(flag, action="append", default=[], metavar="SECTION.KEY=VALUE",
                        **kwargs)


def config_path(name: str) -> Path:
    """A shipped config of this checkout: `configs/<name>.toml`."""
    return REPO / "configs" / f"{name}.toml"


def bench_config(name: str, sets: list[str] | tuple[str, ...] = ()) -> Config:
    """`configs/<name>.toml` with `--set` overrides."""
    return load_config(config_path(name), sets)


def image_set_overrides(data: Path, run_root: Path, model: str, device: str, batch: int,
                        workers: int) -> list[str]:
    """`--set` overrides that point a config at an image set of `write_image_set` and a CLIP
    with random weights, for `extract clip` (store chunks of one batch)."""
    return [f'data.karpathy_json="{data / "dataset.json"}"',
            f'data.image_root="{data / "images"}"', f'data.run_root="{run_root}"',
            f'clip.model="{model}"', 'clip.pretrained="random"', f'run.device="{device}"',
            f"clip.batch_size={batch}", f"clip.num_workers={workers}",
            f"store.rows_per_chunk={batch}"]


# ----------------------------------------------------------------------------- generated inputs


def write_image_set(root: Path, n_images: int, size: int = 320, seed: int = 0) -> Path:
    """`n_images` noisy gradient JPEGs under `root/images` and `root/dataset.json` (Karpathy
    format, all train): benchmark images without a dataset download."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size]
    entries = []
    for i in range(n_images):
        base = np.stack([(xx * rng.uniform(0.2, 1)) % 256, (yy * rng.uniform(0.2, 1)) % 256,
                         (xx + yy) % 256], axis=-1)
        noisy = (base + rng.normal(0, 20, base.shape)).clip(0, 255).astype(np.uint8)
        name = f"{i:06d}.jpg"
        Image.fromarray(noisy).save(root / "images" / name, quality=90)
        entries.append({"split": "train", "filepath": "", "filename": name, "imgid": i,
                        "sentences": [{"tokens": ["an", "image"], "raw": "An image."}]})
    (root / "dataset.json").write_text(json.dumps({"images": entries}))
    return root


# ------------------------------------------------------------------------- timing, memory, report


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    """`fn()` and the wall seconds it took."""
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def side_by_side(repeats: int, *runs: Callable[[int], float]) -> list[list[float]]:
    """Call the runs in turn (each given the repeat's index and returning its seconds),
    `repeats` times, so that a change in the machine's load hits all of them alike; the
    seconds of each run, one list per run."""
    seconds: list[list[float]] = [[] for _ in runs]
    for i in range(repeats):
        for out, run in zip(seconds, runs):
            out.append(run(i))
    return seconds


def best_rate(count: float, seconds: list[float]) -> float:
    """Items per second of the best (fastest) of several timings of `count` items."""
    return count / min(seconds)


def cuda_sync(device: torch.device) -> None:
    """Wait for the GPU's queued work (timings of asynchronous kernels); nothing on CPU."""
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_rss_mib(children: bool = False) -> float:
    """Peak resident memory in MiB of this process, or (`children`) of its largest waited-for
    child process (e.g. a DataLoader worker)."""
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss / 1024  # KiB on Linux


def print_report(report: dict, indent: int | None = 2) -> None:
    """The benchmark's figures as JSON on stdout."""
    print(json.dumps(report, indent=indent))


# ----------------------------------------------------------------------------- decoder pieces


def install_random_prototypes(decoder: CaptionDecoder, config: Config,
                              device: torch.device | None = None) -> None:
    """`memory.n_prototypes` random (M_K, M_V) prototypes of width `decoder.d_model` in every
    decoder layer, so that the PMA memory attention is exercised."""
    import torch
    m, d = config.memory.n_prototypes, config.decoder.d_model
    decoder.set_memory_prototypes([(torch.randn(m, d, device=device),
                                    torch.randn(m, d, device=device))
                                   for _ in range(config.decoder.n_dec_layers)])


def xe_step(decoder: CaptionDecoder, optimizer: torch.optim.Optimizer, visual: torch.Tensor,
            tokens: torch.Tensor, config: Config, device: torch.device) -> float:
    """One XE step exactly as `python -m train` takes it (`shared.training_loop.train_step` of
    the `train.trainer.CrossEntropy` objective), on inputs already on `device`: forward
    (autocast per `train.precision`), `caption_loss`, backward, gradient clipping, optimizer
    step (memory-bank collection and prototype refresh are not part of it). The loss."""
    from shared.training_loop import train_step
    from train.trainer import CrossEntropy
    objective = CrossEntropy(config, decoder, decoder, "features", device)
    return train_step(objective, optimizer, {"features": visual, "tokens": tokens})["loss"]


def write_synthetic_fsgr_inputs(config: Config, images: int, grid: int, width: int,
                                embed: int, concepts: int, seed: int = 0) -> tuple[Any, Any]:
    """What `extract encode` reads, synthetic and each with its manifest: a CLIP cache of
    `images` rows (one random float16 chunk repeated; `grid` x `grid` patches of `width`),
    a vocabulary, a concept codebook placeholder and an FSGR checkpoint of random weights
    (`concepts` concepts). Returns the encoder (eval mode) and its `FsgrMeta`."""
    import torch

    from shared.feature_store import ArraySpec, FeatureStore
    from shared.manifest import write_manifest
    from shared.models.factory import FsgrMeta, build_encoder
    from shared.stages import clip_stage, concepts_stage, fit_stage, vocab_stage
    from shared.vocabulary import SPECIALS, Vocabulary
    rng = np.random.default_rng(seed)
    rows, n_patches = config.store.rows_per_chunk, grid * grid
    clip = clip_stage(config)
    proj = rng.standard_normal((width, embed)).astype(np.float32) / 30
    tokens = rng.standard_normal((rows, n_patches, width), np.float32).astype(np.float16)
    pooled = rng.standard_normal((rows, embed), np.float32).astype(np.float16)
    with FeatureStore.create(clip.output, [
            ArraySpec("patch_tokens", (n_patches, width), "float16"),
            ArraySpec("image_embed", (embed,), "float16"),
            ArraySpec("image_ids", (), "int64"), ArraySpec("valid", (), "uint8"),
            ArraySpec("visual_proj", (width, embed), "float32", per_row=False)],
            images, rows, {"model": "bench-clip", "grid": [grid, grid]}) as store:
        for start in range(0, images, rows):
            n = min(start + rows, images) - start
            store.write_rows(start, {"patch_tokens": tokens[:n], "image_embed": pooled[:n],
                                     "image_ids": np.arange(start, start + n),
                                     "valid": np.ones(n, np.uint8)})
        store.write_whole("visual_proj", proj)
    write_manifest(clip, config)
    vocab = vocab_stage(config)
    Vocabulary(list(SPECIALS)).save(vocab.output)
    write_manifest(vocab, config)
    codebook = concepts_stage(config)
    codebook.output.parent.mkdir(parents=True, exist_ok=True)
    codebook.output.write_bytes(b"synthetic")
    write_manifest(codebook, config)
    meta = FsgrMeta("bench-clip", (grid, grid), width, embed, "synthetic", concepts)
    encoder = build_encoder(config, meta, torch.from_numpy(proj),
                            torch.randn(concepts, embed)).eval()
    fit = fit_stage(config)
    identity = json.loads(codebook.manifest_path.read_text())["identity"]
    torch.save({"encoder": encoder.state_dict(),
                "meta": {**meta.__dict__, "concepts_identity": identity}}, fit.output)
    write_manifest(fit, config)
    return encoder, meta
