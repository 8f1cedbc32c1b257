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
from torch.nn import functional as F
from tqdm import tqdm

from shared.checkpoint_files import load_checkpoint
from shared.cider_reward import CiderDReward, references_fingerprint
from shared.config import Config
from shared.devices import autocast, resolve_device
from shared.karpathy import ImageRecord, split_records
from shared.manifest import current_state, decide, remove_manifest, require_current, \
    write_manifest
from shared.models.beam_search import beam_search
from shared.models.caption_decoder import CaptionDecoder
from shared.run_log import RunLog, require_tensorboard
from shared.stages import scst_stage, train_dir, train_stage, visual_stage, vocab_stage
from shared.training_schedule import RunWarnings, open_resume_point, resume_state, save_atomic
from shared.vocabulary import Vocabulary, normalize_words
from train.cache_data import TrainingCache, make_validator
from train.curves import plot_curves
from train.self_memory import SelfMemory
from train.trainer import (NonFiniteLoss, banks_check, build_decoder, drop_stale_banks,
                           init_distributed, refresh_prototypes)

__all__ = ["StepResult", "TeacherForced", "baseline_rewards", "beam_candidates",
           "candidate_mask", "load_reward", "sample_captions", "scst_loss", "scst_lr",
           "scst_step", "token_log_probs", "train_scst", "training_references"]


# -- the pieces (pure functions, tested on their own) ----------------------------------------

MEAN_BASELINES = ("mean", "mean_others")


def baseline_rewards(rewards: np.ndarray, baseline: str,
                     greedy: np.ndarray | None = None) -> np.ndarray:
    """The baseline of every candidate, from `rewards` [images, n] (candidates of an image in
    a row): `"mean"` = mean reward of all n candidates of the image, itself included (M2's
    `torch.mean(reward, -1, keepdim=True)`); `"mean_others"` = mean reward of the other n-1
    (Luo 2020); both need n >= 2. `"greedy"` = `greedy` [images], the reward of each image's
    greedy caption. Since r - mean_all = (n-1)/n x (r - mean_others), the two means give the
    same update direction per image, M2's scaled by (n-1)/n."""
    rewards = np.asarray(rewards, dtype=np.float64)
    if rewards.ndim != 2:
        raise ValueError(f"rewards must be [images, candidates], got shape {rewards.shape}")
    n = rewards.shape[1]
    if baseline in MEAN_BASELINES:
        if n < 2:
            raise ValueError(f"the {baseline} baseline needs scst.n_samples >= 2 (it "
                             f"averages several candidates of the image)")
        if baseline == "mean":
            return np.repeat(rewards.mean(axis=1, keepdims=True), n, axis=1)
        return (rewards.sum(axis=1, keepdims=True) - rewards) / (n - 1)
    if baseline == "greedy":
        if greedy is None:
            raise ValueError("the greedy baseline needs the greedy captions' rewards")
        greedy = np.asarray(greedy, dtype=np.float64)
        if greedy.shape != rewards.shape[:1]:
            raise ValueError(f"{greedy.shape[0] if greedy.ndim else 0} greedy rewards for "
                             f"{rewards.shape[0]} images")
        return np.repeat(greedy[:, None], n, axis=1)
    raise ValueError(f"unknown baseline {baseline!r} (expected mean, mean_others or greedy)")


def candidate_mask(words: torch.Tensor, eos_id: int, pad_id: int = 0) -> torch.Tensor:
    """[N, T] True for the words of each candidate up to and including its first <eos>
    (every non-padding word when it has none)."""
    is_eos = (words == eos_id).long()
    before_first_eos = (is_eos.cumsum(dim=1) - is_eos) == 0
    return before_first_eos & (words != pad_id)


def _after_first_eos_to_pad(words: torch.Tensor, eos_id: int, pad_id: int) -> torch.Tensor:
    keep = candidate_mask(words, eos_id, pad_id)
    return torch.where(keep, words, torch.full_like(words, pad_id))


