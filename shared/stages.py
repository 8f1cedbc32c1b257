"""The pipeline as data: each stage's output path, config keys and inputs (the DAG).

Every stage program asks this module where its output goes and what it depends on, so the
manifest checks (skip / re-run / stale) and `make status` agree on one picture.
"""

from __future__ import annotations

from pathlib import Path

from shared.clip_model import is_checkpoint_path
from shared.config import Config
from shared.feature_store import store_path
from shared.manifest import StageSpec

CLIP_KEYS = ["data.karpathy_json", "data.image_root", "clip.model", "clip.pretrained",
             "clip.precision", "store.format", "store.rows_per_chunk", "store.dtype"]
VOCAB_KEYS = ["data.karpathy_json", "data.min_word_count"]


def clip_store_path(config: Config) -> Path:
    """`runs/<dataset>/features/clip.{zarr|h5}`."""
    return store_path(config.run_dir / "features" / "clip", config.store.format)


def vocab_path(config: Config) -> Path:
    """`runs/<dataset>/vocab.json`."""
    return config.run_dir / "vocab.json"


def clip_stage(config: Config) -> StageSpec:
    """`extract clip`: CLIP patch tokens + pooled embeddings of every image."""
    inputs = [Path(config.data.karpathy_json)]
    if is_checkpoint_path(config.clip.pretrained):
        inputs.append(Path(config.clip.pretrained))
    return StageSpec("extract.clip", clip_store_path(config), CLIP_KEYS, inputs)


def vocab_stage(config: Config) -> StageSpec:
    """`extract vocab`: the caption vocabulary of the training split."""
    return StageSpec("extract.vocab", vocab_path(config), VOCAB_KEYS,
                     [Path(config.data.karpathy_json)])


def all_stages(config: Config) -> list[StageSpec]:
    """Every stage that exists so far, upstream first."""
    return [vocab_stage(config), clip_stage(config)]
