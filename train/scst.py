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

The epochs are `shared.training_loop`'s, as in cross-entropy training: validation (val loss,
greedy CIDEr-D), `train/scst/last.pt` (exact resume) and `train/scst/best.pt` (XE format), and
a `"phase": "scst"` record in SCST's own `train/scst/log.jsonl` (curves of XE then SCST in
`train/scst/curves.png`), after an epoch-0 record of the starting weights; every record names
its `baseline` and `loss_normalization` (with `train.tensorboard` also TensorBoard scalars in
`train/scst/tensorboard/scst/`: `shared.run_log`).
The starting weights count as a candidate for `best.pt` (epoch -1 there, epoch 0 in the log):
if SCST never beats them, evaluation keeps the cross-entropy decoder.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from shared.checkpoint_files import load_checkpoint
from shared.cider_reward import CiderDReward
from shared.config import Config
from shared.devices import autocast
from shared.manifest import decide, require_current
from shared.models.caption_decoder import CaptionDecoder
from shared.models.decoding import beam_candidates, candidate_mask, sample_captions
from shared.models.factory import build_decoder, decoder_meta
from shared.run_log import RunLog, require_tensorboard
from shared.stage_runner import StageResult, StageRun, run_stage
from shared.stages import scst_stage, train_dir, train_stage
from shared.training_loop import LoopSettings, TrainingLoop, data_parallel, join_run
from shared.training_schedule import RunWarnings
from shared.vocabulary import Vocabulary
from train.cache_data import TrainingCache, make_validator
from train.curves import plot_curves
from train.scst_objective import MEAN_BASELINES, baseline_rewards, load_reward, scst_loss, \
    token_log_probs, training_references
from train.self_memory import SelfMemory


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
class Candidates:
    """The last step's candidates (word ids [images * n, T]) and their rewards [images, n]
    (and the greedy captions' with the greedy baseline)."""

    words: np.ndarray
    rewards: np.ndarray
    greedy_rewards: np.ndarray | None


