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

* `resume`: the resume path on the GPU, at demo scale (a 150-image demo dataset, tiny CLIP
  trained 1 epoch, `extract` on `cuda`): `extract fit`, XE (`memory.self`, prototypes refreshed
  in both epochs) and SCST each run for one epoch, interrupted right after writing `last.pt`,
  then re-run: each must say it resumes after epoch 1 and finish epoch 2. Per stage: whether the
  CPU and CUDA random states equal the checkpoint's right after `restore_state`, the devices of
  the weights, optimizer state and of the tensors in `last.pt`'s memory entry, and for XE the
  prototype refreshes of the resumed epoch 2 (restored and new bank rows clustered together)
  and its loss beside an uninterrupted run's (equal on CPU; GPU kernels need not be bitwise
  deterministic). About a minute.

`--cpu-smoke` runs `train_step` and `scst_step` on CPU with tiny sizes for 2 steps (no GPU
needed); `--cpu-smoke --sections resume` runs the `resume` section on CPU (a few minutes on a
laptop CPU).
"""

from __future__ import annotations

import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.common import (BOS, EOS, add_overrides, bench_config, cuda_sync,
                          image_set_overrides, install_random_prototypes, make_parser,
                          print_report, write_image_set, xe_step)
from bench.scst import measure_scst_step
from extract.clip_features import extract_clip
from shared.clip_model import create_clip, encode_images
from shared.stages import train_dir
from shared.vocabulary import SPECIALS
from shared.models.factory import build_decoder


def forward_flops_per_image(model_name: str) -> float:
    """Forward FLOPs of the vision tower for one image."""
    bundle = create_clip(model_name, "random", device="cuda")
    images = torch.randn(1, 3, bundle.image_size, bundle.image_size, device="cuda")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        encode_images(bundle, images)
    return float(counter.get_total_flops())


def check_extract(n_images: int, batch: int, workers: int, model: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        data = write_image_set(Path(tmp) / "data", n_images, size=320)
        config = bench_config("coco", image_set_overrides(data, Path(tmp) / "runs", model,
                                                          "cuda", batch, workers))
        torch.cuda.reset_peak_memory_stats()
        result = extract_clip(config, progress=False)
        assert result.complete and result.summary["failed"] == 0
    ips = result.summary["processed"] / result.summary["seconds"]
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
        tokens[i, 0], tokens[i, n + 1] = BOS, EOS
        tokens[i, 1:n + 1] = words[i, :n]
    return tokens


def check_train_step(device: torch.device, visual_tokens: int, vocab_size: int, steps: int,
                     warmup: int, overrides: list[str]) -> dict:
    """Steps/s and peak memory of XE training steps at the sizes of configs/coco.toml."""
    config = bench_config("coco", ["memory.self=true", 'train.precision="bf16"', *overrides])
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
    install_random_prototypes(decoder, config, device)
    optimizer = torch.optim.Adam(decoder.parameters(), lr=config.train.lr, betas=(0.9, 0.98))
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randn(batch, visual_tokens, d_visual, generator=generator)
                .to(device, torch.float16),
                random_captions(batch, length, vocab_size, generator).to(device))
               for _ in range(4)]

    def step(i: int) -> float:
        visual, tokens = batches[i % len(batches)]
        return xe_step(decoder, optimizer, visual, tokens, config, device)

    for i in range(warmup):
        step(i)
    cuda_sync(device)
    start = time.perf_counter()
    losses = [step(i) for i in range(steps)]  # a non-finite loss raises NonFiniteLoss
    last_loss = losses[-1]
    cuda_sync(device)
    seconds = time.perf_counter() - start
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
    config = bench_config("coco", ["memory.self=true", 'train.precision="bf16"', *overrides])
    return measure_scst_step(config, device, batch_images=config.scst.batch_size, steps=steps,
                             images=20_000, vocab_size=vocab_size, patches=visual_tokens,
                             dim=config.fsgr.d_model)


RESUME_SETS = ["demo.n_train=120", "demo.n_val=15", "demo.n_test=15", "demo.clip_epochs=1",
               "demo.clip_batch_size=32", "clip.num_workers=0", "clip.batch_size=32",
               "store.rows_per_chunk=16", "fsgr.epochs=2", "fsgr.concept_min_count=2",
               "fsgr.warmup_steps=5", "train.max_epochs=2", "train.batch_size=25",
               "train.warmup_steps=10", "memory.self=true", "memory.warmup_iterations=10",
               "memory.refresh_stride=10", "memory.bank_iterations=20", "memory.bank_cap=2000",
               "memory.n_prototypes=16", "memory.knn=4", "scst.max_epochs=2",
               "scst.batch_size=25", "scst.n_samples=5", "scst.patience=5"]


def _tensors(value: object) -> list[torch.Tensor]:
    if torch.is_tensor(value):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _tensors(item)]
    return []


def _resume_stage(run, expect: str) -> dict:  # noqa: ANN001
    """Run a stage interrupted right after its first `last.pt`, then again; what the second
    run's `restore_state` restored, and where (both patched where the training loop calls
    them)."""
    import shared.training_loop as loop
    import shared.training_schedule as schedule
    seen: dict = {}
    real_save, real_restore = loop.save_atomic, schedule.restore_state

    def save_then_stop(payload, path):  # noqa: ANN001
        real_save(payload, path)
        if Path(path).name == "last.pt":
            raise KeyboardInterrupt("interrupted after the first epoch")

    def spy(path, identity, model, optimizer, device):  # noqa: ANN001
        ckpt = real_restore(path, identity, model, optimizer, device)
        if ckpt is not None:
            moved = [(p, v) for p, state in optimizer.state.items()
                     for k, v in state.items() if torch.is_tensor(v) and k != "step"]
            seen.update({
                "cpu_rng_restored": torch.equal(torch.get_rng_state(), ckpt["torch_rng"]),
                "cuda_rng_restored": torch.equal(torch.cuda.get_rng_state(device),
                                                 ckpt["cuda_rng"])
                if device.type == "cuda" else None,
                "weights_on": sorted({str(p.device) for p in model.parameters()}),
                "optimizer_state_on_param_device": all(v.device == p.device for p, v in moved),
                "restored_memory_on": sorted({str(t.device)
                                              for t in _tensors(ckpt.get("memory", {}))})})
        return ckpt

    started = time.perf_counter()
    loop.save_atomic = save_then_stop
    try:
        run(force=True)
        raise RuntimeError("the first run was not interrupted")
    except KeyboardInterrupt:
        pass
    finally:
        loop.save_atomic = real_save
    schedule.restore_state = spy
    try:
        lines = run(force=False).lines
    finally:
        schedule.restore_state = real_restore
    return {"resumed": any(expect in line for line in lines), **seen,
            "last_line": lines[-1], "seconds": round(time.perf_counter() - started, 1)}


def _epoch_two(log: Path) -> dict:
    """The XE record of epoch 2 in `log.jsonl`."""
    records = [json.loads(line) for line in log.read_text().splitlines() if line]
    return next(r for r in records if r.get("epoch") == 2 and "train_loss" in r)


def check_resume(device: torch.device) -> dict:
    """Interrupt `extract fit`, XE and SCST after their first epoch and resume them on
    `device` (see the module docstring)."""
    import extract.fsgr_fit as fsgr_fit
    import train.scst as scst
    import train.trainer as trainer
    from extract.concepts import build_concepts
    from extract.fsgr_encode import encode_fsgr
    from extract.vocab_stage import build_vocab
    from shared.datasets.demo_stage import demo_overrides, prepare_demo_data
    from shared.datasets.tiny_clip import train_tiny_clip

    started = time.perf_counter()
    report: dict = {"device": str(device)}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = bench_config("demo", [
            *demo_overrides(root / "demo"), f"data.run_root={json.dumps(str(root / 'runs'))}",
            f"clip.pretrained={json.dumps(str(root / 'demo' / 'tiny_clip.pt'))}",
            f"clip.device={json.dumps(device.type)}", *RESUME_SETS])
        prepare_demo_data(config)
        train_tiny_clip(config, progress=False)
        build_vocab(config)
        assert extract_clip(config, progress=False).complete
        build_concepts(config)
        report["setup_seconds"] = round(time.perf_counter() - started, 1)
        stages = [
            ("extract_fit", lambda force: fsgr_fit.fit_fsgr(config, force=force, progress=False),
             "resuming after epoch 1"),
            ("xe", lambda force: trainer.train(config, force=force, progress=False),
             "resuming after epoch 1"),
            ("scst", lambda force: scst.train_scst(config, force=force, progress=False),
             "resuming after epoch 1")]
        for name, run, expect in stages:
            try:
                if name == "xe":
                    run(force=True)  # uninterrupted, for the epoch-2 loss
                    uninterrupted = _epoch_two(train_dir(config) / "log.jsonl")["train_loss"]
                report[name] = _resume_stage(run, expect)
                if name == "xe":  # refreshes after resuming: restored + new bank rows together
                    resumed = _epoch_two(train_dir(config) / "log.jsonl")
                    report[name].update({
                        "epoch2_loss_uninterrupted": uninterrupted,
                        "epoch2_loss_resumed": resumed["train_loss"],
                        "epoch2_prototype_refreshes": resumed["prototype_refreshes"]})
            except Exception as err:  # noqa: BLE001 - reported, then the stage run through
                report[name] = {"error": f"{type(err).__name__}: {err}"[:500]}
                if name != "scst":  # the next stage needs this one's output
                    run(force=True)
            if name == "extract_fit":
                encode_fsgr(config, progress=False)
    report["ok"] = all(report[name].get("resumed") for name, *_ in stages)
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report


def main() -> None:
    parser = make_parser(__doc__)
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--workers", type=int, default=12)
    parser.add_argument("--model", default="ViT-L-14")
    parser.add_argument("--sections", default=None,
                        help="comma-separated sections to run (default: extract_clip,"
                             "train_step,scst_step,resume; with --cpu-smoke: train_step,"
                             "scst_step)")
    parser.add_argument("--train-visual-tokens", type=int, default=256)
    parser.add_argument("--train-vocab", type=int, default=10_000)
    parser.add_argument("--train-steps", type=int, default=50)
    parser.add_argument("--train-warmup", type=int, default=10)
    parser.add_argument("--scst-steps", type=int, default=10)
    add_overrides(parser, "--train-set",
                  help="config override for train_step on configs/coco.toml")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="train_step and scst_step on CPU, tiny sizes, 2 steps (no GPU)")
    args = parser.parse_args()
    known = ["extract_clip", "train_step", "scst_step", "resume"]
    default = ["train_step", "scst_step"] if args.cpu_smoke else known
    sections = default if args.sections is None else \
        [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - set(known)
    if unknown:
        sys.exit(f"gpu-check: unknown sections {sorted(unknown)}")
    if args.cpu_smoke:
        cpu, smoke = torch.device("cpu"), [*SMOKE_OVERRIDES, *args.train_set]
        report = {"device": "cpu (smoke, tiny sizes)"}
        if "train_step" in sections:
            report["train_step"] = check_train_step(cpu, 16, 200, 2, 0, smoke)
        if "scst_step" in sections:
            report["scst_step"] = check_scst_step(cpu, 16, 200, 2,
                                                  [*smoke, "scst.batch_size=4"])
        if "resume" in sections:
            report["resume"] = check_resume(cpu)
        print_report(report)
        return
    if not torch.cuda.is_available():
        sys.exit("gpu-check: no CUDA GPU visible; run it on a GPU machine")
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
    if "resume" in sections:
        report["resume"] = check_resume(torch.device("cuda"))
    print_report(report)


if __name__ == "__main__":
    main()
