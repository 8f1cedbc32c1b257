"""GPU check (only on a CUDA machine; not part of `make test`): `make gpu-check`.

One run on one GPU, under 8 minutes (sections start only while `--budget-s` is not spent; the
ones left are listed as skipped). Writes `runs/gpu_check.json` and `runs/gpu_check.md` (a
markdown table of every figure); on a host without a CUDA GPU it exits at once with one line.

Sections:

* `extract_clip`: `extract clip` with ViT-L-14 (random weights, bf16 autocast) over generated
  JPEGs (COCO-like 512 px, `--images` rows over a few hundred files), once per decode
  (`clip.decode = "cpu"`: DataLoader workers, `"gpu"`: nvJPEG batches + tensor preprocessing):
  images/s, model TFLOP/s (forward FLOPs counted by torch.utils.flop_counter), the share of
  the loop's time spent waiting for input, peak GPU memory; the two stores compared (cosine of
  `image_embed`, largest patch-token difference); and `decode_parity`: nvJPEG against
  libjpeg-turbo through the same tensor preprocessing, and against the CPU path (PIL's
  reduced-scale draft decode), in normalised pixel units, plus the fallback of a JPEG nvJPEG
  refuses.
* `fsgr_encode`: `extract encode` at COCO sizes (16x16 tokens of width 1024, d 512, 4585
  concepts, random FSGR weights, a synthetic CLIP cache): images/s and peak GPU memory.
* `train_step`: one COCO-scale XE training step of the PMA decoder, sizes from
  `configs/coco.toml` (decoder d_model 512 / 8 heads / 3 layers / FFN 2048, batch 50, caption
  length max_caption_words + 2 = 22) plus 256 visual tokens of width `fsgr.d_model` (512), a
  ~10k vocabulary, `memory.self` on with `memory.n_prototypes` (1024) random prototypes
  installed per layer; forward under bf16 autocast, `caption_loss`, backward, gradient
  clipping, Adam. Steps/s over 50 timed steps after 10 warm-up steps (random batches already
  on the GPU, so no data loading; memory-bank collection and prototype refresh not included)
  and `torch.cuda.max_memory_allocated()` (model, Adam state, activations, prototypes).
* `refresh`: one PMA prototype refresh at the COCO config (3 layer banks of
  `memory.bank_cap` keys, `bench/refresh.py`'s `measure_refresh`): seconds, FAISS on GPU or
  CPU, and its share of XE time at 5 steps/s.
* `faiss`: the FAISS build, the GPUs it sees, the index class `shared.prototypes` builds (a
  `GpuIndexFlatL2` when the GPU index is in use) and a k-NN search's time.
* `scst_step`: SCST steps (`bench/scst.py`'s `measure_scst_step`) of the same COCO-size
  decoder and `[scst]` of `configs/coco.toml` (beam 5 candidates, mean baseline; 50 images,
  256 tokens, 1024 prototypes, ~10k words), bf16: ms per step for candidates, CIDEr-D rewards
  and the update, the rewards' share of the step, and the share pycocoevalcap's `CiderScorer`
  would have on the same candidates.
* `resume`: the resume path on the GPU, at demo scale (a 150-image demo dataset, tiny CLIP
  trained 1 epoch, `extract` on `cuda`): `extract fit`, XE (`memory.self`, prototypes refreshed
  in both epochs) and SCST each run for one epoch, interrupted right after writing `last.pt`,
  then re-run: each must say it resumes after epoch 1 and finish epoch 2. Per stage: whether the
  CPU and CUDA random states equal the checkpoint's right after `restore_state`, the devices of
  the weights, optimizer state and of the tensors in `last.pt`'s memory entry, and for XE the
  prototype refreshes of the resumed epoch 2 (restored and new bank rows clustered together)
  and its loss beside an uninterrupted run's (equal on CPU; GPU kernels need not be bitwise
  deterministic). About a minute.

`--cpu-smoke` runs every section but `resume` on CPU with tiny sizes (the GPU decode path run
on the CPU, FAISS on the CPU; no GPU needed, about a minute); `--cpu-smoke --sections resume`
runs the `resume` section on CPU (a few minutes on a laptop CPU). The smoke writes files only
with `--out`.
"""

