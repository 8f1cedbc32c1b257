"""`python -m train` on the small demo run: learning, exact resume (also from `last.prev.pt`
when `last.pt` is broken), NaN stop, DDP, widths."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch

import train.trainer as trainer
from cluster.activation_prototypes import cluster_activations
from shared.config import load_config
from shared.manifest import read_manifest
from shared.models.caption_decoder import caption_loss
from shared.models.factory import build_decoder, decoder_from_checkpoint
from shared.prototypes import read_banks
from shared.stages import memory_banks_path, memory_banks_stage, train_dir
from tests.conftest import DEMO_CONFIG, REPO

TRAIN_SETS = ["train.max_epochs=2", "train.batch_size=25", "train.warmup_steps=10",
              "memory.warmup_iterations=20", "memory.refresh_stride=15",
              "memory.bank_iterations=20", "memory.bank_cap=2000", "memory.n_prototypes=16",
              "memory.knn=4"]


def log_of(config) -> list[dict]:
    return [json.loads(line) for line in
            (train_dir(config) / "log.jsonl").read_text().splitlines()]


def run_state(config) -> dict:
    """What must be equal after an exact resume: last.pt's weights (prototypes included), its
    banks file's rows and the dumped banks."""
    last = train_dir(config) / "last.pt"
    ckpt = torch.load(last, weights_only=True)
    banks = torch.load(last.with_name(ckpt["memory"]["banks_file"]), weights_only=True)
    return {"model": ckpt["model"], "banks": banks["layers"],
            "dump": read_banks(memory_banks_path(config))}


@pytest.fixture(scope="module")
def trained(demo_run):
    _, sets = demo_run
    config = load_config(DEMO_CONFIG, [*sets, *TRAIN_SETS])
    lines = trainer.train(config, force=True, progress=False).lines
    return config, sets, lines, log_of(config), run_state(config)


def test_loss_falls_and_memory_is_built(trained) -> None:
    config, _, lines, log, _ = trained
    assert len(log) == 2 and "best val CIDEr-D" in lines[-1]
    first_step_loss = 4.0  # ln(vocab) is ~4.3: the untrained start
    assert log[0]["train_loss"] < first_step_loss and log[1]["train_loss"] < 0.8 * log[0]["train_loss"]
    assert log[1]["val_cider"] > 0.1
    assert sum(r["prototype_refreshes"] for r in log) >= 2
    state = torch.load(train_dir(config) / "best.pt", weights_only=True)["model"]
    assert state["layers.0.self_attn.memory_keys"].shape == (16, config.decoder.d_model)
    banks = read_banks(memory_banks_path(config))
    assert len(banks) == config.decoder.n_dec_layers and 0 < len(banks[0][0]) <= 2000
    assert (train_dir(config) / "curves.png").stat().st_size > 1000
    assert trainer.train(config, progress=False).lines[0].startswith("train: up to date")


def test_banks_live_beside_the_checkpoint_in_float16(trained) -> None:
    """Each resume point (`last.pt`, and `last.prev.pt` of the epoch before) has its own
    banks file, and no other banks file is kept."""
    config = trained[0]
    last = train_dir(config) / "last.pt"
    ckpt = torch.load(last, weights_only=True)
    entry = ckpt["memory"]
    assert set(entry) == {"banks_file", "token", "generator"}   # no bank rows in last.pt
    prev = torch.load(last.with_name("last.prev.pt"), weights_only=True)
    assert prev["epoch"] == ckpt["epoch"] - 1 and prev["step"] < ckpt["step"]
    assert sorted(p.name for p in last.parent.glob("last.banks.*.pt")) == \
        sorted([entry["banks_file"], prev["memory"]["banks_file"]])
    assert not list(last.parent.glob("*.tmp"))
    banks = torch.load(last.with_name(entry["banks_file"]), weights_only=True)
    assert banks["token"] == entry["token"] and len(banks["layers"]) == config.decoder.n_dec_layers
    for layer in banks["layers"]:
        assert layer["keys"].dtype == layer["values"].dtype == torch.float16
        assert layer["keys"].shape[0] == int(layer["sizes"].sum()) > 0
    best = torch.load(train_dir(config) / "best.pt", weights_only=True)
    assert set(best) == {"model", "epoch", "meta", "val_loss", "val_cider"}


