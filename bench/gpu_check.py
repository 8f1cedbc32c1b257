"""GPU check (only on a CUDA machine; not part of `make test`): `make gpu-check`.

Sections of the JSON report:

* `extract_clip`: `extract clip` with ViT-L-14 (random weights) over generated images, bf16
  autocast: images/s, model TFLOP/s (forward FLOPs counted by torch.utils.flop_counter) and
  peak GPU memory.
* `train_step`: one COCO-scale XE training step of the PMA decoder, sizes from
  `configs/coco.toml` (decoder d_model 512 / 8 heads / 3 layers / FFN 2048, batch 50, caption
  length max_caption_words + 2 = 22) plus 256 visual tokens of width `fsgr.d_model` (512), a
  ~10k vocabulary, `memory.self` on with `memory.n_prototypes` (1024) random prototypes
  installed per layer; forward under bf16 autocast, `caption_loss`, backward, gradient
  clipping, Adam. Steps/s over 50 timed steps after 10 warm-up steps (random batches already
  on the GPU, so no data loading; memory-bank collection and prototype refresh not included)
  and `torch.cuda.max_memory_allocated()` (model, Adam state, activations, prototypes).

* `scst_step`: SCST steps (`bench/scst.py`'s `measure_scst_step`) of the same COCO-size
  decoder and `[scst]` of `configs/coco.toml` (beam 5 candidates, mean baseline; 50 images,
  256 tokens, 1024 prototypes, ~10k words), bf16: ms per step for candidates, CIDEr-D rewards
  and the update, the rewards' share of the step, and the share pycocoevalcap's `CiderScorer`
  would have on the same candidates (the figure that says how much a per-sample Python reward
  would slow SCST down on this GPU).

`--cpu-smoke` runs `train_step` and `scst_step` on CPU with tiny sizes for 2 steps (no GPU
needed).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.scst import measure_scst_step  # noqa: E402
from bench.synthetic_images import write_image_set  # noqa: E402
from extract.clip_features import extract_clip  # noqa: E402
from shared.clip_model import create_clip, encode_images  # noqa: E402
from shared.config import load_config  # noqa: E402
from shared.devices import autocast  # noqa: E402
from shared.models.caption_decoder import caption_loss  # noqa: E402
from shared.vocabulary import SPECIALS  # noqa: E402
from train.trainer import build_decoder  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def forward_flops_per_image(model_name: str) -> float:
    """Forward FLOPs of the vision tower for one image."""
    bundle = create_clip(model_name, "", device="cuda")
    images = torch.randn(1, 3, bundle.image_size, bundle.image_size, device="cuda")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        encode_images(bundle, images)
    return float(counter.get_total_flops())


def check_extract(n_images: int, batch: int, workers: int, model: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        data = write_image_set(Path(tmp) / "data", n_images, size=320)
        config = load_config(REPO / "configs" / "coco.toml", [
            f'data.karpathy_json="{data / "dataset.json"}"', f'data.image_root="{data / "images"}"',
            f'data.run_root="{Path(tmp) / "runs"}"', f'clip.model="{model}"', 'clip.pretrained=""',
            'clip.device="cuda"', f"clip.batch_size={batch}", f"clip.num_workers={workers}",
            f"store.rows_per_chunk={batch}"])
        torch.cuda.reset_peak_memory_stats()
        result = extract_clip(config, progress=False)
        assert result.complete and result.failed == 0
    ips = result.processed / result.seconds
    flops = forward_flops_per_image(model)
    return {"model": model, "images": n_images, "batch": batch, "workers": workers,
            "precision": "bf16", "images_per_s": round(ips, 1),
            "model_tflops_per_s": round(ips * flops / 1e12, 1),
            "gflops_per_image": round(flops / 1e9, 1),
            "peak_gpu_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}


# tiny sizes for `--cpu-smoke` (same code path, seconds on a laptop CPU)
SMOKE_OVERRIDES = ["decoder.d_model=64", "decoder.n_heads=4", "decoder.n_dec_layers=2",
                   "decoder.d_ff=128", "fsgr.d_model=32", "memory.n_prototypes=16",
                   "train.batch_size=4"]


def random_captions(batch: int, length: int, vocab_size: int, generator: torch.Generator
                    ) -> torch.Tensor:
    """[batch, length] `<bos> words <eos>` 0-padded, 8..length-2 random words each."""
    tokens = torch.zeros(batch, length, dtype=torch.long)
    words = torch.randint(len(SPECIALS), vocab_size, (batch, length - 2), generator=generator)
    lengths = torch.randint(min(8, length - 2), length - 1, (batch,), generator=generator)
    for i, n in enumerate(lengths.tolist()):
        tokens[i, 0], tokens[i, n + 1] = 1, 2  # <bos>, <eos>
        tokens[i, 1:n + 1] = words[i, :n]
    return tokens


def check_train_step(device: torch.device, visual_tokens: int, vocab_size: int, steps: int,
                     warmup: int, overrides: list[str]) -> dict:
    """Steps/s and peak memory of XE training steps at the sizes of configs/coco.toml."""
    config = load_config(REPO / "configs" / "coco.toml", [
        "memory.self=true", 'train.precision="bf16"', *overrides])
    cuda = device.type == "cuda"
    if cuda:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated() if cuda else 0
    torch.manual_seed(0)
    d_visual, dims = config.fsgr.d_model, config.decoder
    batch, length = config.train.batch_size, config.data.max_caption_words + 2
    decoder = build_decoder(config, d_visual, vocab_size).to(device).train()
    m = config.memory.n_prototypes
    decoder.set_memory_prototypes([(torch.randn(m, dims.d_model, device=device),
                                    torch.randn(m, dims.d_model, device=device))
                                   for _ in range(dims.n_dec_layers)])
    optimizer = torch.optim.Adam(decoder.parameters(), lr=config.train.lr, betas=(0.9, 0.98))
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randn(batch, visual_tokens, d_visual, generator=generator)
                .to(device, torch.float16),
                random_captions(batch, length, vocab_size, generator).to(device))
               for _ in range(4)]

    def step(i: int) -> torch.Tensor:
        visual, tokens = batches[i % len(batches)]
        with autocast(device, config.train.precision):
            logits = decoder(visual, tokens[:, :-1])
        loss = caption_loss(logits.float(), tokens[:, 1:])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(decoder.parameters(), config.train.grad_clip)
        optimizer.step()
        return loss.detach()

    for i in range(warmup):
        step(i)
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    losses = [step(i) for i in range(steps)]
    last_loss = float(losses[-1])  # waits for the last step
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if not all(bool(torch.isfinite(x)) for x in losses):
        raise RuntimeError("train_step: non-finite loss")
    peak = torch.cuda.max_memory_allocated() if cuda else None
    return {
        "device": str(device), "precision": config.train.precision, "batch": batch,
        "visual_tokens": visual_tokens, "d_visual": d_visual, "caption_length": length,
        "vocab": vocab_size, "d_model": dims.d_model, "n_heads": dims.n_heads,
        "n_dec_layers": dims.n_dec_layers, "d_ff": dims.d_ff, "memory_self": True,
        "prototypes_per_layer": m,
        "parameters_m": round(sum(p.numel() for p in decoder.parameters()) / 1e6, 2),
        "warmup_steps": warmup, "timed_steps": steps,
        "steps_per_s": round(steps / seconds, 2),
        "samples_per_s": round(steps * batch / seconds, 1),
        "ms_per_step": round(1000 * seconds / steps, 2), "last_loss": round(last_loss, 3),
        "gpu_mem_allocated_before_gib": round(before / 2**30, 3) if cuda else None,
        "peak_gpu_mem_gib": round(peak / 2**30, 2) if cuda else None,
        "peak_gpu_mem_gb": round(peak / 1e9, 2) if cuda else None,
        "under_40_gb": peak < 40e9 if cuda else None,
    }


def check_scst_step(device: torch.device, visual_tokens: int, vocab_size: int, steps: int,
                    overrides: list[str]) -> dict:
    """Where an SCST step's time goes at the sizes of configs/coco.toml."""
    config = load_config(REPO / "configs" / "coco.toml", [
        "memory.self=true", 'train.precision="bf16"', *overrides])
    return measure_scst_step(config, device, batch_images=config.scst.batch_size, steps=steps,
                             images=20_000, vocab_size=vocab_size, patches=visual_tokens,
                             dim=config.fsgr.d_model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--workers", type=int, default=12)
    parser.add_argument("--model", default="ViT-L-14")
    parser.add_argument("--sections", default="extract_clip,train_step,scst_step",
                        help="comma-separated sections to run")
    parser.add_argument("--train-visual-tokens", type=int, default=256)
    parser.add_argument("--train-vocab", type=int, default=10_000)
    parser.add_argument("--train-steps", type=int, default=50)
    parser.add_argument("--train-warmup", type=int, default=10)
    parser.add_argument("--scst-steps", type=int, default=10)
    parser.add_argument("--train-set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="config override for train_step on configs/coco.toml")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="train_step and scst_step on CPU, tiny sizes, 2 steps (no GPU)")
    args = parser.parse_args()
    if args.cpu_smoke:
        cpu, smoke = torch.device("cpu"), [*SMOKE_OVERRIDES, *args.train_set]
        report = {"device": "cpu (smoke, tiny sizes)",
                  "train_step": check_train_step(cpu, 16, 200, 2, 0, smoke),
                  "scst_step": check_scst_step(cpu, 16, 200, 2, [*smoke, "scst.batch_size=4"])}
        print(json.dumps(report, indent=2))
        return
    if not torch.cuda.is_available():
        sys.exit("gpu-check: no CUDA GPU visible; run it on a GPU machine")
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - {"extract_clip", "train_step", "scst_step"}
    if unknown:
        sys.exit(f"gpu-check: unknown sections {sorted(unknown)}")
    report: dict = {"device": torch.cuda.get_device_name()}
    if "extract_clip" in sections:
        report["extract_clip"] = check_extract(args.images, args.batch, args.workers,
                                               args.model)
    if "train_step" in sections:
        report["train_step"] = check_train_step(
            torch.device("cuda"), args.train_visual_tokens, args.train_vocab, args.train_steps,
            args.train_warmup, args.train_set)
    if "scst_step" in sections:
        report["scst_step"] = check_scst_step(torch.device("cuda"), args.train_visual_tokens,
                                              args.train_vocab, args.scst_steps, args.train_set)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
