"""Every way the caption decoder turns visual tokens into words, in one place.

* `greedy`: the most likely word at each step (validation, `CaptionDecoder.greedy`).
* `sample_captions`: words drawn from the model's distribution (SCST's sampled candidates).
* `beam_search`: batched beam search (evaluation, captioning).
* `beam_candidates`: the top beams of `beam_search` in the layout of `sample_captions` (SCST's
  beam candidates).

All of them decode incrementally (`CaptionDecoder.step`: cached keys/values, visual keys/values
projected once per image), image-major: rows i*n .. (i+1)*n-1 belong to image i. The decoder's
memory prototypes are used exactly as in training (they are buffers of the model).

One rule says which words can come next (`mask_next_words`), for every strategy and for the
log-probabilities SCST differentiates (`train.scst_objective.token_log_probs`): <pad> and <bos>
are never generated, and a finished row (it emitted <eos>) can only continue with <eos>, at
log-probability 0, so a finished beam keeps its score and its place in the ranking. Greedy
captions and beams are therefore <eos>-padded; SCST candidates (`sample_captions`,
`beam_candidates`) have <pad> after their first <eos> (`pad_after_first_eos`).

Beam search (as in M2 / FSGR): a beam holds `beam_size` hypotheses scored by the sum of their
word log-probabilities (no length normalisation). At each step every live hypothesis proposes
all next words (a finished one only <eos>, see above); the best `beam_size` candidates survive,
rows reordered as beams move. Decoding stops when every hypothesis of every image is finished
or after `max_len` words.

Precision: `greedy` and `beam_search` run with autocast switched off (`autocast_off`), so under
`train.precision` bf16/fp16 they give exactly the captions and scores of fp32 mode (the
decoder's float32 weights, float32 logits, float64 log-probabilities and beam scores). With only
the head in float32, the bf16 sublayer outputs still moved scores by ~1e-3 and flipped the odd
near-tie caption of a trained decoder (tests/test_precision.py). `sample_captions` runs in the
caller's precision (SCST's autocast) and casts the logits to float32 before the softmax and the
draw.

The plain per-image beam search with Python lists, the reference the batched one is tested and
benchmarked against, is `tests/reference_decoding.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch.nn import functional as F

from shared.models.full_precision import autocast_off, full_precision

if TYPE_CHECKING:
    from shared.models.caption_decoder import CaptionDecoder

__all__ = ["BeamResult", "beam_candidates", "beam_search", "candidate_mask", "greedy",
           "mask_next_words", "next_word_log_probs", "pad_after_first_eos", "sample_captions"]


# -- the rule: which words can come next ------------------------------------------------------

def mask_next_words(scores: torch.Tensor, pad_id: int, bos_id: int,
                    finished: torch.Tensor | None = None,
                    eos_id: int | None = None) -> torch.Tensor:
    """Next-word `scores` [..., V] (logits or log-probabilities) restricted to the words that
    can be generated: <pad> and <bos> never (-inf, written into `scores` in place); rows where
    `finished` [...] is True (they emitted <eos>) only <eos>, at 0 (so its log-probability is 0
    and the row keeps its score). Returns the masked scores."""
    scores[..., [pad_id, bos_id]] = -torch.inf
    if finished is None:
        return scores
    eos_only = scores.new_full(scores.shape[-1:], -torch.inf)
    eos_only[eos_id] = 0.0
    return torch.where(finished[..., None], eos_only, scores)


def next_word_log_probs(logits: torch.Tensor, pad_id: int, bos_id: int,
                        finished: torch.Tensor | None = None,
                        eos_id: int | None = None) -> torch.Tensor:
    """float64 log-probabilities of the next word (outside autocast, whatever precision the
    decoder runs in), under `mask_next_words`."""
    logits = mask_next_words(logits.double(), pad_id, bos_id, finished, eos_id)
    return full_precision(F.log_softmax, logits, dim=-1)


def candidate_mask(words: torch.Tensor, eos_id: int, pad_id: int = 0) -> torch.Tensor:
    """[N, T] True for the words of each candidate up to and including its first <eos>
    (every non-padding word when it has none)."""
    is_eos = (words == eos_id).long()
    before_first_eos = (is_eos.cumsum(dim=1) - is_eos) == 0
    return before_first_eos & (words != pad_id)


def pad_after_first_eos(words: torch.Tensor, eos_id: int, pad_id: int) -> torch.Tensor:
    """`words` [N, T] with everything after each row's first <eos> replaced by <pad>."""
    keep = candidate_mask(words, eos_id, pad_id)
    return torch.where(keep, words, torch.full_like(words, pad_id))


# -- one word at a time: greedy and sampling --------------------------------------------------

