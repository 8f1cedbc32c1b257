"""The SCST objective (see `train.scst` for the whole method): the CIDEr-D reward of the
training references (its document frequencies cached on disk), the baselines, the candidates'
log-probabilities and the self-critical loss. Pure functions, tested on their own
(tests/test_scst.py); the training step and loop that use them are `train.scst`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from shared.atomic_files import atomic_path
from shared.cider_reward import CiderDReward, references_fingerprint
from shared.karpathy import ImageRecord, split_records
from shared.models.decoding import mask_next_words
from shared.vocabulary import normalize_words

__all__ = ["LOSS_NORMALIZATIONS", "MEAN_BASELINES", "baseline_rewards", "load_reward",
           "scst_loss", "token_log_probs", "training_references"]


# -- reward -----------------------------------------------------------------------------------

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
    with atomic_path(cache) as tmp:
        reward.save(tmp)
    return reward, note


# -- baseline ---------------------------------------------------------------------------------

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


# -- loss -------------------------------------------------------------------------------------

def token_log_probs(logits: torch.Tensor, words: torch.Tensor, pad_id: int,
                    bos_id: int) -> torch.Tensor:
    """[N, T] log-probability of each word of `words` under next-word `logits` [N, T, V],
    renormalised over the words that can be generated (<pad>/<bos> excluded, as in sampling
    and beam search); 0 at <pad> positions (which can never be generated). Computed in float32
    whatever the dtype of `logits` (bf16/fp16 under autocast)."""
    # float32 log_softmax; clone: never edit the caller's
    logits = mask_next_words(logits.float().clone(), pad_id, bos_id)
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
