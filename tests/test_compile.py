"""`train.compile`: the decoder's training forward under torch.compile gives the eager losses
(to rounding) over a few optimizer steps, PMA memory and key/value recording included; where
torch.compile cannot run the forward stays eager with a warning. Dropout is off in the
comparison: compiled kernels draw their own random numbers (same distribution, other draws)."""

from __future__ import annotations

import copy

import pytest
import torch

import shared.compiled as compiled
from shared.compiled import compile_forward, compile_support
from shared.config import load_config
from shared.models.factory import build_decoder
from shared.training_loop import train_step
from tests.conftest import DEMO_CONFIG
from train.trainer import CrossEntropy

CPU = torch.device("cpu")
TINY = ["decoder.d_model=32", "decoder.n_heads=4", "decoder.n_dec_layers=1", "decoder.d_ff=64",
        "decoder.dropout=0", "memory.self=true", "memory.n_prototypes=8", "memory.knn=4",
        'train.precision="fp32"',
        "train.compile=true"]


def test_eager_when_off_or_unsupported(monkeypatch) -> None:
    module = torch.nn.Linear(2, 2)
    assert compile_forward(module, False, CPU) is module
    monkeypatch.setattr(compiled.shutil, "which", lambda name: None)
    said: list[str] = []
    assert compile_support(CPU) == "no C++ compiler (g++) for torch.compile's CPU kernels"
    assert compile_forward(module, True, CPU, said.append) is module
    assert said == ["warning: train.compile: no C++ compiler (g++) for torch.compile's CPU "
                    "kernels; the decoder runs eagerly"]


def test_compiled_losses_equal_eager_ones() -> None:
    why = compile_support(CPU)
    if why:
        print(f"skipped: {why}")
        pytest.skip(why)
    config = load_config(DEMO_CONFIG, TINY)
    assert config.train.compile
    torch.manual_seed(0)
    eager = build_decoder(config, 16, 50).train()
    prototypes = [(torch.randn(8, 32), torch.randn(8, 32)) for _ in range(1)]
    eager.set_memory_prototypes(prototypes)
    eager.record_keys_values(True)
    fused = copy.deepcopy(eager)
    generator = torch.Generator().manual_seed(1)
    batches = [{"features": torch.randn(4, 9, 16, generator=generator),
                "tokens": torch.cat([torch.ones(4, 1, dtype=torch.long),
                                     torch.randint(3, 50, (4, 7), generator=generator),
                                     torch.full((4, 1), 2, dtype=torch.long)], 1)}
               for _ in range(3)]
    losses = {}
    for name, decoder in (("eager", eager), ("compiled", fused)):
        forward = compile_forward(decoder, config.train.compile and name == "compiled", CPU)
        assert (forward is decoder) == (name == "eager")
        objective = CrossEntropy(config, decoder, forward, "features", CPU)
        optimizer = torch.optim.Adam(decoder.parameters(), lr=1e-3, betas=(0.9, 0.98))
        losses[name] = [train_step(objective, optimizer, batch)["loss"] for batch in batches]
    print(f"eager {losses['eager']}, compiled {losses['compiled']}")
    assert losses["compiled"] == pytest.approx(losses["eager"], rel=1e-4, abs=1e-5)
    for (name, a), b in zip(eager.state_dict().items(), fused.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4, msg=name)
    for (ka, va, ma), (kb, vb, mb) in zip(eager.recorded_keys_values(),
                                          fused.recorded_keys_values()):
        torch.testing.assert_close(kb, ka, rtol=1e-3, atol=1e-4)
        assert torch.equal(ma, mb)