def _decode_rows(decoder: CaptionDecoder, visual: torch.Tensor, bos_id: int, eos_id: int,
                 max_len: int, pick: Callable[[torch.Tensor], torch.Tensor], repeat: int = 1,
                 dtype: torch.dtype | None = None) -> torch.Tensor:
    """`repeat` rows per image of `visual` [B, Lv, d], each extended by `pick(scores)` (word ids
    [N] from the masked next-word logits [N, V], cast to `dtype` first when given) until every
    row is finished or after `max_len` words. Returns word ids [B * repeat, <= max_len] without
    <bos>, <eos>-padded."""
    state = decoder.start_decoding(*decoder.encode(visual), repeat=repeat)
    rows = visual.shape[0] * repeat
    word = torch.full((rows,), bos_id, dtype=torch.long, device=visual.device)
    finished = torch.zeros(rows, dtype=torch.bool, device=visual.device)
    out = []
    for _ in range(max_len):
        logits = decoder.step(word, state)
        if dtype is not None:
            logits = logits.to(dtype)
        word = pick(mask_next_words(logits, decoder.pad_id, bos_id, finished, eos_id))
        out.append(word)
        finished |= word == eos_id
        if finished.all():
            break
    if not out:
        return torch.empty(rows, 0, dtype=torch.long, device=visual.device)
    return torch.stack(out, dim=1)


@torch.no_grad()
def greedy(decoder: CaptionDecoder, visual: torch.Tensor, bos_id: int, eos_id: int,
           max_len: int = 20) -> torch.Tensor:
    """Greedy decoding: word ids [B, <= max_len] (without <bos>), eos-padded. Runs with
    autocast off: under bf16/fp16 the same captions as in fp32 mode."""
    with autocast_off(visual.device):
        return _decode_rows(decoder, visual, bos_id, eos_id, max_len,
                            lambda scores: scores.argmax(-1))


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
    def draw(scores: torch.Tensor) -> torch.Tensor:  # a finished row draws <eos> (p = 1)
        return torch.multinomial(scores.softmax(dim=-1), 1, generator=generator)[:, 0]

    words = _decode_rows(decoder, visual, bos_id, eos_id, max_len, draw, repeat=n_samples,
                         dtype=torch.float32)
    return pad_after_first_eos(words, eos_id, decoder.pad_id)


# -- beam search ------------------------------------------------------------------------------

@dataclass
class BeamResult:
    """Hypotheses of every image, best first."""

    tokens: torch.Tensor      # [B, beam, <= max_len] word ids without <bos>, <eos>-padded
    log_probs: torch.Tensor   # [B, beam] summed word log-probabilities

    @property
    def best(self) -> torch.Tensor:
        """[B, <= max_len]: the top hypothesis of every image."""
        return self.tokens[:, 0]


@torch.no_grad()
def beam_search(decoder: CaptionDecoder, visual: torch.Tensor, bos_id: int, eos_id: int,
                beam_size: int = 5, max_len: int = 20,
                visual_valid: torch.Tensor | None = None) -> BeamResult:
    """Batched beam search over visual tokens [B, Lv, d_visual]."""
    if beam_size < 1 or max_len < 1:
        raise ValueError(f"beam_size ({beam_size}) and max_len ({max_len}) must be >= 1")
    with autocast_off(visual.device):
        return _beam_search(decoder, visual, bos_id, eos_id, beam_size, max_len, visual_valid)


def _beam_search(decoder: CaptionDecoder, visual: torch.Tensor, bos_id: int, eos_id: int,
                 beam_size: int, max_len: int, visual_valid: torch.Tensor | None) -> BeamResult:
    batch, device = visual.shape[0], visual.device
    state = decoder.start_decoding(*decoder.encode(visual, visual_valid), repeat=beam_size)
    tokens = torch.full((batch * beam_size, 1), bos_id, dtype=torch.long, device=device)
    scores = torch.full((batch, beam_size), -torch.inf, device=device, dtype=torch.float64)
    scores[:, 0] = 0.0  # at the start only one hypothesis per image is real
    finished = torch.zeros(batch, beam_size, dtype=torch.bool, device=device)
    for _ in range(max_len):
        logits = decoder.step(tokens[:, -1], state)
        log_probs = next_word_log_probs(logits, decoder.pad_id, bos_id, finished.reshape(-1),
                                        eos_id).view(batch, beam_size, -1)
        vocab = log_probs.shape[-1]
        candidates = (scores[..., None] + log_probs).view(batch, beam_size * vocab)
        scores, flat = candidates.topk(beam_size, dim=-1)
        parent, word = flat // vocab, flat % vocab
        rows = (parent + torch.arange(batch, device=device)[:, None] * beam_size).view(-1)
        tokens = torch.cat([tokens[rows], word.view(-1, 1)], dim=1)
        state.select(rows)
        finished = finished.gather(1, parent) | (word == eos_id)
        if finished.all():
            break
    return BeamResult(tokens[:, 1:].view(batch, beam_size, -1), scores)


@torch.no_grad()
def beam_candidates(decoder: CaptionDecoder, visual: torch.Tensor, bos_id: int, eos_id: int,
                    n_beams: int, max_len: int) -> torch.Tensor:
    """The `n_beams` hypotheses of a beam search of size `n_beams` per image, in the layout of
    `sample_captions` ([B * n_beams, <= max_len], image-major, <pad> after the first <eos>)."""
    result = beam_search(decoder, visual, bos_id, eos_id, beam_size=n_beams, max_len=max_len)
    words = result.tokens.reshape(-1, result.tokens.shape[-1])
    return pad_after_first_eos(words, eos_id, decoder.pad_id)