@torch.no_grad()
def sample_captions(decoder: CaptionDecoder, visual: torch.Tensor, bos_id: int, eos_id: int,
                    n_samples: int, max_len: int,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """`n_samples` captions per image of `visual` [B, Lv, d], drawn word by word from the
    model's distribution (incremental decoding; <pad>/<bos> never drawn). Returns word ids
    [B * n_samples, <= max_len] without <bos>, rows image-major (image b: rows b*n .. b*n+n-1),
    <pad> after each row's first <eos>; a row without <eos> has `max_len` words. The caller
    chooses the mode (eval: no dropout). The logits are cast to float32 before the softmax and
    the draw, also under bf16/fp16 autocast."""
    pad_id = decoder.pad_id
    state = decoder.start_decoding(*decoder.encode(visual), repeat=n_samples)
    rows = visual.shape[0] * n_samples
    fed = torch.full((rows,), bos_id, dtype=torch.long, device=visual.device)
    finished = torch.zeros(rows, dtype=torch.bool, device=visual.device)
    out = []
    for _ in range(max_len):
        logits = decoder.step(fed, state).float()
        logits[:, [pad_id, bos_id]] = -torch.inf
        word = torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)[:, 0]
        out.append(torch.where(finished, torch.full_like(word, pad_id), word))
        finished |= word == eos_id
        fed = torch.where(finished, torch.full_like(word, eos_id), word)
        if finished.all():
            break
    return torch.stack(out, dim=1)


@torch.no_grad()
def beam_candidates(decoder: CaptionDecoder, visual: torch.Tensor, bos_id: int, eos_id: int,
                    n_beams: int, max_len: int) -> torch.Tensor:
    """The `n_beams` hypotheses of a beam search of size `n_beams` per image, in the layout of
    `sample_captions` ([B * n_beams, <= max_len], image-major, <pad> after the first <eos>)."""
    result = beam_search(decoder, visual, bos_id, eos_id, beam_size=n_beams, max_len=max_len)
    words = result.tokens.reshape(-1, result.tokens.shape[-1])
    return _after_first_eos_to_pad(words, eos_id, decoder.pad_id)


def token_log_probs(logits: torch.Tensor, words: torch.Tensor, pad_id: int,
                    bos_id: int) -> torch.Tensor:
    """[N, T] log-probability of each word of `words` under next-word `logits` [N, T, V],
    renormalised over the words that can be generated (<pad>/<bos> excluded, as in sampling
    and beam search); 0 at <pad> positions (which can never be generated). Computed in float32
    whatever the dtype of `logits` (bf16/fp16 under autocast)."""
    logits = logits.float().clone()  # float32 log_softmax; clone: never edit the caller's
    logits[..., [pad_id, bos_id]] = -torch.inf
    picked = F.log_softmax(logits, dim=-1).gather(-1, words[..., None])[..., 0]
    return torch.where(words == pad_id, torch.zeros_like(picked), picked)  # <pad>: -inf -> 0


LOSS_NORMALIZATIONS = ("max_length", "tokens", "candidate")


