"""Beam search for `CaptionDecoder`: every image x beam of a batch in one forward per step.

Decoding is incremental (`CaptionDecoder.step`: cached keys/values, visual keys/values
projected once per image), with rows reordered as beams move. Semantics (as in M2 / FSGR): a beam holds `beam_size` hypotheses scored by the sum
of their word log-probabilities (no length normalisation). At each step every live hypothesis
proposes all next words; a finished hypothesis (it emitted <eos>) only continues with <eos> at
log-probability 0, so it keeps its score and its place in the ranking. <pad> and <bos> are
never generated. The best `beam_size`
candidates survive. Decoding stops when every hypothesis of every image is finished or after
`max_len` words. The decoder's memory prototypes are used exactly as in training (they are
buffers of the model).

Precision: both searches run with autocast switched off (`autocast_off`), so under
`train.precision` bf16/fp16 they give exactly the captions and scores of fp32 mode (the
decoder's float32 weights, float32 logits, float64 log-probabilities and scores). With only the
head in float32, the bf16 sublayer outputs still moved scores by ~1e-3 and flipped the odd
near-tie caption of a trained decoder (tests/test_precision.py).

`beam_search_one` is the plain per-image version of the same algorithm, with Python lists of
hypotheses; it is the reference the batched version is tested (and benchmarked) against.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from shared.models.caption_decoder import CaptionDecoder
from shared.models.full_precision import autocast_off, full_precision


@dataclass
class BeamResult:
    """Hypotheses of every image, best first."""

    tokens: torch.Tensor      # [B, beam, <= max_len] word ids without <bos>, <eos>-padded
    log_probs: torch.Tensor   # [B, beam] summed word log-probabilities

    @property
    def best(self) -> torch.Tensor:
        """[B, <= max_len]: the top hypothesis of every image."""
        return self.tokens[:, 0]


def next_word_log_probs(logits: torch.Tensor, pad_id: int, bos_id: int) -> torch.Tensor:
    """float64 log-probabilities of the next word (outside autocast, whatever precision the
    decoder runs in); <pad> and <bos> can never be generated."""
    logits = logits.double()
    logits[..., [pad_id, bos_id]] = -torch.inf
    return full_precision(F.log_softmax, logits, dim=-1)


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
        log_probs = next_word_log_probs(logits, decoder.pad_id, bos_id).view(batch, beam_size, -1)
        vocab = log_probs.shape[-1]
        eos_only = torch.full_like(log_probs[0, 0], -torch.inf)
        eos_only[eos_id] = 0.0
        log_probs = torch.where(finished[..., None], eos_only, log_probs)
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
def beam_search_one(decoder: CaptionDecoder, visual: torch.Tensor, bos_id: int, eos_id: int,
                    beam_size: int = 5, max_len: int = 20) -> tuple[list[list[int]], list[float]]:
    """The same search for one image (visual [1, Lv, d]) with plain lists: reference version.

    Returns the hypotheses (word ids without <bos>, each ending at its first <eos>) and their
    scores, best first.
    """
    with autocast_off(visual.device):
        return _beam_search_one(decoder, visual, bos_id, eos_id, beam_size, max_len)


def _beam_search_one(decoder: CaptionDecoder, visual: torch.Tensor, bos_id: int, eos_id: int,
                     beam_size: int, max_len: int) -> tuple[list[list[int]], list[float]]:
    encoded, allowed = decoder.encode(visual)
    hypotheses: list[tuple[list[int], float, bool]] = [([bos_id], 0.0, False)]
    for _ in range(max_len):
        live = [h for h in hypotheses if not h[2]]
        candidates = [h for h in hypotheses if h[2]]
        if live:
            tokens = torch.tensor([h[0] for h in live], device=visual.device)
            logits = decoder.decode(tokens, encoded.expand(len(live), -1, -1), allowed)[:, -1]
            log_probs = next_word_log_probs(logits, decoder.pad_id, bos_id)
            top = log_probs.topk(min(beam_size, log_probs.shape[-1]), dim=-1)
            for (words, score, _), values, ids in zip(live, top.values.tolist(),
                                                      top.indices.tolist()):
                candidates.extend((words + [w], score + v, w == eos_id)
                                  for v, w in zip(values, ids))
        hypotheses = sorted(candidates, key=lambda h: -h[1])[:beam_size]
        if all(h[2] for h in hypotheses):
            break
    return [h[0][1:] for h in hypotheses], [h[1] for h in hypotheses]
