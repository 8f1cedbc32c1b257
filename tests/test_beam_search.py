"""Batched beam search equals the plain per-image beam search; beam 1 equals greedy."""

from __future__ import annotations

import pytest
import torch

from shared.models.caption_decoder import CaptionDecoder, DecoderDims
from shared.models.decoding import beam_search, next_word_log_probs
from tests.reference_decoding import beam_search_one

BOS, EOS = 1, 2


def make_decoder(self_memory: bool = False, cross_memory: bool = False,
                 eos_scale: float = 2.5) -> CaptionDecoder:
    """A random float64 decoder whose <eos> logit is scaled so captions end at varied steps."""
    torch.manual_seed(0)
    decoder = CaptionDecoder(DecoderDims(d_visual=24, vocab_size=40, d_model=32, n_heads=4,
                                         n_enc_layers=1, n_dec_layers=2, d_ff=64,
                                         self_memory=self_memory, cross_memory=cross_memory))
    decoder = decoder.double().eval()
    with torch.no_grad():
        decoder.head.weight[EOS] *= eos_scale
    if self_memory:
        decoder.set_memory_prototypes([(0.3 * torch.randn(8, 32).double(), 0.3 * torch.randn(8, 32).double())
                                       for _ in range(2)])
    if cross_memory:
        decoder.set_cross_prototypes(torch.randn(6, 24).double())
    return decoder


def strip(ids: list[int]) -> list[int]:
    """Word ids up to and including the first <eos>."""
    return ids[:ids.index(EOS) + 1] if EOS in ids else ids


@pytest.mark.parametrize("memory", [(False, False, 2.5), (True, False, 0.9), (False, True, 2.5)],
                         ids=["plain", "self-memory", "cross-memory"])
def test_batched_equals_per_image(memory) -> None:
    decoder = make_decoder(*memory)
    visual = torch.randn(9, 7, 24, generator=torch.Generator().manual_seed(1)).double()
    result = beam_search(decoder, visual, BOS, EOS, beam_size=4, max_len=12)
    assert result.tokens.shape[:2] == (9, 4)
    lengths = set()
    for i in range(len(visual)):
        hypotheses, scores = beam_search_one(decoder, visual[i:i + 1], BOS, EOS, 4, 12)
        for b in range(4):
            assert strip(result.tokens[i, b].tolist()) == hypotheses[b]
            assert result.log_probs[i, b].item() == pytest.approx(scores[b], abs=1e-9)
        lengths.add(len(hypotheses[0]))
        assert scores == sorted(scores, reverse=True)
    assert len(lengths) >= 2, "the test should cover captions of several lengths"


def test_finished_hypotheses_keep_score_and_pad_with_eos() -> None:
    decoder = make_decoder()
    visual = torch.randn(5, 7, 24, generator=torch.Generator().manual_seed(2)).double()
    result = beam_search(decoder, visual, BOS, EOS, beam_size=3, max_len=15)
    for row in result.tokens.reshape(-1, result.tokens.shape[-1]).tolist():
        assert decoder.pad_id not in row and BOS not in row
        if EOS in row:
            assert set(row[row.index(EOS):]) == {EOS}
    # scores are sums of log-probabilities: recompute them with teacher forcing
    encoded, allowed = decoder.encode(visual)
    for i in range(5):
        words = strip(result.best[i].tolist())
        tokens = torch.tensor([[BOS, *words]])
        logits = decoder.decode(tokens, encoded[i:i + 1], allowed)[0]
        log_probs = next_word_log_probs(logits, decoder.pad_id, BOS)
        total = sum(log_probs[t, w].item() for t, w in enumerate(words))
        assert result.log_probs[i, 0].item() == pytest.approx(total, abs=1e-9)


def test_beam_one_is_greedy() -> None:
    decoder = make_decoder(self_memory=True)
    visual = torch.randn(6, 7, 24, generator=torch.Generator().manual_seed(3)).double()
    beam = beam_search(decoder, visual, BOS, EOS, beam_size=1, max_len=10).best
    greedy = decoder.greedy(visual, BOS, EOS, max_len=10)
    assert [strip(r) for r in beam.tolist()] == [strip(r) for r in greedy.tolist()]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="beam_size"):
        beam_search(make_decoder(), torch.randn(1, 7, 24).double(), BOS, EOS, beam_size=0)
