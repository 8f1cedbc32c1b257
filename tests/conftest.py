"""Shared fixtures: a small real image dataset on disk, a tiny open_clip checkpoint, configs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from shared.clip_model import create_clip, save_clip_weights
from shared.config import Config, load_config
from tests.wheel_env import WheelEnv, start_wheel_env

REPO = Path(__file__).resolve().parent.parent
TINY_MODEL = "demo-tiny-clip"

torch.set_num_threads(min(2, os.cpu_count() or 1))

WHEEL_TEST_MODULE = "test_wheel_install.py"
WHEEL_ENV = pytest.StashKey[WheelEnv]()


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    """Start installing the wheel in the background when its test is selected."""
    if any(item.path.name == WHEEL_TEST_MODULE for item in items):
        root = Path(config._tmp_path_factory.mktemp("wheel_env"))  # type: ignore[attr-defined]
        config.stash[WHEEL_ENV] = start_wheel_env(root)


def pytest_unconfigure(config: pytest.Config) -> None:
    env = config.stash.get(WHEEL_ENV, None)
    if env is not None:
        env.close()


@pytest.fixture(scope="session")
def wheel_bin(request: pytest.FixtureRequest) -> Path:
    """`bin/` of a fresh virtualenv with the project's wheel installed (runtime deps + cpu)."""
    env = request.config.stash.get(WHEEL_ENV, None)
    if env is None:  # selected some other way (e.g. -k): start it now
        env = start_wheel_env(request.config._tmp_path_factory.mktemp("wheel_env"))
        request.config.stash[WHEEL_ENV] = env
    return env.wait(timeout=1200)


_WORDS = ["red", "blue", "green", "circle", "square", "star", "small", "large"]


def write_karpathy(path: Path, entries: list[dict]) -> None:
    path.write_text(json.dumps({"images": entries, "dataset": "test"}))


def karpathy_entry(i: int, split: str, filename: str, filepath: str = "") -> dict:
    rng = np.random.default_rng(i)
    sentences = []
    for _ in range(5):
        words = ["a", *rng.choice(_WORDS, size=3).tolist(), "on", "the", "left"]
        sentences.append({"tokens": words, "raw": " ".join(words).capitalize() + "."})
    return {"split": split, "filepath": filepath, "filename": filename, "imgid": i,
            "cocoid": 1000 + i, "sentences": sentences}


@pytest.fixture(scope="session")
def image_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 real JPEG/PNG files of varied sizes + a Karpathy json (train/restval/val/test)."""
    root = tmp_path_factory.mktemp("images_ds")
    (root / "images" / "a").mkdir(parents=True)
    rng = np.random.default_rng(0)
    entries = []
    splits = ["train"] * 24 + ["restval"] * 4 + ["val"] * 6 + ["test"] * 6
    for i, split in enumerate(splits):
        size = (int(rng.integers(40, 120)), int(rng.integers(40, 120)))
        pixels = rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
        name = f"img_{i:03d}." + ("png" if i % 3 == 0 else "jpg")
        Image.fromarray(pixels).save(root / "images" / "a" / name)
        entries.append(karpathy_entry(i, split, name, filepath="a"))
    write_karpathy(root / "dataset.json", entries)
    return root


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random weights of the repo's tiny CLIP config, saved as a local checkpoint file."""
    torch.manual_seed(0)
    bundle = create_clip(TINY_MODEL, "random")
    path = tmp_path_factory.mktemp("ckpt") / "tiny_clip.pt"
    save_clip_weights(bundle.model, path)
    return path


DEMO_CONFIG = REPO / "configs" / "demo.toml"


def config_overrides(run_root: Path, dataset: Path, checkpoint: Path, *extra: str) -> list[str]:
    """`--set` values pointing the demo config at a test dataset, run folder and checkpoint."""
    return [
        f"data.karpathy_json={json.dumps(str(dataset / 'dataset.json'))}",
        f"data.image_root={json.dumps(str(dataset / 'images'))}",
        f"data.run_root={json.dumps(str(run_root))}",
        f"clip.model={json.dumps(TINY_MODEL)}",
        f"clip.pretrained={json.dumps(str(checkpoint))}",
        "clip.batch_size=8", "clip.num_workers=0", "run.device=\"cpu\"",
        "store.rows_per_chunk=8", *extra]


def make_config(run_root: Path, dataset: Path, checkpoint: Path, *extra: str) -> Config:
    """The demo config pointed at a test dataset, test run folder and tiny checkpoint."""
    return load_config(DEMO_CONFIG, config_overrides(run_root, dataset, checkpoint, *extra))


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, list[str]]:
    """A small demo dataset, its tiny CLIP briefly trained, and `extract all` run on it."""
    from extract.clip_features import extract_clip
    from extract.concepts import build_concepts
    from extract.fsgr_encode import encode_fsgr
    from extract.fsgr_fit import fit_fsgr
    from extract.vocab_stage import build_vocab
    from shared.datasets.demo_stage import demo_overrides, prepare_demo_data
    from shared.datasets.tiny_clip import train_tiny_clip

    root = tmp_path_factory.mktemp("demo_run")
    sets = [*demo_overrides(root / "demo"), f"data.run_root={json.dumps(str(root / 'runs'))}",
            f"clip.pretrained={json.dumps(str(root / 'demo' / 'tiny_clip.pt'))}",
            "demo.n_train=240", "demo.n_val=30", "demo.n_test=30", "demo.clip_epochs=30",
            "demo.clip_batch_size=16",
            "clip.num_workers=0", "store.rows_per_chunk=16", "fsgr.epochs=2",
            "fsgr.concept_min_count=2"]
    config = load_config(DEMO_CONFIG, sets)
    prepare_demo_data(config)
    train_tiny_clip(config, progress=False)
    build_vocab(config)
    assert extract_clip(config, progress=False).complete
    build_concepts(config)
    fit_fsgr(config, progress=False)
    encode_fsgr(config, progress=False)
    return config, sets


# A short decoder training on `demo_run` (PMA memory, XE only), enough to decode and score.
EVAL_TRAIN_SETS = ["train.max_epochs=2", "train.batch_size=25", "train.warmup_steps=10",
                   "memory.warmup_iterations=20", "memory.refresh_stride=15",
                   "memory.bank_iterations=20", "memory.bank_cap=2000",
                   "memory.n_prototypes=16", "memory.knn=4", "eval.batch_size=8",
                   "scst.enabled=false", 'train.experiment="scored"']
# CLIP-S as Hessel et al. compute it (ViT-B-32 on the image files), with random weights: the
# OpenAI ones are a download
SCORED_TRAIN_SETS = [*EVAL_TRAIN_SETS, "eval.clipscore=true", 'eval.clipscore_pretrained="random"']


@pytest.fixture(scope="session")
def scored_run(demo_run) -> tuple[Config, list[str], list[str]]:
    """`demo_run` with a decoder trained briefly (its own experiment folder, so no other test's
    training touches it) and its test split decoded and scored: (config, sets, score lines)."""
    from evaluate.score import score
    from train.trainer import train

    _, sets = demo_run
    sets = [*sets, *SCORED_TRAIN_SETS]
    config = load_config(DEMO_CONFIG, sets)
    train(config, progress=False)
    lines = score(config, progress=False).lines
    return config, sets, lines
