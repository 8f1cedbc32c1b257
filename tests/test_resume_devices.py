"""Resuming a `last.pt` on a device other than the CPU (`shared.training_schedule`).

A checkpoint written on a GPU holds CUDA tensors, the random states included. Loaded with
`map_location=device`, the CPU random state would arrive on that device, where
`torch.set_rng_state` refuses it, and memory banks would sit there while the trainer adds new
keys on the CPU. Without a GPU here, the `meta` device stands in for CUDA (the model and its
optimizer live there, as they would on `cuda`), and the file's storages are tagged `cuda:0`
as if written on a GPU."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from shared.models.memory_attention import MemoryBank
from shared.training_schedule import restore_rng, restore_state, resume_state, save_atomic


def model_and_optimizer(device: torch.device, steps: int) -> tuple[nn.Module, torch.optim.Adam]:
    """A small model on `device` and its Adam, after `steps` training steps (on the CPU)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):  # optimizer state (moments, step) exists after a step
        loss = model(torch.randn(5, 4, device=device)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model, optimizer


def save_as_if_on_gpu(payload: dict, path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`save_atomic` with every storage recorded as living on `cuda:0`."""
    with monkeypatch.context() as patch:
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        save_atomic(payload, path)


def test_resume_onto_a_non_cpu_device(tmp_path, monkeypatch) -> None:
    model, optimizer = model_and_optimizer(torch.device("cpu"), steps=2)
    bank = MemoryBank(100, 4, seed=0, device="cpu")
    bank.add(torch.randn(6, 8), torch.randn(6, 8))
    torch.manual_seed(123)
    payload = {**resume_state("run", model, optimizer, torch.device("cpu")),
               "memory": {"banks": [bank.state()]}, "epoch": 0}
    expected_draw = torch.rand(4)  # what the interrupted run would have drawn next
    path = tmp_path / "last.pt"
    save_as_if_on_gpu(payload, path, monkeypatch)
    if not torch.cuda.is_available():  # the file really asks for a GPU
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=True)

    device = torch.device("meta")
    fresh, fresh_optimizer = model_and_optimizer(device, steps=0)
    torch.manual_seed(999)
    with warnings.catch_warnings():  # copying weights into meta tensors is a no-op: expected
        warnings.simplefilter("ignore", UserWarning)
        ckpt = restore_state(path, "run", fresh, fresh_optimizer, device)
    assert ckpt is not None and ckpt["epoch"] == 0
    assert torch.equal(torch.rand(4), expected_draw)  # the CPU random state is the file's
    assert {p.device.type for p in fresh.parameters()} == {"meta"}
    assert len(fresh_optimizer.state) == len(list(fresh.parameters()))
    for param, state in fresh_optimizer.state.items():
        assert state["exp_avg"].device == param.device == state["exp_avg_sq"].device
        assert state["step"].device.type == "cpu" and float(state["step"]) == 2.0
    # the loop's own entries arrive on the CPU: a restored bank takes new CPU keys
    restored = MemoryBank(100, 4, seed=5, device="cpu")
    restored.load_state(ckpt["memory"]["banks"][0])
    restored.add(torch.randn(3, 8), torch.randn(3, 8))
    keys, values = restored.snapshot()
    assert keys.shape == values.shape == (9, 8) and keys.device.type == "cpu"
    assert torch.equal(keys[:6], bank.snapshot()[0])
    assert restore_state(path, "another run", fresh, fresh_optimizer, device) is None


def test_cuda_random_state_goes_to_its_device_as_a_cpu_byte_tensor(monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(torch.cuda, "set_rng_state",
                        lambda state, device="cuda": calls.append((state, device)))
    cpu_state, cuda_state = torch.get_rng_state(), torch.arange(16, dtype=torch.uint8)
    restore_rng({"torch_rng": cpu_state, "cuda_rng": cuda_state.to(torch.int64)},
                torch.device("cuda", 1))
    ((state, device),) = calls
    assert device == torch.device("cuda", 1)
    assert state.device.type == "cpu" and state.dtype == torch.uint8
    assert torch.equal(state, cuda_state)
    calls.clear()
    restore_rng({"torch_rng": cpu_state, "cuda_rng": None}, torch.device("cuda", 0))
    restore_rng({"torch_rng": cpu_state, "cuda_rng": cuda_state}, torch.device("cpu"))
    assert calls == []