class SelfCritical:
    """The SCST objective: REINFORCE with a baseline on the CIDEr-D of the model's own
    captions. A batch holds the visual tokens (`array`) and the store `rows` of its images."""

    label, lr_key, train_mode = "train scst", "scst.lr", False  # eval mode: no dropout

    def __init__(self, config: Config, decoder: CaptionDecoder, forward: nn.Module, array: str,
                 image_ids: np.ndarray, reward: CiderDReward, vocab: Vocabulary,
                 device: torch.device, stream: Any = None,
                 validate: Callable[[], dict[str, float]] | None = None) -> None:
        self.config, self.module, self.forward, self.array = config, decoder, forward, array
        self.image_ids, self.reward, self.vocab, self.device = image_ids, reward, vocab, device
        self.stream, self._validate = stream, validate
        self.grad_clip = config.train.grad_clip
        self.settings = {"baseline": config.scst.baseline,
                         "loss_normalization": config.scst.loss_normalization}
        self.last: Candidates | None = None

    def lr(self, step: int, epoch: int) -> float:
        sc = self.config.scst
        return scst_lr(sc.lr, epoch, sc.decay_every, sc.decay_factor)

    def batches(self, epoch: int) -> tuple[Iterable[dict], int]:
        return self.stream.epoch(epoch), self.stream.n_batches(epoch)

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """Draw candidates, score them, one teacher-forced forward with grad through
        `forward` (`TeacherForced(decoder)`, possibly DDP-wrapped): the step's loss, with
        the time spent drawing candidates and computing rewards."""
        sc, max_len, vocab, device = self.config.scst, self.config.eval.max_length, \
            self.vocab, self.device
        n = sc.n_samples
        visual = batch[self.array].to(device)
        image_ids = self.image_ids[batch["rows"].numpy()]
        started = time.perf_counter()
        with autocast(device, self.config.train.precision):
            if sc.candidates == "beam":
                words = beam_candidates(self.module, visual, vocab.bos_id, vocab.eos_id, n,
                                        max_len)
            else:
                words = sample_captions(self.module, visual, vocab.bos_id, vocab.eos_id, n,
                                        max_len)
            greedy_words = self.module.greedy(visual, vocab.bos_id, vocab.eos_id, max_len) \
                if sc.baseline == "greedy" else None
        sampled = time.perf_counter()
        candidates = words.cpu().numpy()
        rewards = self.reward.score_ids(np.repeat(image_ids, n), candidates, vocab.words,
                                        vocab.eos_id, vocab.pad_id).reshape(-1, n)
        greedy_rewards = None if greedy_words is None else self.reward.score_ids(
            image_ids, greedy_words.cpu().numpy(), vocab.words, vocab.eos_id, vocab.pad_id)
        advantages = rewards - baseline_rewards(rewards, sc.baseline, greedy_rewards)
        scored = time.perf_counter()

        inputs = torch.cat([torch.full_like(words[:, :1], vocab.bos_id), words[:, :-1]], dim=1)
        with autocast(device, self.config.train.precision):
            logits = self.forward(visual, inputs, n)
        log_probs = token_log_probs(logits, words, vocab.pad_id, vocab.bos_id)
        mask = candidate_mask(words, vocab.eos_id, vocab.pad_id)
        loss = scst_loss(log_probs, mask, torch.from_numpy(advantages.reshape(-1)).to(device),
                         sc.loss_normalization, max_len)
        self.last = Candidates(candidates, rewards, greedy_rewards)
        return loss, {"reward_sum": float(rewards.sum()),
                      "greedy_sum": 0.0 if greedy_rewards is None else
                      float(greedy_rewards.sum()),
                      "candidates": float(rewards.size), "words": float(mask.sum()),
                      "sample_seconds": sampled - started, "reward_seconds": scored - sampled}

    def epoch_record(self, sums: dict[str, float], steps: int) -> dict[str, Any]:
        seen = max(sums.get("candidates", 0.0), 1.0)
        record = {"phase": "scst", **self.settings,
                  "scst_loss": sums.get("loss", 0.0) / max(steps, 1),
                  "mean_reward": sums.get("reward_sum", 0.0) / seen,
                  "mean_words": sums.get("words", 0.0) / seen,
                  "reward_seconds": sums.get("reward_seconds", 0.0),
                  "sample_seconds": sums.get("sample_seconds", 0.0),
                  "step_seconds": sums.get("step_seconds", 0.0)}
        if self.config.scst.baseline == "greedy":
            record["mean_greedy_reward"] = sums.get("greedy_sum", 0.0) / max(
                seen // self.config.scst.n_samples, 1)
        return record

    def validate(self) -> dict[str, float]:
        return self._validate()

    def epoch_line(self, record: dict[str, Any]) -> str:
        return (f"reward {record['mean_reward']:.3f} ({record['reward_seconds']:.1f} s of "
                f"{record['step_seconds']:.1f} s in rewards), val loss "
                f"{record['val_loss']:.3f}, val CIDEr-D {record['val_cider']:.3f}")

    def best_entries(self, record: dict[str, Any]) -> dict[str, Any]:
        return {"meta": decoder_meta(self.module, self.config.decoder.visual_input)}


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


def _start_decoder(config: Config, ckpt: dict, path: Path, cache: TrainingCache,
                   device: torch.device) -> CaptionDecoder:
    """The config's decoder with the starting checkpoint's weights (memory prototypes
    included); one line when the checkpoint was trained on other features or words, or does
    not fit `[decoder]` / `[memory]`."""
    meta, d_visual, n_words = ckpt["meta"], cache.d_visual, len(cache.vocab)
    if (meta.get("d_visual"), meta.get("vocab_size")) != (d_visual, n_words) or \
            meta.get("visual_input", config.decoder.visual_input) != config.decoder.visual_input:
        raise RuntimeError(f"{path} was trained on {meta.get('visual_input')} features of "
                           f"width {meta.get('d_visual')} with {meta.get('vocab_size')} words; "
                           f"this run has {config.decoder.visual_input} width {d_visual}, "
                           f"{n_words} words")
    decoder = build_decoder(config, d_visual, n_words).to(device)
    try:
        decoder.load_state_dict(ckpt["model"])
    except RuntimeError as err:
        raise RuntimeError(f"{path} does not fit the [decoder]/[memory] config: "
                           f"{str(err).splitlines()[0]}") from None
    return decoder


def train_scst(config: Config, force: bool = False, progress: bool = True,
               resume: bool = False) -> StageResult:
    """Self-critical training (or resume, or skip) after cross-entropy. `resume` insists on
    continuing `train/scst/last.pt`; without it a matching `last.pt` is continued and anything
    else starts over from the XE checkpoint."""
    require_tensorboard(config.train.tensorboard)
    sc = config.scst
    device, ranks = join_run(config.run.device)
    if ranks.world > 1:
        dist.barrier()  # rank 0 may still be writing the XE manifest
    least = 2 if sc.baseline in MEAN_BASELINES else 1
    if sc.n_samples < least:
        raise ValueError(f"scst.n_samples must be >= {least} with baseline {sc.baseline!r}, "
                         f"got {sc.n_samples}")
    if sc.init_checkpoint and not Path(sc.init_checkpoint).is_file():
        raise FileNotFoundError(f"scst.init_checkpoint not found: {sc.init_checkpoint}")
    spec = scst_stage(config)
    decision = decide(spec, config, force=force)
    if not decision.up_to_date:
        start_ckpt, start_path = _load_start(config, device)
    if ranks.world > 1:
        dist.barrier()  # every rank has checked the old output before rank 0 removes it

    def build(run: StageRun) -> dict[str, Any]:
        out_dir = spec.output.parent
        out_dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(config.train.seed)
        cache = TrainingCache.open(config)
        decoder = _start_decoder(config, start_ckpt, start_path, cache, device)
        decoder.eval()  # for the whole run: no dropout, sampled policy == differentiated one
        log = RunLog(out_dir / "log.jsonl", "scst", config.train.tensorboard, main=ranks.main)
        memory = SelfMemory(decoder, config, on_refresh=log.refresh) \
            if config.memory.self else None
        # segment vectors idle until prototypes exist (the XE start usually has them)
        forward = data_parallel(TeacherForced(decoder), device, ranks, config.memory.self and
                                not all(len(k) for k, _ in decoder.memory_prototypes()))
        optimizer = torch.optim.Adam(decoder.parameters(), lr=sc.lr, betas=(0.9, 0.98))
        train_images = cache.samples("train", per_image=1)
        if len(train_images) == 0:
            raise ValueError(f"train scst: no readable train images in {cache.store_path}")
        reward, reward_note = load_reward(training_references(cache.records),
                                          out_dir / "cider_df.npz")
        stream = cache.batches(train_images, sc.batch_size, seed=config.train.seed,
                               shuffle_buffer=config.train.shuffle_buffer,
                               shard=(ranks.rank, ranks.world))
        objective = SelfCritical(config, decoder, forward, cache.array, cache.image_ids, reward,
                                 cache.vocab, device, stream,
                                 make_validator(decoder, cache, config, device))
        xe_log = train_dir(config) / "log.jsonl"
        settings = LoopSettings(out_dir, run.identity, sc.max_epochs, sc.patience, log,
                                lambda: plot_curves(xe_log, out_dir / "curves.png", log.path),
                                progress)
        warnings = RunWarnings(show=ranks.main)
        loop = TrainingLoop(objective, optimizer, settings, device, ranks, memory, warnings)
        start_epoch, ckpt = loop.start(force, resume, run.reason)
        start_cider = ckpt["start_cider"] if ckpt is not None else float("nan")
        if ranks.main:
            loop.say(f"reward {reward_note}")
        if start_epoch == 0:
            first = loop.record_start({"phase": "scst", "start_checkpoint": str(start_path),
                                       **objective.settings})
            start_cider = loop.best_cider
            if ranks.main:
                loop.say(f"start {start_path}: val loss {first['val_loss']:.3f}, val CIDEr-D "
                         f"{start_cider:.3f}")
        result = loop.run(start_epoch, lambda: {"start_cider": start_cider})
        run.lines.extend(result.lines)
        if not ranks.main:
            return {}
        if memory is not None:
            for line in memory.warnings():
                warnings.add(line)
        best = load_checkpoint(loop.best, "decoder checkpoint", "re-run `python -m train "
                               "--scst-only --force`", keys=("epoch", "val_cider", "val_loss"))
        best_epoch = best["epoch"] + 1
        if best_epoch == 0:
            run.say(f"{result.stopped} after {result.steps} steps; no epoch beat the start "
                    f"(val CIDEr-D {start_cider:.3f}): {loop.best} holds the starting weights")
        else:
            run.say(f"{result.stopped} after {result.steps} steps; best val CIDEr-D "
                    f"{best['val_cider']:.3f} (epoch {best_epoch}, start {start_cider:.3f}) in "
                    f"{loop.best}")
        return {"best_epoch": best_epoch, "val_cider_start": start_cider,
                "val_cider": best["val_cider"], "val_loss": best["val_loss"],
                "stopped": result.stopped, "steps": result.steps,
                "start_checkpoint": str(start_path), **warnings.summary()}

    return run_stage(spec, config, build, force=force, main=ranks.main, decision=decision)
