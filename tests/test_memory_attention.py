"""Prototypical memory attention (PMA-Net), memory banks, cross memory, decoder integration."""

from __future__ import annotations

import pytest
import torch

from shared.models.caption_decoder import CaptionDecoder, DecoderDims, caption_loss
from shared.models.memory_attention import (CrossMemory, MemoryBank, MultiHeadAttention,
                                            PrototypeMemoryAttention)

D, H = 32, 4


def causal_mask(tokens: torch.Tensor, pad_id: int = 0) -> torch.Tensor:
    length = tokens.shape[1]
    allowed = torch.ones(length, length, dtype=torch.bool).tril()[None, None]
    allowed = allowed & (tokens != pad_id)[:, None, None, :]
    return allowed | torch.eye(length, dtype=torch.bool)


def pair(seed: int = 0) -> tuple[MultiHeadAttention, PrototypeMemoryAttention]:
    torch.manual_seed(seed)
    mha = MultiHeadAttention(D, H).eval()
    pma = PrototypeMemoryAttention(D, H).eval()
    missing, unexpected = pma.load_state_dict(mha.state_dict(), strict=False)
    assert not unexpected and set(missing) == {"seg_input", "seg_memory", "memory_keys",
                                              "memory_values"}
    return mha, pma


def inputs(batch: int = 2, length: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    tokens = torch.randint(1, 9, (batch, length))
    tokens[1, -2:] = 0                                     # padding in the second caption
    return torch.randn(batch, length, D), causal_mask(tokens)


def test_memory_off_is_standard_masked_self_attention() -> None:
    mha, pma = pair()
    x, allowed = inputs()
    assert pma.memory_size == 0
    assert torch.equal(pma(x, x, x, allowed), mha(x, x, x, allowed))
    pma.set_prototypes(torch.randn(5, D), torch.randn(5, D))
    assert not torch.allclose(pma(x, x, x, allowed), mha(x, x, x, allowed), atol=1e-4)
    pma.set_prototypes(torch.zeros(0, D), torch.zeros(0, D))   # back off again
    assert torch.equal(pma(x, x, x, allowed), mha(x, x, x, allowed))


def test_first_query_attends_memory() -> None:
    _, pma = pair()
    x, allowed = inputs()
    with torch.no_grad():
        q0 = pma.q_proj(x[0, 0])
        key = 1e3 * q0 / q0.norm() - pma.seg_memory         # M_K + seg_memory aligned with q0
        value = torch.full((D,), 5.0)
        pma.set_prototypes(torch.stack([key, -key]), torch.stack([value, -value]))
        out = pma(x, x, x, allowed)
        target = pma.out_proj(value)
    assert torch.allclose(out[0, 0], target, atol=1e-3)


def test_causal_mask_holds_with_memory() -> None:
    _, pma = pair()
    x, allowed = inputs()
    pma.set_prototypes(torch.randn(7, D), torch.randn(7, D))
    changed = x.clone()
    changed[:, 3] = torch.randn(2, D)
    before, after = pma(x, x, x, allowed), pma(changed, changed, changed, allowed)
    assert torch.equal(before[:, :3], after[:, :3])
    assert not torch.allclose(before[:, 3:], after[:, 3:])


def test_recording_keys_values() -> None:
    _, pma = pair()
    x, _ = inputs()
    tokens = torch.tensor([[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 0, 0]])
    pma(x, x, x, causal_mask(tokens), key_valid=tokens != 0)
    assert pma.last_keys_values is None                    # off by default
    pma.record = True
    pma.set_prototypes(torch.randn(3, D), torch.randn(3, D))
    pma(x, x, x, causal_mask(tokens), key_valid=tokens != 0)
    keys, values, valid = pma.last_keys_values
    assert keys.shape == values.shape == (2, 6, D) and not keys.requires_grad
    assert torch.allclose(keys, pma.k_proj(x)) and torch.allclose(values, pma.v_proj(x))
    assert torch.equal(valid, tokens != 0)


def test_state_dict_round_trip_resizes_prototypes() -> None:
    _, pma = pair()
    pma.set_prototypes(torch.randn(9, D), torch.randn(9, D))
    fresh = PrototypeMemoryAttention(D, H).eval()
    fresh.set_prototypes(torch.randn(2, D), torch.randn(2, D))
    fresh.load_state_dict(pma.state_dict())
    assert fresh.memory_size == 9
    x, allowed = inputs()
    assert torch.equal(fresh(x, x, x, allowed), pma(x, x, x, allowed))
    cross, other = CrossMemory(12, D), CrossMemory(12, D)
    cross.set_prototypes(torch.randn(4, 12))
    other.load_state_dict(cross.state_dict())
    assert torch.equal(other.prototypes, cross.prototypes)


def test_memory_bank_window_cap_and_padding() -> None:
    bank = MemoryBank(capacity=10, window=2, seed=0)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    for it in range(3):                                    # iteration `it` is filled with `it`
        keys = torch.full((2, 3, 4), float(it))
        keys[~mask] = -1.0                                 # padding rows must never be kept
        bank.add(keys, keys + 100, mask)
    assert len(bank) == 6 and bank.iterations == 2
    keys, values = bank.snapshot()
    assert sorted(keys[:, 0].tolist()) == [1.0] * 3 + [2.0] * 3   # iteration 0 dropped
    assert torch.equal(values, keys + 100)

    bank = MemoryBank(capacity=5, window=4, seed=3)
    rows = torch.arange(40, dtype=torch.float32)[:, None].expand(40, 4)
    for chunk in rows.split(10):
        bank.add(chunk, -chunk)
    keys, values = bank.snapshot()
    assert keys.shape == (5, 4) and torch.equal(values, -keys)     # pairs kept together
    assert len(set(keys[:, 0].tolist())) == 5 and set(keys[:, 0].tolist()) <= set(range(40))
    again = MemoryBank(capacity=5, window=4, seed=3)
    for chunk in rows.split(10):
        again.add(chunk, -chunk)
    assert torch.equal(again.snapshot()[0], keys)                  # seeded
    bank.clear()
    assert len(bank) == 0 and bank.snapshot()[0].numel() == 0


def dims(**extra: bool) -> DecoderDims:
    return DecoderDims(d_visual=12, vocab_size=20, d_model=D, n_heads=H, n_dec_layers=2,
                       d_ff=64, dropout=0.0, max_len=16, **extra)


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(2)
    tokens = torch.randint(3, 20, (3, 8))
    tokens[:, 0] = 1
    tokens[2, 5:] = 0
    return torch.randn(3, 5, 12), tokens


def test_plain_decoder_unchanged_and_state_dicts_compatible() -> None:
    old = DecoderDims(d_visual=12, vocab_size=20, d_model=D, n_heads=H, n_enc_layers=1,
                      n_dec_layers=2, d_ff=64, dropout=0.1, max_len=16)
    torch.manual_seed(0)
    plain = CaptionDecoder(old).eval()
    assert not any("memory" in key or "seg_" in key for key in plain.state_dict())
    assert plain.cross_memory is None
    visual, tokens = batch()
    reference = CaptionDecoder(dims()).eval()
    memory = CaptionDecoder(dims(self_memory=True, cross_memory=True)).eval()
    missing, unexpected = memory.load_state_dict(reference.state_dict(), strict=False)
    assert not unexpected and all("memory" in key or "seg_" in key for key in missing)
    assert torch.equal(memory(visual, tokens), reference(visual, tokens))  # empty memories
    assert plain(visual, tokens).shape == (3, 8, 20)


def test_cross_memory_changes_output_only_when_installed() -> None:
    torch.manual_seed(0)
    reference = CaptionDecoder(dims()).eval()
    cross = CaptionDecoder(dims(cross_memory=True)).eval()
    cross.load_state_dict(reference.state_dict(), strict=False)
    visual, tokens = batch()
    valid = torch.ones(3, 5, dtype=torch.bool)
    valid[0, -1] = False
    assert torch.equal(cross(visual, tokens, valid), reference(visual, tokens, valid))
    cross.set_cross_prototypes(torch.randn(6, 12))
    encoded, allowed = cross.encode(visual, valid)
    assert encoded.shape == (3, 11, D) and allowed.shape == (3, 1, 1, 11)
    assert allowed[0, 0, 0, 5:].all() and not allowed[0, 0, 0, 4]
    assert not torch.allclose(cross(visual, tokens, valid), reference(visual, tokens, valid))
    assert cross.greedy(visual, bos_id=1, eos_id=2, max_len=5).shape[0] == 3
    with pytest.raises(RuntimeError):
        reference.set_cross_prototypes(torch.randn(2, 12))


def test_decoder_self_memory_api_round_trip() -> None:
    torch.manual_seed(0)
    model = CaptionDecoder(dims(self_memory=True)).eval()
    visual, tokens = batch()
    model.record_keys_values(True)
    before = model(visual, tokens)
    recorded = model.recorded_keys_values()
    assert len(recorded) == 2 and torch.equal(recorded[0][2], tokens != 0)
    banks = [MemoryBank(capacity=8, window=3, seed=i) for i in range(2)]
    for bank, (keys, values, valid) in zip(banks, recorded):
        bank.add(keys, values, valid)
    model.set_memory_prototypes([bank.snapshot() for bank in banks])
    assert [k.shape[0] for k, _ in model.memory_prototypes()] == [8, 8]
    after = model(visual, tokens)
    assert not torch.allclose(before, after)
    loaded = CaptionDecoder(dims(self_memory=True)).eval()
    loaded.load_state_dict(model.state_dict())
    assert torch.equal(loaded(visual, tokens), after)
    assert torch.equal(loaded.greedy(visual, 1, 2, 6), model.greedy(visual, 1, 2, 6))
    model.record_keys_values(False)
    with pytest.raises(RuntimeError):
        model.recorded_keys_values()


def test_training_steps_with_self_memory_reach_segment_embeddings() -> None:
    torch.manual_seed(0)
    model = CaptionDecoder(dims(self_memory=True, cross_memory=True)).train()
    model.set_memory_prototypes([(torch.randn(4, D), torch.randn(4, D)) for _ in range(2)])
    model.set_cross_prototypes(torch.randn(3, 12))
    model.record_keys_values(True)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    visual, tokens = batch()
    for _ in range(3):
        optimizer.zero_grad()
        loss = caption_loss(model(visual, tokens[:, :-1]), tokens[:, 1:])
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss)
    for layer in model.layers:
        for grad in (layer.self_attn.seg_input.grad, layer.self_attn.seg_memory.grad):
            assert grad is not None and grad.abs().sum() > 0
        assert not layer.self_attn.memory_keys.requires_grad
    assert model.cross_memory.segment.grad.abs().sum() > 0


def test_attention_weights_get_no_dropout_only_the_sublayer_outputs() -> None:
    """As M2: softmax(QK^T)V without dropout on the weights (train = eval output for the
    attention itself, with or without prototypes); the decoder layer drops its sublayer
    outputs before each residual sum, so its training forward stays stochastic."""
    mha, pma = pair()
    pma.set_prototypes(torch.randn(5, D), torch.randn(5, D))
    x, allowed = inputs()
    for attention in (mha, pma):
        expected = attention.eval()(x, x, x, allowed)
        attention.train()
        torch.manual_seed(3)
        first = attention(x, x, x, allowed)
        second = attention(x, x, x, allowed)
        assert torch.equal(first, second) and torch.allclose(first, expected, atol=1e-6)
    decoder = CaptionDecoder(DecoderDims(d_visual=D, vocab_size=9, d_model=D, n_heads=H,
                                         n_dec_layers=1, d_ff=2 * D, dropout=0.5)).train()
    visual, tokens = torch.randn(2, 3, D), torch.randint(1, 9, (2, 5))
    assert not torch.equal(decoder(visual, tokens), decoder(visual, tokens))
