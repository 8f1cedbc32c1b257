"""Typed run configuration: one TOML file per dataset, one section per stage.

Files are read with the standard library (`tomllib`); every key must be a field declared
below, with a matching type. `--set section.key=value` overrides are parsed as TOML values
(falling back to a bare string), so `--set clip.batch_size=8` and `--set clip.model=ViT-B-16`
both work.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A config file or override that does not match the schema; the message names the key."""


@dataclass
class DataConfig:
    """Where a dataset lives on disk (Karpathy json + images + COCO-format annotations)."""

    name: str = "demo"
    karpathy_json: str = ""
    image_root: str = ""
    captions_json: list[str] = field(default_factory=list)
    instances_json: list[str] = field(default_factory=list)
    min_word_count: int = 5
    max_caption_words: int = 20
    run_root: str = "runs"


@dataclass
class DemoConfig:
    """The embedded synthetic dataset and the tiny CLIP trained on it."""

    output_dir: str = "data/demo"
    seed: int = 0
    n_train: int = 2400
    n_val: int = 300
    n_test: int = 300
    image_size: int = 128
    clip_model: str = "demo-tiny-clip"
    clip_epochs: int = 12
    clip_batch_size: int = 128
    clip_lr: float = 1e-3


@dataclass
class ClipConfig:
    """The frozen CLIP run once over every image (`extract clip`)."""

    model: str = "ViT-L-14"
    pretrained: str = "openai"
    batch_size: int = 64
    num_workers: int = 8
    device: str = "auto"
    precision: str = "auto"
    # "csa": the last block's patch tokens from SCLIP's correlative self-attention (same
    # frozen weights; the pooled embedding stays standard); see shared/clip_model.py
    patch_attention: str = "standard"


@dataclass
class StoreConfig:
    """On-disk layout of feature caches."""

    format: str = "zarr"
    rows_per_chunk: int = 64
    dtype: str = "float16"


@dataclass
class FsgrConfig:
    """FSGR semantic modules (`extract fit` / `extract encode`)."""

    d_model: int = 512
    n_layers: int = 2
    n_heads: int = 8
    d_ff: int = 2048
    dropout: float = 0.1
    top_k: int = 20
    gumbel_tau: float = 1.0
    learn_logit_scale: bool = False   # patch-concept logit scale: CLIP's, frozen (FSGR); true:
                                      # a parameter initialised at CLIP's
    contrastive_temperature: float = 0.07
    contrastive_weight: float = 0.25
    concept_min_count: int = 5
    concept_list: str = ""
    prompt_template: str = "a photo of a {}"
    epochs: int = 10
    batch_size: int = 50
    lr: float = 2e-4
    warmup_steps: int = 1000
    max_anchors: int = 4096
    captions_per_image: int = 5


@dataclass
class DecoderConfig:
    """Caption decoder (shared by `train` and `evaluate`)."""

    visual_input: str = "fsgr"
    d_model: int = 512
    n_heads: int = 8
    n_enc_layers: int = 0
    n_dec_layers: int = 3
    d_ff: int = 2048
    dropout: float = 0.1


@dataclass
class MemoryConfig:
    """Prototypical memory: `self` is PMA-Net's placement, `cross` the seed proposal's."""

    self: bool = True
    cross: bool = False
    n_prototypes: int = 1024
    knn: int = 16
    bank_iterations: int = 1500
    bank_cap: int = 200_000
    refresh_stride: int = 500
    warmup_iterations: int = 1000
    n_cross_prototypes: int = 1024
    init_from_cluster: bool = False
    kmeans_max_points: int = 131_072  # a refresh's K-Means trains on <= this many sampled
                                      # keys (FAISS: n_prototypes x (this // n_prototypes),
                                      # 128 per prototype at 1024); 0: every key


@dataclass
class ClusterConfig:
    """FAISS K-Means / k-NN used to build prototypes."""

    seed: int = 0
    n_iter: int = 20
    max_points: int = 500_000
    device: str = "auto"


@dataclass
class TrainConfig:
    """Cross-entropy training from the feature cache."""

    experiment: str = ""        # a name puts train/eval outputs in runs/<ds>/experiments/<name>
    batch_size: int = 50
    lr: float = 2e-4
    warmup_steps: int = 10_000
    decay_every: int = 3
    decay_factor: float = 0.8
    max_epochs: int = 30
    patience: int = 5
    grad_clip: float = 1.0
    seed: int = 0
    shuffle_buffer: int = 2048
    num_workers: int = 2
    precision: str = "auto"


@dataclass
class ScstConfig:
    """Self-critical sequence training after cross-entropy."""

    enabled: bool = True             # `python -m train` runs SCST after cross-entropy
    init_checkpoint: str = ""        # start from this XE checkpoint instead of train/best.pt
    candidates: str = "beam"         # "beam": top-n beams (M2); "sample": n multinomial samples
    n_samples: int = 5
    baseline: str = "mean"           # "mean" of all n candidates (M2), "mean_others", "greedy"
    loss_normalization: str = "max_length"  # summed log-prob / eval.max_length (M2), "tokens",
                                            # "candidate"; see train.scst.scst_loss
    lr: float = 1e-5
    decay_every: int = 0             # epochs between lr decays (0: constant lr)
    decay_factor: float = 0.8
    max_epochs: int = 20
    patience: int = 5
    batch_size: int = 50


