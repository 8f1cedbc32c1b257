"""`train.self_memory.SelfMemory`: float16 banks, banks files beside checkpoints (consistent
whenever a save is cut short), and DDP: every rank's rows reach the prototypes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from shared.config import Config, load_config
from shared.models.caption_decoder import CaptionDecoder, DecoderDims
from shared.prototypes import faiss_gpus, flat_l2_index
from train.self_memory import drop_stale_banks
from shared.training_schedule import save_atomic
from train.self_memory import SelfMemory, banks_file

# not tests.conftest: the spawned DDP workers import this module, and stay light without it
DEMO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.toml"

D_MODEL, LAYERS, ROWS = 16, 2, 24


def small_config(*extra: str) -> Config:
    return load_config(DEMO_CONFIG, [
        f"decoder.d_model={D_MODEL}", "decoder.n_heads=2", f"decoder.n_dec_layers={LAYERS}",
        "decoder.d_ff=32", "memory.n_prototypes=4", "memory.knn=3", "memory.bank_cap=200",
        "memory.bank_iterations=10", "memory.kmeans_max_points=8", "cluster.n_iter=10",
        'cluster.device="cpu"', *extra])


class FakeRecording:
    """Stands in for the decoder's recorded keys/values: [1, ROWS, d] per layer, of one
    cluster per rank (keys near +/-20 on coordinate `rank`), the last 4 rows padding."""

    def __init__(self, rank: int, seed: int) -> None:
        self.rank, self.generator = rank, torch.Generator().manual_seed(seed)

    def __call__(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        out = []
        for _ in range(LAYERS):
            keys = torch.randn(1, ROWS, D_MODEL, generator=self.generator) * 0.1
            keys[..., self.rank] += 20.0
            values = torch.full((1, ROWS, D_MODEL), float(self.rank + 1)) + \
                0.01 * torch.randn(1, ROWS, D_MODEL, generator=self.generator)
            mask = torch.ones(1, ROWS, dtype=torch.bool)
            mask[0, -4:] = False
            out.append((keys, values, mask))
        return out


def memory_for(config: Config, rank: int = 0, seed: int = 0) -> SelfMemory:
    torch.manual_seed(0)
    d = config.decoder   # as train.trainer.build_decoder, without importing the trainer
    decoder = CaptionDecoder(DecoderDims(
        d_visual=8, vocab_size=20, d_model=d.d_model, n_heads=d.n_heads, n_enc_layers=0,
        n_dec_layers=d.n_dec_layers, d_ff=d.d_ff, dropout=0.0, max_len=12, self_memory=True))
    memory = SelfMemory(decoder, config)
    decoder.recorded_keys_values = FakeRecording(rank, seed)
    return memory


def banks_of(memory: SelfMemory) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [bank.snapshot() for bank in memory.banks]


def test_banks_hold_float16_rows_sampled_per_step() -> None:
    memory = memory_for(small_config())
    assert memory.rows_per_step == 20   # bank_cap / bank_iterations
    for _ in range(3):
        memory.collect()
    for keys, values in banks_of(memory):
        assert keys.dtype == values.dtype == torch.float16 and keys.shape == (60, D_MODEL)
        assert (keys[:, 0] > 19).all()   # only non-padding rows
    stats = memory.refresh()
    assert stats["prototypes"] == 4 and stats["fit_points"] == LAYERS * 8
    protos = memory.decoder.memory_prototypes()
    assert [k.shape for k, _ in protos] == [(4, D_MODEL)] * LAYERS


def test_kmeans_max_points_is_checked() -> None:
    with pytest.raises(ValueError, match="memory.kmeans_max_points=2 is fewer than "
                                         "memory.n_prototypes=4"):
        memory_for(small_config("memory.kmeans_max_points=2"))
    memory_for(small_config("memory.kmeans_max_points=0"))   # 0: every key


def test_faiss_gpu_choice_on_this_machine() -> None:
    if faiss_gpus(None):
        pytest.skip("FAISS has a GPU here")
    index = flat_l2_index(8, None, gpu_device=0)   # no FAISS GPU: the CPU index
    assert index.d == 8 and index.__class__.__name__ == "IndexFlatL2"
    with pytest.raises(RuntimeError, match="FAISS sees no GPU"):
        flat_l2_index(8, True, gpu_device=0)


def test_banks_file_round_trip_and_cut_short_saves(tmp_path: Path, monkeypatch) -> None:
    config = small_config()
    last = tmp_path / "last.pt"
    memory = memory_for(config)
    for _ in range(12):   # more than the window: old iterations dropped
        memory.collect()
    entry = memory.save_banks(last)
    save_atomic({"memory": entry}, last)
    drop_stale_banks(last)
    saved = banks_of(memory)
    generator = memory.generator.get_state()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["last.pt", banks_file(last, entry["token"]).name])

    # a later save killed between the banks file and last.pt: last.pt still names its own
    for _ in range(3):
        memory.collect()
    memory.save_banks(last)
    restored = memory_for(config, seed=5)
    restored.load_banks(last, torch.load(last, weights_only=True)["memory"])
    for (keys, values), (want_keys, want_values) in zip(banks_of(restored), saved):
        assert torch.equal(keys, want_keys) and torch.equal(values, want_values)
    assert torch.equal(restored.generator.get_state(), generator)
    assert [b.iterations for b in restored.banks] == [10] * LAYERS

    # and the next complete save removes both older banks files
    entry = memory.save_banks(last)
    save_atomic({"memory": entry}, last)
    drop_stale_banks(last)
    assert len(list(tmp_path.glob("last.banks.*.pt"))) == 1
    # a missing or foreign banks file is an error that says what to do
    banks_file(last, entry["token"]).unlink()
    with pytest.raises(RuntimeError, match=r"needs its memory banks .* missing; run with "
                                           r"--force"):
        restored.load_banks(last, entry)
    with pytest.raises(RuntimeError, match="does not belong to"):
        other = memory.save_banks(last)
        restored.load_banks(last, {**other, "token": "0" * 16})


def _ddp_worker(rank: int, world: int, rendezvous: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank,
                            world_size=world)
    try:
        config = small_config()
        memory = memory_for(config, rank=rank, seed=rank)
        for _ in range(6):
            memory.collect()
        memory.refresh_synced()   # what the training loop runs
        protos = [(k.clone(), v.clone()) for k, v in memory.decoder.memory_prototypes()]
        torch.save({"prototypes": protos, "bank_rows": [len(b) for b in memory.banks],
                    "rows_per_step": memory.rows_per_step,
                    "bank_keys": [b.snapshot()[0] for b in memory.banks]},
                   f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_ddp_prototypes_come_from_every_rank(tmp_path: Path) -> None:
    """2 gloo processes whose keys sit in different places: rank 0 gathers both ranks' rows,
    builds the prototypes, and both ranks install the same ones, near both ranks' keys."""
    out = tmp_path / "result"
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "rendezvous"), str(out)), nprocs=2,
             join=True)
    results = [torch.load(f"{out}.{rank}", weights_only=True) for rank in range(2)]
    assert results[0]["rows_per_step"] == 10   # bank_cap / bank_iterations / world
    assert results[0]["bank_rows"] == [6 * 2 * 10] * LAYERS and results[1]["bank_rows"] == \
        [0] * LAYERS   # rank 0 keeps the bank of both
    for keys in results[0]["bank_keys"]:
        from_rank = (keys[:, 1] > 10).long()   # rank 1's keys are at +20 on coordinate 1
        assert from_rank.sum() == 60 and (keys[from_rank == 0, 0] > 19).all()
    for (k0, v0), (k1, v1) in zip(results[0]["prototypes"], results[1]["prototypes"]):
        assert torch.equal(k0, k1) and torch.equal(v0, v1)
        owner = k0[:, 1] > 10
        assert 0 < int(owner.sum()) < 4   # prototypes of rank 1's keys and of rank 0's
        np.testing.assert_allclose(v0[owner].numpy(), 2.0, atol=0.05)   # values of rank 1
        np.testing.assert_allclose(v0[~owner].numpy(), 1.0, atol=0.05)