from __future__ import annotations

import gc
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from bench.common import (BOS, EOS, add_overrides, bench_config, cuda_sync,
                          install_random_prototypes, make_parser, print_report,
                          write_synthetic_fsgr_inputs, xe_step)
from shared.vocabulary import SPECIALS

# The pipeline's modules (open_clip, the models, the stages) are imported by the sections that
# use them, so that a host without a GPU is told so at once.

DEFAULT_OUT = Path("runs") / "gpu_check.json"
SECTIONS = ["extract_clip", "fsgr_encode", "train_step", "refresh", "faiss", "scst_step",
            "resume"]


def _peak_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def write_images(root: Path, n_files: int, n_rows: int, size: int, seed: int = 0) -> Path:
    """`n_files` noisy JPEGs of `size` px under `root/images` and a Karpathy json of `n_rows`
    entries cycling over them (a large image set without writing every file)."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n_files):
        base = np.stack([(xx * rng.uniform(0.2, 1)) % 256, (yy * rng.uniform(0.2, 1)) % 256,
                         (xx + yy) % 256], axis=-1)
        noisy = (base + rng.normal(0, 20, base.shape)).clip(0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(root / "images" / f"{i:06d}.jpg", quality=90)
    entries = [{"split": "train", "filepath": "", "filename": f"{i % n_files:06d}.jpg",
                "imgid": i, "sentences": [{"tokens": ["an", "image"], "raw": "An image."}]}
               for i in range(n_rows)]
    (root / "dataset.json").write_text(json.dumps({"images": entries}))
    return root


def _store_arrays(path: Path) -> dict[str, np.ndarray]:
    from shared.feature_store import FeatureStore
    with FeatureStore.open(path) as store:
        return {name: store.read(name) for name in ("image_embed", "patch_tokens", "valid")}


def check_decode_parity(files: list[Path], preprocess: Callable, image_size: int,
                        device: torch.device) -> dict:
    """nvJPEG (tensor path on `device`) against libjpeg-turbo (the same on the CPU) and
    against the CPU path (PIL with draft + open_clip's transform `preprocess`), normalised
    pixel units."""
    from shared.gpu_decode import (TensorPreprocess, decode_jpegs, jpeg_bytes,
                                   preprocess_tensors)
    from shared.images import load_rgb
    spec = TensorPreprocess.from_transform(preprocess)
    datas = [jpeg_bytes(path) for path in files]
    on_device = preprocess_tensors(decode_jpegs(datas, device), spec, device).cpu()
    on_cpu = preprocess_tensors(decode_jpegs(datas, "cpu"), spec, "cpu")
    cpu_path = torch.stack([preprocess(load_rgb(path, target_size=image_size))
                            for path in files])
    data = files[0].read_bytes()
    refused = torch.frombuffer(bytearray(data.replace(b"\xff\xc0", b"\xff\xc3", 1)),
                               dtype=torch.uint8)
    device_vs_cpu, device_vs_path = (on_device - on_cpu).abs(), (on_device - cpu_path).abs()
    return {"images": len(files),
            "tensor_path_device_vs_cpu_max": round(float(device_vs_cpu.max()), 4),
            "tensor_path_device_vs_cpu_mean": round(float(device_vs_cpu.mean()), 5),
            "device_vs_cpu_path_max": round(float(device_vs_path.max()), 4),
            "device_vs_cpu_path_mean": round(float(device_vs_path.mean()), 5),
            "lossless_jpeg_refused_on_device": decode_jpegs([refused], device) == [None]}


def check_extract(n_images: int, batch: int, workers: int, model: str, device: torch.device,
                  decodes: list[str], n_files: int = 256, size: int = 512,
                  precision: str = "bf16") -> dict:
    """`extract clip` once per decode over the same images (see the module docstring)."""
    import extract.clip_features as clip_features
    from bench.extract import forward_flops_per_image
    from extract.clip_features import extract_clip
    from shared.clip_model import create_clip
    report: dict = {"model": model, "images": n_images, "files": n_files, "image_size": size,
                    "batch": batch, "workers": workers, "precision": precision}
    if device.type != "cuda":  # the smoke: the GPU decode path run on the CPU
        clip_features.GPU_DECODE_DEVICES = ("cuda", "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        data = write_images(Path(tmp) / "data", n_files, n_images, size)
        stores = {}
        for decode in decodes:
            config = bench_config("coco", [
                f'data.karpathy_json="{data / "dataset.json"}"',
                f'data.image_root="{data / "images"}"', f'data.run_root="{tmp}/{decode}"',
                f'clip.model="{model}"', 'clip.pretrained="random"',
                f'run.device="{device.type}"', f"clip.batch_size={batch}",
                f"clip.num_workers={workers}", f"store.rows_per_chunk={batch}",
                f'clip.precision="{precision}"', f'clip.decode="{decode}"'])
            _reset_peak(device)
            result = extract_clip(config, progress=False)
            summary = result.summary
            assert result.complete and summary["failed"] == 0, summary
            ips = summary["processed"] / summary["seconds"]
            report[f"{decode}_decode"] = {
                "images_per_s": round(ips, 1), "seconds": summary["seconds"],
                "input_wait_share": round(summary["input_wait_seconds"] / summary["seconds"], 3),
                "peak_gpu_mem_gib": _peak_gib(device)}
            stores[decode] = _store_arrays(result.output)
        bundle = create_clip(model, "random", device=device)
        flops = forward_flops_per_image(bundle, device)
        report["gflops_per_image"] = round(flops / 1e9, 2)
        for decode in decodes:
            entry = report[f"{decode}_decode"]
            entry["model_tflops_per_s"] = round(entry["images_per_s"] * flops / 1e12, 2)
        if len(stores) == 2:
            a, b = (torch.from_numpy(stores[d]["image_embed"].astype(np.float32))
                    for d in decodes)
            cosine = torch.nn.functional.cosine_similarity(a, b, dim=-1)
            tokens = np.abs(stores[decodes[0]]["patch_tokens"].astype(np.float32)
                            - stores[decodes[1]]["patch_tokens"])
            report["stores_compared"] = {
                "image_embed_cosine_min": round(float(cosine.min()), 5),
                "image_embed_cosine_mean": round(float(cosine.mean()), 5),
                "patch_tokens_max_abs_diff": round(float(tokens.max()), 4),
                "patch_tokens_mean_abs_diff": round(float(tokens.mean()), 5)}
            ratio = report["gpu_decode"]["images_per_s"] / report["cpu_decode"]["images_per_s"]
            report["gpu_over_cpu_decode"] = round(ratio, 2)
        if "gpu" in decodes:
            files = sorted((data / "images").glob("*.jpg"))[:32]
            report["decode_parity"] = check_decode_parity(files, bundle.preprocess,
                                                          bundle.image_size, device)
    return report


def check_encode(device: torch.device, images: int, grid: int = 16, width: int = 1024,
                 embed: int = 768, concepts: int = 4585, sets: tuple[str, ...] = ()) -> dict:
    """`extract encode` on `device` over a synthetic CLIP cache at COCO sizes, random FSGR
    weights (`write_synthetic_fsgr_inputs`, as `bench/fsgr.py`)."""
    from extract.fsgr_encode import encode_fsgr
    with tempfile.TemporaryDirectory() as tmp:
        json_path = Path(tmp) / "dataset.json"
        json_path.write_text(json.dumps({"images": []}))
        config = bench_config("coco", [
            f'data.run_root="{tmp}"', f'data.karpathy_json="{json_path}"',
            'clip.model="bench-clip"', 'clip.pretrained="random"',
            f'run.device="{device.type}"', *sets])
        write_synthetic_fsgr_inputs(config, images, grid, width, embed, concepts)
        _reset_peak(device)
        started = time.perf_counter()
        result = encode_fsgr(config, progress=False)
        seconds = time.perf_counter() - started
        assert result.complete
    return {"images": images, "grid": grid, "clip_width": width, "d_model": config.fsgr.d_model,
            "concepts": concepts, "precision": config.clip.precision,
            "images_per_s": round(images / seconds, 1), "seconds": round(seconds, 2),
            "peak_gpu_mem_gib": _peak_gib(device)}


def check_refresh(sets: list[str], layers: int = 0) -> dict:
    """One prototype refresh at the COCO config (`bench/refresh.py`)."""
    from bench.refresh import measure_refresh
    return measure_refresh(bench_config("coco", sets), layers)


def check_faiss(keys: int = 200_000, width: int = 512, queries: int = 1024, k: int = 16) -> dict:
    """Which FAISS index `shared.prototypes` builds here and one k-NN search's time."""
    import faiss

    from shared.prototypes import faiss_gpus, flat_l2_index
    gpus = faiss_gpus(None)
    index = flat_l2_index(width, None, 0 if gpus else None)
    rng = np.random.default_rng(0)
    index.add(rng.standard_normal((keys, width), dtype=np.float32))
    query = rng.standard_normal((queries, width), dtype=np.float32)
    index.search(query[:8], k)
    started = time.perf_counter()
    index.search(query, k)
    seconds = time.perf_counter() - started
    return {"faiss": faiss.__version__, "gpus_seen": gpus, "index": type(index).__name__,
            "gpu_index_in_use": "Gpu" in type(index).__name__, "keys": keys, "width": width,
            "queries": queries, "k": k, "search_ms": round(1000 * seconds, 2)}


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
    from shared.models.factory import build_decoder
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
    from bench.scst import measure_scst_step
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
    from extract.clip_features import extract_clip
    from extract.concepts import build_concepts
    from extract.fsgr_encode import encode_fsgr
    from extract.vocab_stage import build_vocab
    from shared.datasets.demo_stage import demo_overrides, prepare_demo_data
    from shared.datasets.tiny_clip import train_tiny_clip
    from shared.stages import train_dir

    started = time.perf_counter()
    report: dict = {"device": str(device)}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = bench_config("demo", [
            *demo_overrides(root / "demo"), f"data.run_root={json.dumps(str(root / 'runs'))}",
            f"clip.pretrained={json.dumps(str(root / 'demo' / 'tiny_clip.pt'))}",
            f"run.device={json.dumps(device.type)}", *RESUME_SETS])
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


def flatten(report: dict, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted name, value) of every scalar in the report, in order."""
    rows: list[tuple[str, str]] = []
    for key, value in report.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows += flatten(value, name + ".")
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for i, item in enumerate(value):
                rows += flatten(item, f"{name}[{i}].")
        else:
            rows.append((name, json.dumps(value) if not isinstance(value, str) else value))
    return rows


def markdown(report: dict) -> str:
    """The report as one markdown table: section | figure | value."""
    lines = [f"# gpu-check: {report.get('device', '')}", "", "| section | figure | value |",
             "|---|---|---:|"]
    for section, value in report.items():
        if isinstance(value, dict):
            for name, text in flatten(value):
                lines.append(f"| {section} | {name} | {text.replace('|', '/')} |")
        else:
            lines.append(f"| | {section} | {str(value).replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def write_report(report: dict, out: Path) -> None:
    """`out` (json) and the same name with `.md` (the markdown table)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(report))