@dataclass
class EvalConfig:
    """Decoding and scoring."""

    split: str = "test"
    beam_size: int = 5
    max_length: int = 20
    batch_size: int = 50
    spice: bool = True
    clipscore: bool = False
    chair_vocabulary: str = "original"   # "original": Rohrbach et al.'s CHAIR; "extended": ours


@dataclass
class Config:
    """The whole run configuration; one attribute per TOML section."""

    data: DataConfig = field(default_factory=DataConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    fsgr: FsgrConfig = field(default_factory=FsgrConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    scst: ScstConfig = field(default_factory=ScstConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @property
    def run_dir(self) -> Path:
        """`runs/<dataset>/`: root of every artefact of this dataset."""
        return Path(self.data.run_root) / self.data.name

    def value(self, dotted: str) -> Any:
        """The value of `section` (as a dict) or `section.key`."""
        section, _, key = dotted.partition(".")
        if section not in _sections():
            raise ConfigError(f"unknown config section '{section}'")
        obj = getattr(self, section)
        if not key:
            return dataclasses.asdict(obj)
        if key not in _fields(type(obj)):
            raise ConfigError(f"unknown config key '{dotted}'")
        return getattr(obj, key)

    def select(self, keys: list[str]) -> dict[str, Any]:
        """The values of the named sections / keys, flattened to `section.key` entries."""
        out: dict[str, Any] = {}
        for dotted in keys:
            val = self.value(dotted)
            if "." in dotted:
                out[dotted] = val
            else:
                out.update({f"{dotted}.{k}": v for k, v in val.items()})
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def hash_values(values: dict[str, Any]) -> str:
    """Stable short hash of JSON-able values (used for config hashes in manifests)."""
    blob = json.dumps(values, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _sections() -> dict[str, type]:
    return {f.name: f.type if isinstance(f.type, type) else _resolve(f.type)
            for f in dataclasses.fields(Config)}


def _resolve(name: str) -> type:
    return globals()[name]


def _fields(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _check_type(dotted: str, value: Any, expected: Any) -> Any:
    """Return `value` converted to `expected`, or raise ConfigError naming the key."""
    origin = typing.get_origin(expected)
    if origin is list:
        (item_type,) = typing.get_args(expected)
        if isinstance(value, str) and item_type is str:
            return [value]
        if not isinstance(value, list):
            raise ConfigError(f"config key '{dotted}' must be a list, got {value!r}")
        return [_check_type(f"{dotted}[{i}]", v, item_type) for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"config key '{dotted}': union types are not supported")
    if expected is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{dotted}' must be true or false, got {value!r}")
        return value
    if expected is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{dotted}' must be an integer, got {value!r}")
        return value
    if expected is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{dotted}' must be a number, got {value!r}")
        return float(value)
    if expected is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{dotted}' must be a string, got {value!r}")
        return value
    raise ConfigError(f"config key '{dotted}': unsupported type {expected}")


def _apply(config: Config, section: str, key: str, value: Any, origin: str) -> None:
    sections = _sections()
    if section not in sections:
        raise ConfigError(f"{origin}: unknown config section '{section}' "
                          f"(known: {', '.join(sections)})")
    fields = _fields(sections[section])
    if key not in fields:
        raise ConfigError(f"{origin}: unknown config key '{section}.{key}' "
                          f"(known in [{section}]: {', '.join(fields)})")
    try:
        converted = _check_type(f"{section}.{key}", value, fields[key])
    except ConfigError as err:
        raise ConfigError(f"{origin}: {err}") from None
    setattr(getattr(config, section), key, converted)


def parse_override(text: str) -> tuple[str, str, Any]:
    """Split `section.key=value`; the value is read as a TOML value, else kept as a string."""
    dotted, sep, raw = text.partition("=")
    section, dot, key = dotted.strip().partition(".")
    if not sep or not dot or not section or not key:
        raise ConfigError(f"--set '{text}': expected section.key=value")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return section, key, value


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a TOML config file and apply `section.key=value` overrides, validating both."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None
    config = Config()
    for section, table in raw.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: top-level key '{section}' must be a [section]")
        for key, value in table.items():
            _apply(config, section, key, value, str(path))
    for text in overrides:
        section, key, value = parse_override(text)
        _apply(config, section, key, value, "--set")
    _validate_choices(config)
    return config


_CHOICES = {
    "store.format": ("zarr", "hdf5"),
    "store.dtype": ("float16", "float32"),
    "clip.device": ("auto", "cpu", "cuda"),
    "clip.precision": ("auto", "fp32", "bf16", "fp16"),
    "clip.patch_attention": ("standard", "csa"),
    "train.precision": ("auto", "fp32", "bf16", "fp16"),
    "decoder.visual_input": ("fsgr", "clip"),
    "cluster.device": ("auto", "cpu", "cuda"),
    "scst.baseline": ("mean", "mean_others", "greedy"),
    "scst.loss_normalization": ("max_length", "tokens", "candidate"),
    "scst.candidates": ("sample", "beam"),
    "eval.split": ("train", "val", "test"),
    "eval.chair_vocabulary": ("original", "extended"),
}


def _validate_choices(config: Config) -> None:
    for dotted, allowed in _CHOICES.items():
        value = config.value(dotted)
        if value not in allowed:
            raise ConfigError(f"config key '{dotted}' must be one of {', '.join(allowed)}, "
                              f"got {value!r}")
    if config.store.rows_per_chunk < 1:
        raise ConfigError("config key 'store.rows_per_chunk' must be >= 1")
