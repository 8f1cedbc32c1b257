"""Cross-entropy training of the (PMA) caption decoder, streaming from the feature cache.

One sample per (image, caption); batches stream from the Zarr/HDF5 cache (chunk-level shuffle,
shuffle buffer, background prefetch). Adam(0.9, 0.98) with linear warm-up and step decay,
gradient clipping, AMP (bf16 on CUDA). The epochs, validation (val loss and greedy CIDEr-D),
checkpoints (`last.pt` for an exact resume, its float16 memory banks in their own
`last.banks.<token>.pt` beside it; `best.pt` self-describing: `shared.models.factory`), early
stopping on val CIDEr-D, resume and multi-process runs (`torchrun`: DistributedDataParallel,
each rank streams its own share of the chunks) are `shared.training_loop`'s; this module is
the cross-entropy objective and the stage. Metrics go to `log.jsonl` and `curves.png` (with
`train.tensorboard` also to TensorBoard in `tensorboard/xe/`, prototype refreshes included:
`shared.run_log`); a warm-up longer than the run and a training loss that does not fall are
warnings (stderr, the epoch record's `"warnings"`, the manifest summary). At the end the
memory banks are dumped for `cluster activations`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from shared.checkpoint_files import load_checkpoint
from shared.compiled import compile_forward
from shared.config import Config
from shared.devices import autocast
from shared.manifest import write_manifest
from shared.models.caption_decoder import CaptionDecoder, caption_loss
from shared.models.factory import build_decoder, decoder_meta
from shared.prototypes import read_feature_prototypes, read_memory_prototypes, write_banks
from shared.run_log import RunLog, require_tensorboard
from shared.stage_runner import StageResult, StageRun, run_stage
from shared.stages import (cluster_activations_stage, cluster_features_stage,
                           memory_banks_path, memory_banks_stage, train_dir, train_stage)
from shared.training_loop import (LoopSettings, NonFiniteLoss, TrainingLoop, data_parallel,
                                  join_run)
from shared.training_schedule import LossTrend, RunWarnings, lr_factor, warmup_warning
from train.cache_data import TrainingCache, make_validator
from train.curves import plot_curves
from train.self_memory import SelfMemory

__all__ = ["CrossEntropy", "NonFiniteLoss", "build_decoder", "train"]


class CrossEntropy:
    """The cross-entropy objective: next-word loss of the training captions. A batch holds
    the visual tokens (`array`) and the caption `tokens`; `forward` is the decoder, possibly
    DDP-wrapped."""

    label, lr_key, train_mode = "train", "train.lr", True

    def __init__(self, config: Config, decoder: CaptionDecoder, forward: nn.Module, array: str,
                 device: torch.device, stream: Any = None,
                 validate: Callable[[], dict[str, float]] | None = None,
                 warnings: RunWarnings | None = None) -> None:
        self.config, self.module, self.forward, self.array = config, decoder, forward, array
        self.device, self.stream, self._validate = device, stream, validate
        self.warnings = warnings or RunWarnings(show=False)
        self.grad_clip = config.train.grad_clip
        self.trend = LossTrend(0)

    def lr(self, step: int, epoch: int) -> float:
        t = self.config.train
        return t.lr * lr_factor(step, epoch, t.warmup_steps, t.decay_every, t.decay_factor)

    def batches(self, epoch: int) -> tuple[Iterable[dict], int]:
        return self.stream.epoch(epoch), self.stream.n_batches(epoch)

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        tokens = batch["tokens"].to(self.device)
        with autocast(self.device, self.config.train.precision):
            logits = self.forward(batch[self.array].to(self.device), tokens[:, :-1])
        loss = caption_loss(logits.float(), tokens[:, 1:])
        self.trend.add(float(loss.detach()))
        return loss, {}

    def epoch_record(self, sums: dict[str, float], steps: int) -> dict[str, Any]:
        return {"train_loss": sums.get("loss", 0.0) / max(steps, 1)}

    def validate(self) -> dict[str, float]:
        self.module.eval()
        scores = self._validate()
        t = self.config.train
        self.warnings.add(self.trend.warning(
            "the training loss", f"train.lr ({t.lr:g}) and train.warmup_steps "
                                 f"({t.warmup_steps:,})"))
        return scores

    def epoch_line(self, record: dict[str, Any]) -> str:
        return (f"loss {record['train_loss']:.3f}, val loss {record['val_loss']:.3f}, "
                f"val CIDEr-D {record['val_cider']:.3f}")

    def best_entries(self, record: dict[str, Any]) -> dict[str, Any]:
        return {"meta": decoder_meta(self.module, self.config.decoder.visual_input)}


def train(config: Config, force: bool = False, progress: bool = True,
          resume: bool = False) -> StageResult:
    """Train (or resume, or skip) the decoder of `config`.

    `resume` insists on continuing `last.pt` (an error if it is missing or from another
    config); otherwise a matching `last.pt` is continued and anything else starts over.
    """
    spec = train_stage(config)
    require_tensorboard(config.train.tensorboard)
    device, ranks = join_run(config.run.device)

    def build(run: StageRun) -> dict[str, Any]:
        out_dir = train_dir(config)
        out_dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(config.train.seed)
        log = RunLog(out_dir / "log.jsonl", "xe", config.train.tensorboard, main=ranks.main)
        cache = TrainingCache.open(config)
        decoder = build_decoder(config, cache.d_visual, len(cache.vocab)).to(device)
        if config.memory.cross:
            prototypes = read_feature_prototypes(cluster_features_stage(config).output)
            decoder.set_cross_prototypes(torch.from_numpy(prototypes).to(device))
        memory = SelfMemory(decoder, config, on_refresh=log.refresh) \
            if config.memory.self else None
        if memory is not None and config.memory.init_from_cluster:
            decoder.set_memory_prototypes([
                (torch.from_numpy(k).float().to(device), torch.from_numpy(v).float().to(device))
                for k, v in read_memory_prototypes(cluster_activations_stage(config).output)])
        forward = data_parallel(decoder, device, ranks, find_unused=config.memory.self)
        optimizer = torch.optim.Adam(decoder.parameters(), lr=config.train.lr,
                                     betas=(0.9, 0.98))
        train_samples = cache.samples("train")
        if len(train_samples) == 0:
            raise ValueError(f"train: no readable train images in {cache.store_path}")
        stream = cache.batches(train_samples, config.train.batch_size, seed=config.train.seed,
                               shuffle_buffer=config.train.shuffle_buffer,
                               shard=(ranks.rank, ranks.world))
        warnings = RunWarnings(show=ranks.main)
        forward = compile_forward(forward, config.train.compile, device, warnings.add)
        objective = CrossEntropy(config, decoder, forward, cache.array, device, stream,
                                 make_validator(decoder, cache, config, device), warnings)
        settings = LoopSettings(out_dir, run.identity, config.train.max_epochs,
                                config.train.patience, log,
                                lambda: plot_curves(log.path, out_dir / "curves.png"), progress)
        loop = TrainingLoop(objective, optimizer, settings, device, ranks, memory, warnings)
        start_epoch, ckpt = loop.start(force, resume, run.reason)
        per_epoch = stream.n_batches(start_epoch)
        warnings.add(warmup_warning("train.warmup_steps", config.train.warmup_steps,
                                    config.train.max_epochs, per_epoch))
        objective.trend = LossTrend(per_epoch * config.train.max_epochs)
        if ckpt is not None:
            objective.trend.load_state(ckpt.get("loss_trend"))
        result = loop.run(start_epoch, lambda: {"loss_trend": objective.trend.state()})
        run.lines.extend(result.lines)
        if not ranks.main:
            return {}
        if memory is not None:
            for line in memory.warnings():
                warnings.add(line)
            keys, values = memory.dump()
            write_banks(memory_banks_path(config), keys, values)
            write_manifest(memory_banks_stage(config), config, {"rows": [len(k) for k in keys]})
        best = load_checkpoint(loop.best, "decoder checkpoint", "re-run `python -m train "
                               "--force`", keys=("epoch", "val_cider", "val_loss"))
        run.say(f"{result.stopped} after {result.steps} steps; best val CIDEr-D "
                f"{best['val_cider']:.3f} (epoch {best['epoch'] + 1}) in {loop.best}")
        return {"best_epoch": best["epoch"] + 1, "val_cider": best["val_cider"],
                "val_loss": best["val_loss"], "stopped": result.stopped,
                "steps": result.steps, **warnings.summary()}

    return run_stage(spec, config, build, force=force, main=ranks.main)
