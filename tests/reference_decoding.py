"""Reference decoding used only by tests and benchmarks: the plain per-image beam search.

`beam_search_one` is `shared.models.decoding.beam_search` for one image with Python lists of
hypotheses (same semantics, same next-word rule `next_word_log_probs`); the batched version is
tested (tests/test_beam_search.py) and benchmarked (bench/beam.py) against it.
"""

from __future__ import annotations

import torch

from shared.models.caption_decoder import CaptionDecoder
from shared.models.decoding import next_word_log_probs
from shared.models.full_precision import autocast_off


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