def test_resume_continues_exactly(trained, monkeypatch) -> None:
    """Interrupted after epoch 1 and resumed: the same losses, weights, prototypes and banks
    as the uninterrupted run. Banks are float16 in both runs (the trainer stores every row in
    float16 from the start), so the resumed run reads back exactly what the other one held."""
    config, sets, _, uninterrupted, uninterrupted_state = trained

    def interrupt(*_):
        raise KeyboardInterrupt("simulated interruption after epoch 1")

    monkeypatch.setattr(trainer, "plot_curves", interrupt)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(config, force=True, progress=False)
    monkeypatch.undo()
    lines = trainer.train(config, progress=False).lines
    assert lines[0] == "train: resuming after epoch 1 (step 48)"
    assert_as_uninterrupted(config, uninterrupted, uninterrupted_state)
    other = load_config(DEMO_CONFIG, [*sets, *TRAIN_SETS, "train.lr=1e-3"])
    with pytest.raises(RuntimeError, match=r"--resume: .*last\.pt is missing or was written "
                                           r"with another config \(config changed \(train\.lr"):
        trainer.train(other, progress=False, resume=True)


def assert_as_uninterrupted(config, uninterrupted: list[dict], uninterrupted_state: dict
                            ) -> None:
    """The resumed run logged, holds and dumped exactly what the uninterrupted one did."""
    resumed = log_of(config)
    assert len(resumed) == len(uninterrupted)
    for key in ("train_loss", "val_loss", "val_cider", "prototype_refreshes", "step"):
        assert resumed[1][key] == uninterrupted[1][key], key
    state = run_state(config)
    assert state["model"].keys() == uninterrupted_state["model"].keys()
    assert state["model"]["layers.0.self_attn.memory_keys"].shape[0] == 16
    for name, tensor in state["model"].items():
        assert torch.equal(tensor, uninterrupted_state["model"][name]), name
    for layer, other in zip(state["banks"], uninterrupted_state["banks"]):
        for key in ("keys", "values", "sizes", "generator"):
            assert torch.equal(layer[key], other[key]), key
    for (keys, values), (other_keys, other_values) in zip(state["dump"],
                                                          uninterrupted_state["dump"]):
        assert (keys == other_keys).all() and (values == other_values).all()


