"""Self-critical sequence training (SCST) of the caption decoder after cross-entropy.

Starts from the cross-entropy `train/best.pt` (or `scst.init_checkpoint`), weights and memory
prototypes included, and maximises the CIDEr-D of the decoder's own captions on the training
images (REINFORCE with a baseline, Rennie et al. 2017):

* candidates per image: `scst.n_samples` captions sampled word by word from the model
  (`scst.candidates = "sample"`), or the top `n_samples` beams of `beam_search` with beam size
  `n_samples` (`"beam"`, as in M2 / FSGR); at most `eval.max_length` words, <pad>/<bos> never
  generated, everything after the first <eos> is <pad>.
* reward: exact CIDEr-D against the image's training references with the document frequencies
  of the whole training split (`shared.cider_reward.CiderDReward`, cached in
  `train/scst/cider_df.npz`). References are the Karpathy tokens through `normalize_words`
  (all words, also those outside the vocabulary); candidates are the vocabulary's words, with
  `<unk>` kept as a word that matches no reference (so emitting it is never rewarded).
  `<eos>` is not a word of the reward on either side, as in M2 (its `decode` stops at
  `<eos>`); it counts in the loss. Every result's signature says so (`eos:loss`).
* baseline (`scst.baseline`): `"mean"`, the mean reward of all n candidates of the image, the
  candidate itself included (M2 Transformer, PMA-Net, FSGR); `"mean_others"`, the mean reward
  of the other n-1 candidates ("new self-critical", Luo 2020); `"greedy"`, the reward of the
  image's greedy caption (Rennie et al. 2017). Both means need n >= 2.
* loss: -(reward - baseline) x the candidate's summed log-probability of its words up to and
  including its first <eos> (so the model learns when to stop), normalised as
  `scst.loss_normalization` says: `"max_length"` (M2 / PMA-Net / FSGR: / `eval.max_length`,
  mean over candidates), `"tokens"` (sum over the batch / its token count, self-critical.pytorch)
  or `"candidate"` (the candidate's mean token log-probability, mean over candidates); see
  `scst_loss` for what each reference does and what each does to caption length.

Candidates are decoded by `shared.models.decoding`; reward, baselines, log-probabilities and
loss are `train.scst_objective`; this module is the step and the training loop.

The model stays in eval mode throughout (no dropout), so the policy the candidates are drawn
from is exactly the one whose log-probabilities are differentiated; those log-probabilities
renormalise over the words that can be generated (<pad>/<bos> excluded), as sampling does.
(M2's `train_scst` differs here: it calls `model.train()`, so its beam search and the
log-probabilities it differentiates run with dropout on, over the whole vocabulary.)
(Beam candidates are not samples of the policy: that variant is M2's heuristic. On the small
demo it is the one that raises greedy val CIDEr-D within a few epochs; with sampled candidates
the samples' reward rises but greedy captions first get worse, see tests/test_scst.py.)
Adam(0.9, 0.98) at `scst.lr`, x`scst.decay_factor` every `scst.decay_every` epochs (0: constant),
gradient clipping `train.grad_clip`, autocast `train.precision`. PMA memory: keys/values of
the teacher-forced forward feed `SelfMemory` and prototypes are refreshed on its schedule
(counted in SCST steps; banks start empty, the XE prototypes serve until the first refresh).

Each epoch: validation exactly as in cross-entropy training (val loss, greedy CIDEr-D), then
`train/scst/last.pt` (exact resume; the previous one kept as `last.prev.pt` until the new one
is complete, as in cross-entropy training) and `train/scst/best.pt` (XE format), and a `"phase":
"scst"` record in the shared `train/log.jsonl`, after an epoch-0 record of the starting
weights; every such record names its `baseline` and `loss_normalization` (with
`train.tensorboard` also TensorBoard scalars in `train/tensorboard/scst/`: `shared.run_log`).
The starting weights count as a candidate for `best.pt` (epoch -1 there, epoch 0 in the log):
if SCST never beats them, evaluation keeps the cross-entropy decoder.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from shared.checkpoint_files import load_checkpoint
from shared.cider_reward import CiderDReward
from shared.config import Config
from shared.devices import autocast, resolve_device
from shared.manifest import current_state, decide, remove_manifest, require_current, \
    write_manifest
from shared.models.caption_decoder import CaptionDecoder
from shared.models.decoding import beam_candidates, candidate_mask, sample_captions
from shared.run_log import RunLog, require_tensorboard
from shared.stages import scst_stage, train_dir, train_stage, visual_stage, vocab_stage
from shared.training_schedule import RunWarnings, open_resume_point, resume_state, save_atomic
from shared.vocabulary import Vocabulary
from train.cache_data import TrainingCache, make_validator
from train.curves import plot_curves
from train.scst_objective import MEAN_BASELINES, baseline_rewards, load_reward, scst_loss, \
    token_log_probs, training_references
from train.self_memory import SelfMemory
from train.trainer import (NonFiniteLoss, banks_check, build_decoder, drop_stale_banks,
                           init_distributed, refresh_prototypes)

# defined here, and (as before the split) the decoding and objective pieces the step uses
__all__ = ["StepResult", "TeacherForced", "scst_lr", "scst_step", "train_scst",
           "baseline_rewards", "beam_candidates", "candidate_mask", "load_reward",
           "sample_captions", "scst_loss", "token_log_probs", "training_references"]


# -- one step ---------------------------------------------------------------------------------

def scst_lr(base_lr: float, epoch: int, decay_every: int, decay_factor: float) -> float:
    """`base_lr` x `decay_factor` every `decay_every` epochs (0-based `epoch`; 0: constant)."""
    if decay_every <= 0:
        return base_lr
    return base_lr * decay_factor ** (epoch // decay_every)


class TeacherForced(nn.Module):
    """Next-word logits of every candidate, visual tokens encoded once per image (the module
    DDP wraps, so gradients are averaged over ranks)."""

    def __init__(self, decoder: CaptionDecoder) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, visual: torch.Tensor, inputs: torch.Tensor, repeat: int) -> torch.Tensor:
        encoded, allowed = self.decoder.encode(visual)
        encoded = encoded.repeat_interleave(repeat, dim=0)
        if allowed is not None and allowed.shape[0] > 1:
            allowed = allowed.repeat_interleave(repeat, dim=0)
        return self.decoder.decode(inputs, encoded, allowed)


@dataclass
class StepResult:
    """What one SCST step did: its loss, the candidates (word ids [images * n, T]) and their
    rewards [images, n] (and of the greedy captions with the greedy baseline), words scored,
    and where the time went."""

    loss: float
    candidates: np.ndarray
    rewards: np.ndarray
    greedy_rewards: np.ndarray | None
    words: int
    sample_seconds: float      # candidates (+ greedy captions), no grad
    reward_seconds: float      # CIDEr-D of every caption + baselines
    update_seconds: float      # teacher-forced forward, loss, backward, clipping, Adam


def scst_step(decoder: CaptionDecoder, forward: nn.Module, optimizer: torch.optim.Optimizer,
              visual: torch.Tensor, image_ids: np.ndarray, reward: CiderDReward,
              vocab: Vocabulary, config: Config, device: torch.device) -> StepResult:
    """One self-critical update on the images `visual` [B, Lv, d] (ids `image_ids`): draw
    candidates, score them, one teacher-forced forward with grad through `forward`
    (`TeacherForced(decoder)`, possibly DDP-wrapped), Adam step. The decoder is expected in
    eval mode. Raises NonFiniteLoss (before touching the weights) on a NaN/inf loss."""
    sc, max_len = config.scst, config.eval.max_length
    n = sc.n_samples
    started = time.perf_counter()
    with autocast(device, config.train.precision):
        if sc.candidates == "beam":
            words = beam_candidates(decoder, visual, vocab.bos_id, vocab.eos_id, n, max_len)
        else:
            words = sample_captions(decoder, visual, vocab.bos_id, vocab.eos_id, n, max_len)
        greedy_words = decoder.greedy(visual, vocab.bos_id, vocab.eos_id, max_len) \
            if sc.baseline == "greedy" else None
    sampled = time.perf_counter()
    candidates = words.cpu().numpy()
    rewards = reward.score_ids(np.repeat(image_ids, n), candidates, vocab.words,
                               vocab.eos_id, vocab.pad_id).reshape(-1, n)
    greedy_rewards = None if greedy_words is None else reward.score_ids(
        image_ids, greedy_words.cpu().numpy(), vocab.words, vocab.eos_id, vocab.pad_id)
    advantages = rewards - baseline_rewards(rewards, sc.baseline, greedy_rewards)
    scored = time.perf_counter()

    inputs = torch.cat([torch.full_like(words[:, :1], vocab.bos_id), words[:, :-1]], dim=1)
    with autocast(device, config.train.precision):
        logits = forward(visual, inputs, n)
    log_probs = token_log_probs(logits, words, vocab.pad_id, vocab.bos_id)
    mask = candidate_mask(words, vocab.eos_id, vocab.pad_id)
    loss = scst_loss(log_probs, mask, torch.from_numpy(advantages.reshape(-1)).to(device),
                     sc.loss_normalization, max_len)
    if not torch.isfinite(loss):
        raise NonFiniteLoss(f"loss is {float(loss.detach())}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(decoder.parameters(), config.train.grad_clip)
    optimizer.step()
    return StepResult(float(loss.detach()), candidates, rewards, greedy_rewards,
                      int(mask.sum()), sampled - started, scored - sampled,
                      time.perf_counter() - scored)


# -- the training loop ------------------------------------------------------------------------

def _load_start(config: Config, device: torch.device) -> tuple[dict, Path]:
    """The starting checkpoint: `scst.init_checkpoint` or the current XE best.pt."""
    if config.scst.init_checkpoint:
        path = Path(config.scst.init_checkpoint)  # existence checked by train_scst
        fix = "point scst.init_checkpoint at a best.pt written by `python -m train`"
    else:
        path = train_stage(config).output
        require_current(train_stage(config), config, "python -m train --xe-only")
        fix = "re-run `python -m train --xe-only --force`"
    ckpt = load_checkpoint(path, "decoder checkpoint", fix, keys=("model", "meta"),
                           map_location=device)
    return ckpt, path


def _scst_after(epoch: int) -> Callable[[dict], bool]:
    """Selects the `"phase": "scst"` records after `epoch` (-1: all of them)."""
    return lambda r: r.get("phase") == "scst" and r["epoch"] > epoch


def train_scst(config: Config, force: bool = False, progress: bool = True,
               resume: bool = False) -> list[str]:
    """Self-critical training (or resume, or skip) after cross-entropy; returns the lines to
    print. `resume` insists on continuing `train/scst/last.pt`; without it a matching
    `last.pt` is continued and anything else starts over from the XE checkpoint."""
    require_tensorboard(config.train.tensorboard)
    sc = config.scst
    device = resolve_device(config.clip.device)
    ranks = init_distributed(device)
    if device.type == "cuda" and ranks.world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if ranks.world > 1:
        dist.barrier()  # rank 0 may still be writing the XE manifest
    least = 2 if sc.baseline in MEAN_BASELINES else 1
    if sc.n_samples < least:
        raise ValueError(f"scst.n_samples must be >= {least} with baseline {sc.baseline!r}, "
                         f"got {sc.n_samples}")
    if sc.init_checkpoint and not Path(sc.init_checkpoint).is_file():
        raise FileNotFoundError(f"scst.init_checkpoint not found: {sc.init_checkpoint}")
    spec = scst_stage(config)
    stage_name = "python -m extract" if config.decoder.visual_input == "fsgr" else \
        "python -m extract clip"
    require_current(visual_stage(config), config, stage_name)
    require_current(vocab_stage(config), config, "python -m extract vocab")
    decision = decide(spec, config, force=force)
    if decision.up_to_date:
        return [f"train scst: {decision.reason}"]
    start_ckpt, start_path = _load_start(config, device)
    if ranks.world > 1:
        dist.barrier()  # every rank has checked the old output before rank 0 removes it
    if ranks.main:
        remove_manifest(spec.output)  # from here on the old output is no longer complete
    state = current_state(spec, config)
    out_dir = spec.output.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.train.seed)

    cache = TrainingCache.open(config)
    array, vocab, d_visual = cache.array, cache.vocab, cache.d_visual
    meta = start_ckpt["meta"]
    if (meta.get("d_visual"), meta.get("vocab_size")) != (d_visual, len(vocab)) or \
            meta.get("visual_input", config.decoder.visual_input) != config.decoder.visual_input:
        raise RuntimeError(f"{start_path} was trained on {meta.get('visual_input')} features of "
                           f"width {meta.get('d_visual')} with {meta.get('vocab_size')} words; "
                           f"this run has {config.decoder.visual_input} width {d_visual}, "
                           f"{len(vocab)} words")
    decoder = build_decoder(config, d_visual, len(vocab)).to(device)
    try:
        decoder.load_state_dict(start_ckpt["model"])  # memory prototypes included
    except RuntimeError as err:
        raise RuntimeError(f"{start_path} does not fit the [decoder]/[memory] config: "
                           f"{str(err).splitlines()[0]}") from None
    decoder.eval()  # for the whole run: no dropout, sampled policy == differentiated policy
    run_log = RunLog(train_dir(config) / "log.jsonl", "scst", config.train.tensorboard,
                     main=ranks.main)
    memory = SelfMemory(decoder, config, on_refresh=run_log.refresh) \
        if config.memory.self else None
    forward: nn.Module = TeacherForced(decoder)
    if ranks.world > 1:
        forward = nn.parallel.DistributedDataParallel(
            forward, device_ids=[device.index] if device.type == "cuda" else None,
            broadcast_buffers=False,  # prototypes are synced explicitly at each refresh
            # segment vectors idle until prototypes exist (the XE start usually has them)
            find_unused_parameters=config.memory.self
            and not all(len(keys) for keys, _ in decoder.memory_prototypes()))
    optimizer = torch.optim.Adam(decoder.parameters(), lr=sc.lr, betas=(0.9, 0.98))

    train_images = cache.samples("train", per_image=1)
    if len(train_images) == 0:
        raise ValueError(f"train scst: no readable train images in {cache.store_path}")
    validate = make_validator(decoder, cache, config, device)
    reward, reward_note = load_reward(training_references(cache.records),
                                      out_dir / "cider_df.npz")
    batches = cache.batches(train_images, sc.batch_size, seed=config.train.seed,
                            shuffle_buffer=config.train.shuffle_buffer,
                            shard=(ranks.rank, ranks.world))

    best_meta = {"d_visual": d_visual, "vocab_size": len(vocab),
                 "visual_input": config.decoder.visual_input}
    last, best = out_dir / "last.pt", out_dir / "best.pt"
    log_path = run_log.path
    settings = {"baseline": sc.baseline, "loss_normalization": sc.loss_normalization}
    start_epoch, step, best_cider, stale_epochs, start_cider = 0, 0, -math.inf, 0, math.nan
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
        start_cider = ckpt["start_cider"]
        lines.append(f"train scst: resuming after epoch {start_epoch} (step {step})")
    if resume and start_epoch == 0:
        raise RuntimeError(f"--resume: {last} is missing or was written with another config "
                           f"({decision.reason})")
    if ranks.main:
        lines.append(f"train scst: reward {reward_note}")
    # SCST records (and events) of epochs not in last.pt (all of them when starting over) go
    if start_epoch:
        run_log.resume(_scst_after(start_epoch), step)
    else:
        run_log.start_over(_scst_after(-1))
    if start_epoch == 0:
        if ranks.main:
            record: dict[str, Any] = {"phase": "scst", "epoch": 0, "step": 0,
                                      "start_checkpoint": str(start_path), **settings,
                                      **validate(), **warnings.take()}
            start_cider = best_cider = record["val_cider"]
            save_atomic({"model": decoder.state_dict(), "epoch": -1, "meta": best_meta,
                         "val_loss": record["val_loss"], "val_cider": record["val_cider"]},
                        best)
            run_log.write(record)
            plot_curves(log_path, train_dir(config) / "curves.png")
            lines.append(f"train scst: start {start_path}: val loss {record['val_loss']:.3f}, "
                         f"val CIDEr-D {start_cider:.3f}")
        if ranks.world > 1:
            flags = torch.tensor([best_cider, start_cider], dtype=torch.float64)
            dist.broadcast(flags, 0)
            best_cider, start_cider = float(flags[0]), float(flags[1])

    n = sc.n_samples
    stopped = "max_epochs"
    for epoch in range(start_epoch, sc.max_epochs):
        if stale_epochs >= sc.patience:
            stopped = "early stop"
            break
        lr = scst_lr(sc.lr, epoch, sc.decay_every, sc.decay_factor)
        for group in optimizer.param_groups:
            group["lr"] = lr
        n_steps = batches.n_batches(epoch)
        if ranks.world > 1:  # every rank must take the same number of steps
            count = torch.tensor(n_steps)
            dist.all_reduce(count, op=dist.ReduceOp.MIN)
            n_steps = int(count)
        started = time.perf_counter()
        loss_sum = reward_sum = greedy_sum = 0.0
        candidates_seen = words_sum = refreshes = 0
        reward_s = sample_s = step_s = 0.0
        bar = tqdm(total=n_steps, disable=not (progress and ranks.main), unit="batch",
                   desc=f"scst {epoch + 1}/{sc.max_epochs}")
        for i, batch in enumerate(batches.epoch(epoch)):
            if i == n_steps:
                break
            step_started = time.perf_counter()
            try:
                result = scst_step(decoder, forward, optimizer, batch[array].to(device),
                                   cache.image_ids[batch["rows"].numpy()], reward, vocab, config,
                                   device)
            except NonFiniteLoss as err:
                raise NonFiniteLoss(
                    f"train scst: {err} at epoch {epoch + 1}, step {step + 1}; stopped, {last} "
                    f"keeps the last good epoch (try a lower scst.lr)") from None
            rewards, greedy_rewards = result.rewards, result.greedy_rewards
            step += 1
            if memory is not None:
                memory.collect()
                if memory.due(step):
                    refresh_prototypes(memory, decoder, ranks)
                    refreshes += 1
            sample_s += result.sample_seconds
            reward_s += result.reward_seconds
            step_s += time.perf_counter() - step_started
            loss_sum += result.loss
            reward_sum += float(rewards.sum())
            greedy_sum += 0.0 if greedy_rewards is None else float(greedy_rewards.sum())
            candidates_seen += rewards.size
            words_sum += result.words
            bar.update(1)
            bar.set_postfix(reward=f"{reward_sum / max(candidates_seen, 1):.3f}")
        bar.close()
        record = {"phase": "scst", "epoch": epoch + 1, "step": step, **settings,
                  "scst_loss": loss_sum / max(n_steps, 1),
                  "mean_reward": reward_sum / max(candidates_seen, 1),
                  "mean_words": words_sum / max(candidates_seen, 1), "lr": lr,
                  "prototype_refreshes": refreshes, "reward_seconds": reward_s,
                  "sample_seconds": sample_s, "step_seconds": step_s}
        if sc.baseline == "greedy":
            record["mean_greedy_reward"] = greedy_sum / max(candidates_seen // n, 1)
        if ranks.main:
            record.update(validate())
            record["seconds"] = time.perf_counter() - started
            record.update(warnings.take())
            improved = record["val_cider"] > best_cider
            best_cider = max(best_cider, record["val_cider"])
            stale_epochs = 0 if improved else stale_epochs + 1
            if improved:
                save_atomic({"model": decoder.state_dict(), "epoch": epoch, "meta": best_meta,
                             "val_loss": record["val_loss"], "val_cider": record["val_cider"]},
                            best)
            banks = memory.save_banks(last) if memory is not None else {}  # before last.pt
            try:
                rotation.before_save()
                save_atomic({**resume_state(state["identity"], decoder, optimizer, device),
                             "memory": banks,
                             "epoch": epoch, "step": step, "best_cider": best_cider,
                             "stale_epochs": stale_epochs, "start_cider": start_cider}, last)
            finally:
                if memory is not None:
                    drop_stale_banks(last)
            run_log.write(record)
            plot_curves(log_path, train_dir(config) / "curves.png")
            lines.append(f"train scst: epoch {epoch + 1}: reward {record['mean_reward']:.3f} "
                         f"({reward_s:.1f} s of {step_s:.1f} s in rewards), val loss "
                         f"{record['val_loss']:.3f}, val CIDEr-D {record['val_cider']:.3f}"
                         + (" (best)" if improved else ""))
        if ranks.world > 1:
            flags = torch.tensor([best_cider, float(stale_epochs)], dtype=torch.float64)
            dist.broadcast(flags, 0)
            best_cider, stale_epochs = float(flags[0]), int(flags[1])

    run_log.close()
    if ranks.main:
        if memory is not None:
            for line in memory.warnings():
                warnings.add(line)
        best_ckpt = load_checkpoint(best, "decoder checkpoint", "re-run `python -m train "
                                    "--scst-only --force`",
                                    keys=("epoch", "val_cider", "val_loss"))
        best_epoch = best_ckpt["epoch"] + 1
        write_manifest(spec, config, {"best_epoch": best_epoch, "val_cider_start": start_cider,
                                      "val_cider": best_ckpt["val_cider"],
                                      "val_loss": best_ckpt["val_loss"], "stopped": stopped,
                                      "steps": step, "start_checkpoint": str(start_path),
                                      **warnings.summary()},
                       state=state)
        if best_epoch == 0:
            lines.append(f"train scst: {stopped} after {step} steps; no epoch beat the start "
                         f"(val CIDEr-D {start_cider:.3f}): {best} holds the starting weights")
        else:
            lines.append(f"train scst: {stopped} after {step} steps; best val CIDEr-D "
                         f"{best_ckpt['val_cider']:.3f} (epoch {best_epoch}, start "
                         f"{start_cider:.3f}) in {best}")
    return lines