def test_each_refresh_is_logged_and_a_small_bank_gives_fewer_prototypes_said() -> None:
    """The rule of `cluster activations` (`shared.prototypes.prototype_count`): a bank with
    fewer keys than memory.n_prototypes gives one prototype per key, with a warning."""
    memory = memory_for(small_config("memory.n_prototypes=30", "memory.kmeans_max_points=0"))
    lines: list[str] = []
    memory.log = lines.append
    assert memory.warnings()[0].startswith(
        "warning: memory.self is on but the decoder has 0 prototypes without a step: no refresh "
        "ran (the first comes after memory.warmup_iterations=")
    memory.collect()
    assert not memory.due(1)   # the demo config's warm-up is longer
    assert "after 1 steps" in memory.warnings()[0] and "not PMA" in memory.warnings()[0]
    memory.refresh()   # 20 keys per layer < 30
    assert [k.shape[0] for k, _ in memory.decoder.memory_prototypes()] == [20] * LAYERS
    assert lines[0] == ("memory refresh after step 1: 20/20 prototypes per layer from 20/20 "
                        f"bank keys (knn 3/3) in {memory.refresh_log[0]['seconds']:.1f}s")
    assert lines[1:] == [f"warning: memory refresh: layer {i} bank: 20 keys, fewer than "
                         "memory.n_prototypes=30: 20 prototypes built" for i in range(LAYERS)]
    assert memory.refresh_log[0]["prototypes"] == memory.refresh_log[0]["bank_keys"] == [20, 20]
    assert memory.warnings() == ["warning: the decoder holds 20/20 prototypes per layer, fewer "
                                 "than memory.n_prototypes=30 (the banks held fewer keys at the "
                                 "last refresh)"]
    memory.collect()
    memory.due(2)
    memory.refresh()   # 40 keys: the full 30
    assert lines[-1].startswith("memory refresh after step 2: 30/30 prototypes per layer from "
                                "40/40 bank keys")
    assert memory.warnings() == [] and memory.installed() == [30, 30]