def test_broken_last_pt_resumes_from_the_previous_epoch(trained, monkeypatch, capsys) -> None:
    """Killed after epoch 2's `last.pt`, which then turns out truncated: the run warns in one
    line and resumes from `last.prev.pt` (after epoch 1) with its own banks file, re-runs
    epoch 2 (logged once) and ends exactly as the uninterrupted run."""
    config, _, _, uninterrupted, uninterrupted_state = trained
    plots = {"n": 0}

    def interrupt_in_epoch_two(*_):
        plots["n"] += 1
        if plots["n"] == 2:
            raise KeyboardInterrupt("simulated interruption after epoch 2's checkpoint")

    monkeypatch.setattr(trainer, "plot_curves", interrupt_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(config, force=True, progress=False)
    monkeypatch.undo()
    last = train_dir(config) / "last.pt"
    prev = last.with_name("last.prev.pt")
    points = [torch.load(path, weights_only=True) for path in (last, prev)]
    assert [ckpt["epoch"] for ckpt in points] == [1, 0]
    data = last.read_bytes()
    last.write_bytes(data[:len(data) // 2])
    capsys.readouterr()
    lines = trainer.train(config, progress=False).lines
    shown = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning")]
    assert shown == [f"warning: {last} is unusable (not a readable resume point: truncated, or "
                     f"not a torch checkpoint ({len(data) // 2:,} bytes)); resuming from "
                     f"last.prev.pt (one epoch earlier)"]
    assert lines[0] == "train: resuming after epoch 1 (step 48)"
    assert log_of(config)[1]["warnings"] == shown
    assert_as_uninterrupted(config, uninterrupted, uninterrupted_state)
    # the point it resumed from stays the previous one; the truncated one's banks are gone
    assert torch.load(prev, weights_only=True)["epoch"] == 0
    kept = {torch.load(path, weights_only=True)["memory"]["banks_file"] for path in (last, prev)}
    assert {path.name for path in last.parent.glob("last.banks.*.pt")} == kept
    assert points[0]["memory"]["banks_file"] not in kept


def test_non_finite_loss_stops_and_keeps_last_good(trained, monkeypatch) -> None:
    config = trained[0]
    calls = {"n": 0}

    def nan_in_epoch_two(logits, targets, pad_id=0):
        calls["n"] += 1
        loss = caption_loss(logits, targets, pad_id)
        return loss * float("nan") if calls["n"] > 60 else loss  # epoch 1 has 48 steps

    monkeypatch.setattr(trainer, "caption_loss", nan_in_epoch_two)
    with pytest.raises(trainer.NonFiniteLoss, match=r"loss is nan at epoch 2.*keeps the last"):
        trainer.train(config, force=True, progress=False)
    last = torch.load(train_dir(config) / "last.pt", weights_only=True)
    assert last["epoch"] == 0
    monkeypatch.undo()
    trainer.train(config, force=True, progress=False)  # leave a complete run for other tests


@pytest.mark.parametrize("width", [512, 1024])
def test_any_cache_width_trains(trained, width: int) -> None:
    config = trained[0]
    torch.manual_seed(0)
    decoder = build_decoder(config, width, 30)
    optimizer = torch.optim.Adam(decoder.parameters(), lr=1e-3)
    visual = torch.randn(8, 16, width)
    tokens = torch.randint(1, 30, (8, 10))
    losses = []
    for _ in range(15):
        loss = caption_loss(decoder(visual, tokens[:, :-1]), tokens[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert losses[-1] < 0.7 * losses[0]


def test_best_checkpoint_describes_its_decoder(trained) -> None:
    """`best.pt` carries every size of its decoder: the factory rebuilds it without a config
    (the same outputs as the config-built one); an older checkpoint recording only the
    widths takes the rest from the config, and without one says what is missing."""
    config = trained[0]
    path = train_dir(config) / "best.pt"
    ckpt = torch.load(path, weights_only=True)
    rebuilt = decoder_from_checkpoint(ckpt, path).eval()
    meta = ckpt["meta"]
    assert dataclasses.asdict(rebuilt.dims) == {k: v for k, v in meta.items()
                                                if k != "visual_input"}
    assert meta["visual_input"] == config.decoder.visual_input
    assert rebuilt.dims.self_memory and rebuilt.dims.max_len == \
        config.data.max_caption_words + 2
    reference = build_decoder(config, meta["d_visual"], meta["vocab_size"])
    reference.load_state_dict(ckpt["model"])
    visual = torch.randn(2, 16, meta["d_visual"])
    tokens = torch.randint(4, meta["vocab_size"], (2, 6))
    with torch.no_grad():
        assert torch.equal(rebuilt(visual, tokens), reference.eval()(visual, tokens))
    older = {**ckpt, "meta": {k: meta[k] for k in ("d_visual", "vocab_size", "visual_input")}}
    assert decoder_from_checkpoint(older, path, config).dims == rebuilt.dims
    with pytest.raises(RuntimeError, match="does not record its decoder's sizes"):
        decoder_from_checkpoint(older, path)


def test_ddp_two_cpu_processes(trained) -> None:
    sets = trained[1]
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
            "--master_port", "29517", "-m", "train", "--config", str(DEMO_CONFIG), "--force",
            "--xe-only"]
    for value in [*sets, *TRAIN_SETS, "train.max_epochs=1"]:
        args += ["--set", value]
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = log_of(load_config(DEMO_CONFIG, [*sets, *TRAIN_SETS, "train.max_epochs=1"]))
    assert len(log) == 1 and 20 <= log[0]["step"] <= 24  # each rank streams ~half of 48
    assert "best val CIDEr-D" in proc.stdout


def test_activation_prototypes_follow_the_training_run(trained) -> None:
    """The bank dump carries the training run's identity: retraining with another `train.lr`
    makes `cluster activations` re-run (it used to stay "up to date" on stale banks)."""
    sets = trained[1]
    one_epoch = [*sets, *TRAIN_SETS, "train.max_epochs=1"]
    config = load_config(DEMO_CONFIG, one_epoch)
    trainer.train(config, progress=False)
    assert not cluster_activations(config, progress=False).lines[0].endswith("up to date")
    assert cluster_activations(config, progress=False).lines[0].startswith(
        "cluster activations: up to date")
    other = load_config(DEMO_CONFIG, [*one_epoch, "train.lr=1e-3"])
    trainer.train(other, progress=False)
    lines = cluster_activations(other, progress=False).lines
    assert lines[0] == f"cluster activations: input changed ({memory_banks_stage(other).name})"
    assert read_manifest(memory_banks_path(other))["config"]["train.lr"] == 1e-3
    assert cluster_activations(other, progress=False).lines[0].startswith(
        "cluster activations: up to date")