def run_sections(sections: dict[str, Callable[[], dict]], chosen: list[str], report: dict,
                 budget_s: float) -> None:
    """Run the chosen sections in order while the time budget lasts; a failing section is
    reported and the others still run."""
    started = time.perf_counter()
    for name in chosen:
        elapsed = time.perf_counter() - started
        if elapsed > budget_s:
            report[name] = {"skipped": f"time budget ({budget_s:.0f} s) spent after "
                                       f"{elapsed:.0f} s"}
            continue
        section_start = time.perf_counter()
        try:
            report[name] = sections[name]()
        except Exception as err:  # noqa: BLE001 - reported; the other sections still run
            report[name] = {"error": f"{type(err).__name__}: {err}"[:500]}
        report[name]["section_seconds"] = round(time.perf_counter() - section_start, 1)
        print(f"gpu-check: {name} done ({report[name]['section_seconds']} s)", file=sys.stderr,
              flush=True)
    report["total_seconds"] = round(time.perf_counter() - started, 1)


def main() -> None:
    parser = make_parser(__doc__)
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--workers", type=int, default=12)
    parser.add_argument("--model", default="ViT-L-14")
    parser.add_argument("--sections", default=None,
                        help=f"comma-separated sections to run (default: {','.join(SECTIONS)}; "
                             "with --cpu-smoke: all but resume)")
    parser.add_argument("--encode-images", type=int, default=2048)
    parser.add_argument("--train-visual-tokens", type=int, default=256)
    parser.add_argument("--train-vocab", type=int, default=10_000)
    parser.add_argument("--train-steps", type=int, default=50)
    parser.add_argument("--train-warmup", type=int, default=10)
    parser.add_argument("--scst-steps", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=360.0,
                        help="start no section after this many seconds (the whole check "
                             "stays under 8 minutes on one GPU)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"report json (and .md beside it); default {DEFAULT_OUT} on a GPU")
    add_overrides(parser, "--train-set",
                  help="config override for train_step on configs/coco.toml")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="every section but resume on CPU, tiny sizes (no GPU)")
    args = parser.parse_args()
    default = [s for s in SECTIONS if s != "resume"] if args.cpu_smoke else SECTIONS
    chosen = default if args.sections is None else \
        [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(chosen) - set(SECTIONS)
    if unknown:
        sys.exit(f"gpu-check: unknown sections {sorted(unknown)}")
    if not args.cpu_smoke and not torch.cuda.is_available():
        sys.exit("gpu-check: no CUDA GPU visible; run it on a GPU machine "
                 "(or --cpu-smoke for the CPU smoke test)")
    if args.cpu_smoke:
        cpu, smoke = torch.device("cpu"), [*SMOKE_OVERRIDES, *args.train_set]
        report: dict = {"device": "cpu (smoke, tiny sizes)"}
        sections: dict[str, Callable[[], dict]] = {
            "extract_clip": lambda: check_extract(32, 8, 1, "demo-tiny-clip", cpu,
                                                  ["cpu", "gpu"], n_files=8, size=160,
                                                  precision="fp32"),
            "fsgr_encode": lambda: check_encode(cpu, 64, grid=4, width=32, embed=16,
                                                concepts=50, sets=tuple(SMOKE_OVERRIDES)),
            "train_step": lambda: check_train_step(cpu, 16, 200, 2, 0, smoke),
            "refresh": lambda: check_refresh([*smoke, "memory.bank_cap=2000",
                                              'cluster.device="cpu"'], layers=1),
            "faiss": lambda: check_faiss(keys=2000, width=64, queries=64),
            "scst_step": lambda: check_scst_step(cpu, 16, 200, 2,
                                                 [*smoke, "scst.batch_size=4"]),
            "resume": lambda: check_resume(cpu)}
        run_sections(sections, chosen, report, math.inf)
        print_report(report)
        if args.out is not None:
            write_report(report, args.out)
        return
    cuda = torch.device("cuda")
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    sections = {
        "extract_clip": lambda: check_extract(args.images, args.batch, args.workers,
                                              args.model, cuda, ["cpu", "gpu"]),
        "fsgr_encode": lambda: check_encode(cuda, args.encode_images),
        "train_step": lambda: check_train_step(cuda, args.train_visual_tokens,
                                               args.train_vocab, args.train_steps,
                                               args.train_warmup, args.train_set),
        "refresh": lambda: check_refresh(args.train_set),
        "faiss": check_faiss,
        "scst_step": lambda: check_scst_step(cuda, args.train_visual_tokens, args.train_vocab,
                                             args.scst_steps, args.train_set),
        "resume": lambda: check_resume(cuda)}
    run_sections(sections, chosen, report, args.budget_s)
    out = args.out or DEFAULT_OUT
    write_report(report, out)
    print_report(report)
    print(f"gpu-check: wrote {out} and {out.with_suffix('.md')}", file=sys.stderr)


if __name__ == "__main__":
    main()