def scst_loss(log_probs: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor,
              normalization: str = "max_length", max_length: int | None = None) -> torch.Tensor:
    """The self-critical loss -(sum over candidates i of A_i x S_i) / Z.

    `log_probs` [N, T] per word, `mask` [N, T] the words that count (up to and including the
    first <eos>), `advantages` [N] = A_i = reward - baseline (no gradient); S_i = the sum of
    candidate i's counted log-probabilities, |y_i| = its counted words (<eos> included).
    `normalization` (`scst.loss_normalization`) chooses Z:

    * `"max_length"`: Z = N x `max_length` (`eval.max_length`), i.e. the mean over candidates
      of A_i x S_i / max_length. M2 Transformer's `train_scst`, reused by PMA-Net and FSGR:
      `loss = -torch.mean(log_probs, -1) * (reward - reward_baseline); loss = loss.mean()`,
      where `beam_search` returns log_probs [B, beam, max_len], the log-probability of each
      chosen word, the first <eos>'s included (the mask is updated after that step) and 0
      after it, so the mean over the last axis is S_i / max_len.
    * `"tokens"`: Z = sum_i |y_i|, every counted word of the batch weighs the same.
      self-critical.pytorch's `RewardCriterion` (and its `new_self_critical` structure loss)
      with `reduction="mean"`: `sum(-logp * reward * mask) / sum(mask)`, the mask covering
      each sample's words and its first <eos>.
    * `"candidate"`: the mean over candidates of A_i x S_i / |y_i| (each candidate's mean
      token log-probability). What those self-critical.pytorch losses give per sample with
      `reduction="none"` (its drop_worst option), averaged; this module's loss before
      `"max_length"` became the default.

    Under DDP every rank normalises its own candidates and the gradients are averaged, so
    `"tokens"` divides by each rank's token count, not the global one.

    What each does to caption length, in expectation over sampled candidates (beam candidates
    are not samples of the policy, so there all three are heuristics). `"max_length"` divides
    by a constant: exactly the REINFORCE gradient E[(r - b) grad log p(y)] / max_length,
    which prefers no length the reward does not prefer, whatever the baseline (only its
    variance depends on it). With `"mean"` the baseline contains the candidate's own reward,
    but r - mean_all = (n-1)/n x (r - mean_others), the mean of the other, independent
    candidates, so it is still unbiased, scaled by (n-1)/n. `"candidate"` estimates
    E[(r - b) g(y)] with g = grad(log p(y)) / |y|; with either mean baseline that is (up to
    (n-1)/n) E[r g] - E[r] E[g]: zero whenever the reward does not depend on the length, and
    otherwise it moves the length the way the reward prefers. Its caveat: a baseline that sits
    above the candidates' mean reward (typically the greedy one) leaves E[r - b] < 0, and then
    the update, grad E[(r - b) / |y|] for a fixed b, favours *long* captions (a smaller 1/|y|
    shrinks the negative term). `"tokens"` divides by the batch's total length, which depends
    on the candidates too: with the mean baselines it keeps no length preference where the
    reward has none, and with a baseline above the mean reward it drifts toward long captions
    like `"candidate"`, less so as the batch grows and its total length becomes a constant.
    All of this is checked exactly on an enumerable toy policy in tests/test_scst.py.
    """
    if normalization not in LOSS_NORMALIZATIONS:
        raise ValueError(f"unknown loss normalization {normalization!r} (expected "
                         f"{', '.join(LOSS_NORMALIZATIONS)})")
    counted = mask.to(log_probs.dtype)
    summed = torch.where(mask, log_probs, torch.zeros_like(log_probs)).sum(dim=1)
    weighted = advantages.to(summed.dtype) * summed
    if normalization == "max_length":
        if max_length is None or max_length < mask.shape[1]:
            raise ValueError(f"the max_length normalization needs max_length >= the "
                             f"{mask.shape[1]} words of the candidates, got {max_length}")
        return -weighted.mean() / max_length
    if normalization == "tokens":
        return -weighted.sum() / counted.sum().clamp(min=1.0)
    return -(weighted / counted.sum(dim=1).clamp(min=1.0)).mean()


def scst_lr(base_lr: float, epoch: int, decay_every: int, decay_factor: float) -> float:
    """`base_lr` x `decay_factor` every `decay_every` epochs (0-based `epoch`; 0: constant)."""
    if decay_every <= 0:
        return base_lr
    return base_lr * decay_factor ** (epoch // decay_every)


def training_references(records: list[ImageRecord]) -> dict[int, list[list[str]]]:
    """image id -> every reference of the training split, tokenised like generated captions
    (`normalize_words` of the Karpathy tokens: all words, in the vocabulary or not)."""
    return {r.image_id: [normalize_words(tokens) for tokens in r.tokens]
            for r in split_records(records, "train")}


def load_reward(references: dict[int, list[list[str]]], cache: Path) -> tuple[CiderDReward, str]:
    """The CIDEr-D reward of `references`: from `cache` when it was built from exactly these
    references (fingerprint), else built and cached (atomically). Returns it and a note."""
    fingerprint = references_fingerprint(references)
    if cache.exists():
        try:
            return CiderDReward.load(cache, fingerprint), f"loaded {cache}"
        except ValueError as err:
            note = f"rebuilt {cache}: {str(err).removeprefix(f'{cache}: ')}"
    else:
        note = f"built {cache}"
    reward = CiderDReward.from_references(references)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".{cache.stem}.tmp{os.getpid()}.npz")
    reward.save(tmp)
    tmp.replace(cache)
    return reward, note


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
