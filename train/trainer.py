"""Cross-entropy training of the (PMA) caption decoder, streaming from the feature cache.

One sample per (image, caption); batches stream from the Zarr/HDF5 cache (chunk-level shuffle,
shuffle buffer, background prefetch). Adam(0.9, 0.98) with linear warm-up and step decay,
gradient clipping, AMP (bf16 on CUDA). Each epoch: validation loss and greedy CIDEr-D on val,
`last.pt` (everything needed to continue exactly: model incl. prototypes, optimizer, RNG,
step, patience; the float16 memory banks in their own `last.banks.<token>.pt` beside it, which
`last.pt` names) and `best.pt` (model-sized), written atomically; the previous `last.pt` stays
as `last.prev.pt` (with its banks file) until the new one is complete, and a run whose
`last.pt` is unreadable resumes from it (`shared.checkpoint_files`). Early stopping on val
CIDEr-D. Metrics go to `log.jsonl` and `curves.png` (with `train.tensorboard` also to
TensorBoard in `tensorboard/xe/`, prototype refreshes included: `shared.run_log`); a warm-up
longer than the run and a training loss that does not fall are warnings (stderr, the epoch
record's `"warnings"`, the manifest summary). Multi-GPU / multi-process with `torchrun`
(DistributedDataParallel, each rank streams its own share of the chunks).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from shared.checkpoint_files import (UnreadableCheckpoint, load_checkpoint, previous_path,
                                     read_entry)
from shared.config import Config
from shared.devices import autocast, resolve_device
from shared.manifest import (current_state, decide, remove_manifest, require_current,
                             write_manifest)
from shared.models.caption_decoder import CaptionDecoder, DecoderDims, caption_loss
from shared.prototypes import read_feature_prototypes, read_memory_prototypes, write_banks
from shared.run_log import RunLog, require_tensorboard
from shared.stages import (cluster_activations_stage, cluster_features_stage,
                           memory_banks_path, memory_banks_stage,
                           train_dir, train_stage, visual_stage, vocab_stage)
from shared.training_schedule import (LossTrend, RunWarnings, lr_factor, open_resume_point,
                                      resume_state, save_atomic, warmup_warning)
from train.cache_data import TrainingCache, make_validator
from train.curves import plot_curves
from train.self_memory import SelfMemory


class NonFiniteLoss(RuntimeError):
    """The loss became NaN/inf; the last good checkpoint is kept."""


@dataclass
class Ranks:
    """This process's place in a (possibly single-process) distributed run."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Ranks:
    """Join the `torchrun` process group when WORLD_SIZE > 1 (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Ranks()
    if not dist.is_initialized():
        # gloo for the CPU tensors of the loop's own collectives, nccl for CUDA ones
        dist.init_process_group("cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo")
    return Ranks(dist.get_rank(), dist.get_world_size())


def build_decoder(config: Config, d_visual: int, vocab_size: int) -> CaptionDecoder:
    """The decoder of `[decoder]` + `[memory]`, reading visual tokens of width `d_visual`."""
    d = config.decoder
    return CaptionDecoder(DecoderDims(
        d_visual=d_visual, vocab_size=vocab_size, d_model=d.d_model, n_heads=d.n_heads,
        n_enc_layers=d.n_enc_layers, n_dec_layers=d.n_dec_layers, d_ff=d.d_ff,
        dropout=d.dropout, max_len=config.data.max_caption_words + 2,
        self_memory=config.memory.self, cross_memory=config.memory.cross))


def train(config: Config, force: bool = False, progress: bool = True,
          resume: bool = False) -> list[str]:
    """Train (or resume, or skip) the decoder of `config`; returns the lines to print.

    `resume` insists on continuing `last.pt` (an error if it is missing or from another
    config); otherwise a matching `last.pt` is continued and anything else starts over.
    """
    require_tensorboard(config.train.tensorboard)
    device = resolve_device(config.clip.device)
    ranks = init_distributed(device)
    if device.type == "cuda" and ranks.world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    spec = train_stage(config)
    stage_name = "python -m extract" if config.decoder.visual_input == "fsgr" else \
        "python -m extract clip"
    require_current(visual_stage(config), config, stage_name)
    require_current(vocab_stage(config), config, "python -m extract vocab")
    if config.memory.cross:
        require_current(cluster_features_stage(config), config, "python -m cluster features")
    if config.memory.self and config.memory.init_from_cluster:
        require_current(cluster_activations_stage(config), config,
                        "python -m cluster activations")
    decision = decide(spec, config, force=force)
    if decision.up_to_date:
        return [f"train: {decision.reason}"]
    remove_manifest(spec.output)  # from here on the old output is no longer complete
    state = current_state(spec, config)
    out_dir = train_dir(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.train.seed)
    run_log = RunLog(out_dir / "log.jsonl", "xe", config.train.tensorboard, main=ranks.main)

    cache = TrainingCache.open(config)
    array, vocab, d_visual = cache.array, cache.vocab, cache.d_visual
    decoder = build_decoder(config, d_visual, len(vocab)).to(device)
    if config.memory.cross:
        prototypes = read_feature_prototypes(cluster_features_stage(config).output)
        decoder.set_cross_prototypes(torch.from_numpy(prototypes).to(device))
    memory = SelfMemory(decoder, config, on_refresh=run_log.refresh) \
        if config.memory.self else None
    if memory is not None and config.memory.init_from_cluster:
        decoder.set_memory_prototypes([
            (torch.from_numpy(k).float().to(device), torch.from_numpy(v).float().to(device))
            for k, v in read_memory_prototypes(cluster_activations_stage(config).output)])
    model: nn.Module = decoder
    if ranks.world > 1:
        model = nn.parallel.DistributedDataParallel(
            decoder, device_ids=[device.index] if device.type == "cuda" else None,
            broadcast_buffers=False,  # prototypes are synced explicitly at each refresh
            find_unused_parameters=config.memory.self)  # segment vectors idle until then
    optimizer = torch.optim.Adam(decoder.parameters(), lr=config.train.lr, betas=(0.9, 0.98))

    train_samples = cache.samples("train")
    if len(train_samples) == 0:
        raise ValueError(f"train: no readable train images in {cache.store_path}")
    validate = make_validator(decoder, cache, config, device)
    batches = cache.batches(train_samples, config.train.batch_size, seed=config.train.seed,
                            shuffle_buffer=config.train.shuffle_buffer,
                            shard=(ranks.rank, ranks.world))

    last, best, log_path = out_dir / "last.pt", out_dir / "best.pt", run_log.path
    start_epoch, step, best_cider, stale_epochs = 0, 0, -math.inf, 0
    lines: list[str] = []
    warnings = RunWarnings(show=ranks.main)
    rotation, source, ckpt = open_resume_point(
        last, state["identity"], force, decoder, optimizer, device, warnings,
        banks_check if memory is not None else None)
    if ckpt is not None:
        if memory is not None:
            memory.load_banks(source, ckpt["memory"], banks=ranks.main)
        start_epoch, step = ckpt["epoch"] + 1, ckpt["step"]
        best_cider, stale_epochs = ckpt["best_cider"], ckpt["stale_epochs"]
        lines.append(f"train: resuming after epoch {start_epoch} (step {step})")
    if resume and start_epoch == 0:
        raise RuntimeError(f"--resume: {last} is missing or was written with another config "
                           f"({decision.reason})")
    if start_epoch == 0:
        run_log.start_over()  # the whole log (SCST's records too) and every phase's events
    else:  # epochs after the resume point (`last.prev.pt`'s) are logged again
        run_log.resume(lambda r: r.get("phase", "xe") == "xe"
                       and r.get("epoch", 0) > start_epoch, step)
    per_epoch = batches.n_batches(start_epoch)
    warnings.add(warmup_warning("train.warmup_steps", config.train.warmup_steps,
                                config.train.max_epochs, per_epoch))
    trend = LossTrend(per_epoch * config.train.max_epochs)
    if ckpt is not None:
        trend.load_state(ckpt.get("loss_trend"))

    stopped = "max_epochs"
    for epoch in range(start_epoch, config.train.max_epochs):
        if stale_epochs >= config.train.patience:
            stopped = "early stop"
            break
        model.train()
        n_steps = batches.n_batches(epoch)
        if ranks.world > 1:  # every rank must take the same number of steps
            count = torch.tensor(n_steps)
            dist.all_reduce(count, op=dist.ReduceOp.MIN)
            n_steps = int(count)
        started, loss_sum, refreshes = time.perf_counter(), 0.0, 0
        bar = tqdm(total=n_steps, disable=not (progress and ranks.main), unit="batch",
                   desc=f"train {epoch + 1}/{config.train.max_epochs}")
        for i, batch in enumerate(batches.epoch(epoch)):
            if i == n_steps:
                break
            for group in optimizer.param_groups:
                group["lr"] = config.train.lr * lr_factor(
                    step, epoch, config.train.warmup_steps, config.train.decay_every,
                    config.train.decay_factor)
            tokens = batch["tokens"].to(device)
            with autocast(device, config.train.precision):
                logits = model(batch[array].to(device), tokens[:, :-1])
            loss = caption_loss(logits.float(), tokens[:, 1:])
            if not torch.isfinite(loss):
                raise NonFiniteLoss(
                    f"train: loss is {float(loss.detach())} at epoch {epoch + 1}, step {step + 1}; "
                    f"stopped, {last} keeps the last good epoch (try a lower train.lr)")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(decoder.parameters(), config.train.grad_clip)
            optimizer.step()
            step += 1
            loss_value = float(loss.detach())
            loss_sum += loss_value
            trend.add(loss_value)
            if memory is not None:
                memory.collect()
                if memory.due(step):
                    refresh_prototypes(memory, decoder, ranks)
                    refreshes += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / (i + 1):.3f}")
        bar.close()
        record: dict[str, Any] = {"epoch": epoch + 1, "step": step,
                                  "train_loss": loss_sum / max(n_steps, 1),
                                  "lr": optimizer.param_groups[0]["lr"],
                                  "prototype_refreshes": refreshes,
                                  "seconds": time.perf_counter() - started}
        if ranks.main:
            decoder.eval()
            record.update(validate())
            warnings.add(trend.warning("the training loss", f"train.lr ({config.train.lr:g}) "
                                       f"and train.warmup_steps ({config.train.warmup_steps:,})"))
            record.update(warnings.take())
            improved = record["val_cider"] > best_cider
            best_cider = max(best_cider, record["val_cider"])
            stale_epochs = 0 if improved else stale_epochs + 1
            if improved:
                save_atomic({"model": decoder.state_dict(), "epoch": epoch,
                             "meta": {"d_visual": d_visual, "vocab_size": len(vocab),
                                      "visual_input": config.decoder.visual_input},
                             "val_loss": record["val_loss"], "val_cider": record["val_cider"]},
                            best)
            banks = memory.save_banks(last) if memory is not None else {}  # before last.pt
            try:
                rotation.before_save()
                save_atomic({**resume_state(state["identity"], decoder, optimizer, device),
                             "memory": banks, "loss_trend": trend.state(),
                             "epoch": epoch, "step": step, "best_cider": best_cider,
                             "stale_epochs": stale_epochs}, last)
            finally:
                if memory is not None:
                    drop_stale_banks(last)
            run_log.write(record)
            plot_curves(log_path, out_dir / "curves.png")
            lines.append(f"train: epoch {epoch + 1}: loss {record['train_loss']:.3f}, val loss "
                         f"{record['val_loss']:.3f}, val CIDEr-D {record['val_cider']:.3f}"
                         + (" (best)" if improved else ""))
        if ranks.world > 1:
            flags = torch.tensor([best_cider, float(stale_epochs)])
            dist.broadcast(flags, 0)
            best_cider, stale_epochs = float(flags[0]), int(flags[1])

    run_log.close()
    if ranks.main:
        if memory is not None:
            for line in memory.warnings():
                warnings.add(line)
            keys, values = memory.dump()
            write_banks(memory_banks_path(config), keys, values)
            write_manifest(memory_banks_stage(config), config, {"rows": [len(k) for k in keys]})
        best_ckpt = load_checkpoint(best, "decoder checkpoint", "re-run `python -m train "
                                    "--force`", keys=("epoch", "val_cider", "val_loss"))
        write_manifest(spec, config, {"best_epoch": best_ckpt["epoch"] + 1,
                                      "val_cider": best_ckpt["val_cider"],
                                      "val_loss": best_ckpt["val_loss"], "stopped": stopped,
                                      "steps": step, **warnings.summary()}, state=state)
        lines.append(f"train: {stopped} after {step} steps; best val CIDEr-D "
                     f"{best_ckpt['val_cider']:.3f} (epoch {best_ckpt['epoch'] + 1}) in {best}")
    return lines


def refresh_prototypes(memory: SelfMemory, decoder: CaptionDecoder, ranks: Ranks
                       ) -> None:
    """Rebuild prototypes on rank 0 (whose banks hold every rank's rows, see `SelfMemory`)
    and give every rank the same ones."""
    memory.refresh_synced()


def banks_check(path: Path, ckpt: dict) -> None:
    """`pick_resume_point` check of a resume point's memory: the banks file it names is
    there, complete (its tensors are only mapped here) and carries its token."""
    entry = ckpt.get("memory") or {}
    name = entry.get("banks_file")
    if not name:
        raise UnreadableCheckpoint(path, "it names no memory banks file")
    try:
        payload = load_checkpoint(path.with_name(name), "memory banks file", "",
                                  keys=("token",), mmap=True)
    except FileNotFoundError:
        raise UnreadableCheckpoint(path, f"its memory banks file {name} is missing") from None
    if payload["token"] != entry.get("token"):
        raise UnreadableCheckpoint(path, f"{name} is another checkpoint's memory banks file")


def drop_stale_banks(last: Path) -> None:
    """Remove the memory banks files beside `last` (and `.tmp`s of them) that neither `last`
    nor `last.prev.pt` names: each resume point keeps its own banks file."""
    keep = set()
    for checkpoint in (last, previous_path(last)):
        entry = read_entry(checkpoint, "memory")
        if isinstance(entry, dict) and entry.get("banks_file"):
            keep.add(entry["banks_file"])
    for pattern in (f"{last.stem}.banks.*.pt", f"{last.stem}.banks.*.pt.tmp"):
        for path in last.parent.glob(pattern):
            if path.name not in keep:
                path.unlink(missing_ok=True)
