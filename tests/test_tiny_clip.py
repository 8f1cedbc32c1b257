"""The demo's tiny CLIP: trains on CPU, saves weights that `create_clip` loads, retrieves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from shared.clip_model import create_clip
from shared.config import Config, load_config
from shared.datasets.__main__ import app
from shared.datasets.demo_stage import demo_overrides, prepare_demo_data
from shared.datasets.demo_writer import DemoPaths
from shared.datasets.tiny_clip import (
    chance_recall,
    evaluate_retrieval,
    metrics_path,
    retrieval_recall,
    train_tiny_clip,
)
from shared.karpathy import load_karpathy, split_records

ROOT = Path(__file__).resolve().parents[1]
N_TRAIN = 100


def tiny_config(root: Path, *extra: str) -> Config:
    """configs/demo.toml with a small dataset and the CLIP weights under `root`."""
    return load_config(ROOT / "configs" / "demo.toml", [
        *demo_overrides(root / "demo"), f"demo.n_train={N_TRAIN}", "demo.n_val=4",
        "demo.n_test=40", "demo.clip_epochs=24", "demo.clip_batch_size=10", "demo.clip_lr=2e-3",
        "clip.model=\"demo-tiny-clip\"", f"clip.pretrained={json.dumps(str(root / 'tiny.pt'))}",
        *extra])


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, str]:
    config = tiny_config(tmp_path_factory.mktemp("tiny"))
    prepare_demo_data(config)
    result = train_tiny_clip(config, progress=False)
    ran, [line] = result.ran, result.lines
    assert ran
    return config, line


def test_checkpoint_loads_through_create_clip(trained: tuple[Config, str]) -> None:
    config, _ = trained
    bundle = create_clip(config.demo.clip_model, pretrained=config.clip.pretrained)
    assert bundle.grid_size == (8, 8)
    assert bundle.embed_dim == 128 and bundle.image_size == 64
    assert bundle.tokenizer(["a red ball on the left"]).shape == (1, 32)
    saved = torch.load(config.clip.pretrained, weights_only=True)
    for name, value in bundle.model.state_dict().items():
        assert torch.equal(value, saved[name]), name


def test_recall_on_training_images_beats_chance(trained: tuple[Config, str]) -> None:
    config, _ = trained
    paths = DemoPaths(Path(config.demo.output_dir))
    train = split_records(load_karpathy(paths.karpathy_json, paths.image_root), "train")
    bundle = create_clip(config.demo.clip_model, pretrained=config.clip.pretrained)
    metrics = evaluate_retrieval(bundle, train)
    # 240 steps on 100 images give ~36% / ~38% here (27-68% over other seeds); chance ~5%
    chance = metrics["chance"]["image_to_text"]["R@5"]
    assert metrics["image_to_text"]["R@5"] > max(3 * chance, chance + 0.08), metrics
    assert metrics["text_to_image"]["R@5"] > 3 * metrics["chance"]["text_to_image"]["R@5"]


def test_metrics_written_and_second_run_skips(trained: tuple[Config, str]) -> None:
    config, line = trained
    assert "recall" in line and "chance" in line
    metrics = json.loads(metrics_path(config.clip.pretrained).read_text())
    assert metrics["split"] == "test" and metrics["n_images"] == 40
    assert metrics["n_captions"] == 200 and metrics["train_images"] == N_TRAIN
    assert set(metrics["image_to_text"]) == {"R@1", "R@5", "R@10"}
    assert metrics["chance"]["image_to_text"]["R@1"] == pytest.approx(5 / 200)
    result = train_tiny_clip(config, progress=False)
    ran, [line] = result.ran, result.lines
    assert not ran and "up to date" in line


def test_recall_and_chance_arithmetic() -> None:
    emb = torch.eye(4)
    owner = torch.tensor([0, 0, 1, 2, 3])
    texts = emb[owner]
    got = retrieval_recall(emb, texts, owner, ks=(1, 2))
    assert got["image_to_text"]["R@1"] == 1.0 and got["text_to_image"]["R@1"] == 1.0
    chance = chance_recall(owner, 4, ks=(1, 5))
    assert chance["image_to_text"]["R@1"] == pytest.approx((2 / 5 + 3 * 1 / 5) / 4)
    assert chance["image_to_text"]["R@5"] == pytest.approx(1.0)
    assert chance["text_to_image"]["R@1"] == pytest.approx(1 / 4)


def test_prepare_cli_runs_then_skips(tmp_path: Path) -> None:
    """A renamed demo run (`data.name`) is still prepared as the demo (`data.kind`)."""
    args = ["prepare", "--config", str(ROOT / "configs" / "demo.toml")]
    for override in [*demo_overrides(tmp_path / "demo"), 'data.name="shapes_small"',
                     "demo.n_train=16", "demo.n_val=2",
                     "demo.n_test=4", "demo.clip_epochs=1", "demo.clip_batch_size=8",
                     "clip.model=\"demo-tiny-clip\"",
                     f"clip.pretrained={json.dumps(str(tmp_path / 'tiny.pt'))}"]:
        args += ["--set", override]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "demo data: wrote 22 images" in first.output and "tiny CLIP: trained" in first.output
    second = CliRunner().invoke(app, args)
    assert second.exit_code == 0, second.output
    assert second.output.count("up to date") == 2


def test_clip_pretrained_must_be_a_path(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, [
        "prepare", "--config", str(ROOT / "configs" / "demo.toml"),
        *sum((["--set", o] for o in demo_overrides(tmp_path / "demo")), []),
        "--set", "demo.n_train=4", "--set", "demo.n_val=1", "--set", "demo.n_test=1",
        "--set", "clip.pretrained=openai"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith("error: config key 'clip.pretrained'")


def prepare_karpathy(config: Config, *extra: str) -> list[str]:
    """`prepare` with data.kind = "karpathy" on the files of `config`: (exit code, lines)."""
    args = ["prepare", "--config", str(ROOT / "configs" / "demo.toml"), "--set",
            'data.kind="karpathy"', "--set", 'data.name="shapes_copy"',
            *sum((["--set", o] for o in demo_overrides(config.demo.output_dir)), [])]
    for override in extra:
        args += ["--set", override]
    result = CliRunner().invoke(app, args)
    return [str(result.exit_code), *result.output.strip().splitlines()]


def test_prepare_checks_a_karpathy_dataset(trained: tuple[Config, str], tmp_path: Path) -> None:
    config, _ = trained
    code, *lines = prepare_karpathy(config)
    assert code == "0", lines
    assert lines == [f"shapes_copy: {DemoPaths(Path(config.demo.output_dir)).karpathy_json}: "
                     f"{N_TRAIN + 44} images (train {N_TRAIN}, val 4, test 40), all present"]
    missing = json.dumps(str(tmp_path / "none.json"))
    code, *lines = prepare_karpathy(config, f"data.karpathy_json={missing}")
    assert code == "2" and len(lines) == 1
    assert lines[0].startswith("error: config key 'data.karpathy_json' names no existing file")
