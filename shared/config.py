"""Typed run configuration: one TOML file per dataset, one section per stage.

Files are read with the standard library (`tomllib`); every key must be a field declared
below, with a matching type. `--set section.key=value` overrides are parsed as TOML values
(falling back to a bare string), so `--set clip.batch_size=8` and `--set clip.model=ViT-B-16`
both work. After the overrides, every key is checked against its rule in `RULES` (range,
choices, name or path syntax) and pairs of keys against `RELATIONS`; whether the data files
named by path keys exist is checked by `require_paths`, which the stages that read them call
(`python -m shared.datasets prepare` creates some of them).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tomllib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


class ConfigError(ValueError):
    """A config file or override that does not match the schema; the message names the key."""


# A `Literal[...]` field accepts exactly its choices (checked on reading and by `validate`).
Device = Literal["auto", "cpu", "cuda"]        # auto: CUDA when visible, else the CPU
Precision = Literal["auto", "fp32", "bf16", "fp16"]  # auto: bf16 on CUDA, fp32 on the CPU


@dataclass
class DataConfig:
    """Where a dataset lives on disk (Karpathy json + images + COCO-format annotations)."""

    name: str = "demo"           # the run's name: outputs go to <run_root>/<name>/
    # what `shared.datasets prepare` does: "demo" (generate), "coco" (download), "flickr30k"
    # (check / print the steps), "vg" / "nocaps" (convert their own files), "karpathy" (a
    # Karpathy-format json already on disk: check)
    kind: Literal["demo", "coco", "flickr30k", "vg", "nocaps", "karpathy"] = "karpathy"
    karpathy_json: str = "data/demo/dataset_demo.json"   # defaults: where the demo is written
    image_root: str = "data/demo/images"
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
    clip_object_text_rate: float = 0.5   # steps pairing an image with its object list
    # the controlled language prior: "a+b" pairs of categories that (nearly) always appear
    # together in train/val scenes; the test split also holds counter-prior scenes
    prior_pairs: list[str] = field(default_factory=list)
    prior_strength: float = 0.95         # share of would-be lone-member scenes that are paired
    counter_prior_fraction: float = 0.3  # test scenes forced to show one member without its pair
    synonym_rate: float = 0.5            # share of object mentions using a synonym, not the name


@dataclass
class VgConfig:
    """Visual Genome conversion (`data.kind = "vg"`, shared/datasets/visual_genome.py)."""

    root: str = "data/vg"                 # image_data.json, objects.json, ..., VG_100K{,_2}/
    caption_source: Literal["paragraphs", "regions"] = "paragraphs"  # Krause et al. 2017
    regions_per_image: int = 5            # regions: the N largest distinct region phrases
    n_val: int = 5000                     # regions: images drawn (vg.seed) for val / test
    n_test: int = 5000
    seed: int = 0
    coco_karpathy_json: str = "data/coco/dataset_coco.json"  # leakage guard ("": off)
    object_categories: int = 150          # CHAIR categories: most frequent object names
    concepts_json: str = "data/vg/vg_concepts.json"  # object / attribute counts (concepts)
    concept_objects: int = 3000           # fsgr.concept_source = "vg": at most this many
    concept_attributes: int = 1000        # object and attribute names


@dataclass
class RunConfig:
    """Where every stage computes: CLIP extraction, FSGR, training, evaluation."""

    device: Device = "auto"


@dataclass
class ClipConfig:
    """The frozen CLIP run once over every image (`extract clip`)."""

    model: str = "ViT-L-14"
    pretrained: str = "openai"
    batch_size: int = 64
    num_workers: int = 8
    precision: Precision = "auto"
    # "csa": the last block's patch tokens from SCLIP's correlative self-attention (same
    # frozen weights; the pooled embedding stays standard); see shared/clip_model.py
    patch_attention: Literal["standard", "csa"] = "standard"
    # "gpu": JPEGs decoded + preprocessed in batches on the GPU (shared/gpu_decode.py; other
    # files on the CPU); part of the store identity, as its pixels differ from the CPU path's
    decode: Literal["cpu", "gpu"] = "cpu"
    max_failed_fraction: float = 0.001  # share of unreadable images a complete store may have


@dataclass
class StoreConfig:
    """On-disk layout of feature caches."""

    format: Literal["zarr", "hdf5"] = "zarr"
    rows_per_chunk: int = 64
    dtype: Literal["float16", "float32"] = "float16"


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
    # "captions": training captions' content words; "vg": Visual Genome's frequent object /
    # attribute names
    concept_source: Literal["captions", "vg"] = "captions"
    prompt_template: str = "a photo of a {}"
    epochs: int = 10
    batch_size: int = 50
    lr: float = 2e-4
    warmup_steps: int = 1000
    max_anchors: int = 4096
    captions_per_image: int = 5
    seed: int = 0                     # `extract fit`'s seed (init, batch order, Gumbel noise),
                                      # apart from train.seed: a new decoder seed keeps FSGR


@dataclass
class DecoderConfig:
    """Caption decoder (shared by `train` and `evaluate`)."""

    visual_input: Literal["fsgr", "clip"] = "fsgr"
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
    device: Device = "auto"      # FAISS K-Means / k-NN (cuda: its GPU index)


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
    precision: Precision = "auto"
    tensorboard: bool = False   # log records also as TensorBoard scalars (extra `tensorboard`)
    compile: bool = False       # decoder forward under torch.compile (where supported)


@dataclass
class ScstConfig:
    """Self-critical sequence training after cross-entropy."""

    enabled: bool = True             # `python -m train` runs SCST after cross-entropy
    init_checkpoint: str = ""        # start from this XE checkpoint instead of train/best.pt
    # "beam": top-n beams (M2); "sample": n multinomial samples
    candidates: Literal["beam", "sample"] = "beam"
    n_samples: int = 5
    # "mean" of all n candidates (M2), "mean_others", "greedy"
    baseline: Literal["mean", "mean_others", "greedy"] = "mean"
    # summed log-prob / eval.max_length (M2), "tokens", "candidate"; see train.scst_objective
    loss_normalization: Literal["max_length", "tokens", "candidate"] = "max_length"
    lr: float = 1e-5
    decay_every: int = 0             # epochs between lr decays (0: constant lr)
    decay_factor: float = 0.8
    max_epochs: int = 20
    patience: int = 5
    batch_size: int = 50


@dataclass
class EvalConfig:
    """Decoding and scoring."""

    split: Literal["train", "val", "test"] = "test"
    beam_size: int = 5
    max_length: int = 20
    batch_size: int = 50
    spice: bool = True
    clipscore: bool = False
    # "reference": Hessel et al.'s CLIP-S / RefCLIP-S (ViT-B-32, the image files); "run": the
    # run's CLIP on its cached embeddings, as CLIP-S_run / RefCLIP-S_run (evaluate.clip_score)
    clipscore_clip: Literal["reference", "run"] = "reference"
    clipscore_pretrained: str = "openai"   # the reference ViT-B-32's weights: a tag or a file
    # "original": Rohrbach et al.'s CHAIR; "extended": ours
    chair_vocabulary: Literal["original", "extended"] = "original"
    subsets: dict[str, str] = field(default_factory=dict)  # name -> file of image ids of the
                                                           # split, scored alone too


@dataclass
class Config:
    """The whole run configuration; one attribute per TOML section."""

    data: DataConfig = field(default_factory=DataConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
    run: RunConfig = field(default_factory=RunConfig)
    vg: VgConfig = field(default_factory=VgConfig)
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
        """The values of the named sections / keys, flattened to `section.key` entries (what a
        stage's identity holds: no `LOGGING_KEYS`, no `ADDED_KEYS` at their default)."""
        out: dict[str, Any] = {}
        for dotted in keys:
            val = self.value(dotted)
            if "." in dotted:
                out[dotted] = val
            else:
                out.update({f"{dotted}.{k}": v for k, v in val.items()
                            if f"{dotted}.{k}" not in LOGGING_KEYS})
        return {k: v for k, v in out.items()
                if not (k in ADDED_KEYS and v == ADDED_KEYS[k])}

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
    if origin is Literal:
        value = _check_type(dotted, value, str)
        if value not in typing.get_args(expected):
            raise ConfigError(f"config key '{dotted}' must be one of "
                              f"{', '.join(typing.get_args(expected))}, got {value!r}")
        return value
    if origin is dict:
        return _check_table(dotted, value, expected)
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


def _check_table(dotted: str, value: Any, expected: Any) -> dict[str, str]:
    """A TOML table of strings (`{name = "x", ...}`, a `dict[str, str]` key)."""
    if typing.get_args(expected) != (str, str):
        raise ConfigError(f"config key '{dotted}': unsupported type {expected}")
    if not isinstance(value, dict):
        raise ConfigError(f"config key '{dotted}' must be a table of strings "
                          f'({{name = "value", ...}}), got {value!r}')
    return {key: _check_type(f"{dotted}.{key}", item, str) for key, item in value.items()}


def _apply(config: Config, section: str, key: str, value: Any, origin: str) -> None:
    sections = _sections()
    if section not in sections:
        raise ConfigError(f"{origin}: unknown config section '{section}' "
                          f"(known: {', '.join(sections)})")
    fields = _fields(sections[section])
    if f"{section}.{key}" in MOVED:
        raise ConfigError(f"{origin}: config key '{section}.{key}' is now "
                          f"'{MOVED[section + '.' + key]}'")
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


SHIPPED_CONFIG_DIR = Path(__file__).resolve().parent / "run_configs"


def shipped_configs() -> list[str]:
    """Names of the run configs shipped with the package (`--config coco`)."""
    return sorted(p.stem for p in SHIPPED_CONFIG_DIR.glob("*.toml"))


def resolve_config_path(path: str | Path) -> Path:
    """An existing file as given, else a shipped config's name (`coco`, `coco.toml`)."""
    path = Path(path)
    if path.is_file() or path.parent != Path("."):
        return path
    shipped = SHIPPED_CONFIG_DIR / (path.name if path.suffix == ".toml" else f"{path.name}.toml")
    if shipped.is_file():
        return shipped
    raise ConfigError(f"config file not found: {path} (a path, or a shipped config: "
                      f"{', '.join(shipped_configs())})")


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a TOML config file (or a shipped config by name) and apply `section.key=value`
    overrides, validating both."""
    path = resolve_config_path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None
    return config_from_dict(raw, str(path), overrides)


def config_from_dict(raw: dict[str, Any], origin: str,
                     overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """A config from `{section: {key: value}}` (a TOML file's tables, `Config.to_dict()`)
    plus `section.key=value` overrides, validated; `origin` names the source in errors."""
    config = Config()
    for section, table in raw.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{origin}: top-level key '{section}' must be a [section]")
        for key, value in table.items():
            _apply(config, section, key, value, origin)
    for text in overrides:
        section, key, value = parse_override(text)
        _apply(config, section, key, value, "--set")
    validate(config)
    return config


# ----------------------------------------------------------------------------- value rules


@dataclass(frozen=True)
class Rule:
    """The values one key accepts: `test` decides, `allowed` says it in words. `exists`
    ("file" | "dir") marks a path key whose target `require_paths` checks."""

    allowed: str
    test: Callable[[Any], bool]
    exists: str = ""


def _integer(low: int, high: int) -> Rule:
    """An integer in low..high (the type itself is checked on reading)."""
    return Rule(f"an integer in {low}..{high}", lambda v: low <= v <= high)


def _seed() -> Rule:
    """A random seed every library here takes (numpy, torch, FAISS: 0..2**31-1)."""
    return _integer(0, 2**31 - 1)


def _positive(high: float = math.inf) -> Rule:
    """A number > 0 (and <= high)."""
    words = "a number > 0" + (f" and <= {high:g}" if high < math.inf else "")
    return Rule(words, lambda v: 0 < v <= high)


def _non_negative(high: float) -> Rule:
    """A number in [0, high]."""
    return Rule(f"a number in [0, {high:g}]", lambda v: 0 <= v <= high)


def _dropout() -> Rule:
    """A dropout probability: [0, 1) (1 would drop everything)."""
    return Rule("a probability in [0, 1)", lambda v: 0 <= v < 1)


def _decay() -> Rule:
    """A multiplicative decay factor in (0, 1]."""
    return Rule("a number in (0, 1]", lambda v: 0 < v <= 1)


def _one_of(*choices: str) -> Rule:
    return Rule(f"one of {', '.join(choices)}", lambda v: v in choices)


def _flag() -> Rule:
    """A boolean: both values are meaningful (the type is checked on reading)."""
    return Rule("true or false", lambda v: True)


def _text() -> Rule:
    """A non-empty single-line string (a model name, say)."""
    return Rule("a non-empty string", lambda v: bool(v.strip()) and "\n" not in v)


def _is_folder_name(value: str) -> bool:
    return (bool(value) and value not in (".", "..") and not any(c in value for c in "/\\\0")
            and value == value.strip() and len(value) <= 255)


def _folder_name(optional: bool = False) -> Rule:
    """One plain folder name (no path separators, not "." or ".."); "" too when optional."""
    words = "a plain folder name (no / or \\, not . or ..)" + (" or empty" if optional else "")
    return Rule(words, lambda v: (optional and v == "") or _is_folder_name(v))


def _is_path(value: str) -> bool:
    return bool(value.strip()) and "\0" not in value and "\n" not in value


def _path(exists: str = "", optional: bool = False) -> Rule:
    """A path (non-empty; "" too when optional); `exists`: what `require_paths` wants there."""
    words = "a path" + (" or empty" if optional else "")
    return Rule(words, lambda v: (optional and v == "") or _is_path(v), exists)


def _paths(exists: str) -> Rule:
    """A list (maybe empty) of paths, each of an existing `exists` for `require_paths`."""
    return Rule("a list of non-empty paths", lambda v: all(_is_path(p) for p in v), exists)


def _is_name(value: str) -> bool:
    return bool(value) and all(c.isascii() and (c.isalnum() or c in "_-") for c in value)


def _named_paths(exists: str) -> Rule:
    """A table (maybe empty) of plain names ([A-Za-z0-9_-]+) to paths, each of an existing
    `exists` for `require_paths`."""
    return Rule("a table of names ([A-Za-z0-9_-]+) to non-empty paths, e.g. "
                '{in_domain = "ids.json"}',
                lambda v: all(_is_name(k) and _is_path(p) for k, p in v.items()), exists)


def _is_template(value: str) -> bool:
    try:
        return value.format("a") != value.format("b")
    except (IndexError, KeyError, ValueError):
        return False


def _template() -> Rule:
    """A prompt with one {} where the word goes."""
    return Rule('a string with one {} where the word goes (e.g. "a photo of a {}")', _is_template)


# Keys that change how a run is logged, not what it computes: left out of stage identities.
LOGGING_KEYS = frozenset({"train.tensorboard"})
# Keys added after outputs were built: at these values (what those outputs were built with)
# they are left out of stage identities, so finished stages stay up to date.
ADDED_KEYS: dict[str, Any] = {"clip.decode": "cpu", "fsgr.concept_source": "captions",
                              "train.compile": False}
BIG = 10**9          # cap of counts that scale memory or time linearly (points, steps, keys)
BATCH = 100_000      # cap of batch sizes
EPOCHS = 100_000
WIDTH = 65_536       # cap of model widths / feed-forward sizes
LAYERS = 256

RULES: dict[str, Rule] = {
    "data.name": _folder_name(),
    "data.karpathy_json": _path("file"),
    "data.image_root": _path("dir"),
    "data.captions_json": _paths("file"),
    "data.instances_json": _paths("file"),
    "data.min_word_count": _integer(1, BIG),
    "data.max_caption_words": _integer(1, 1000),
    "data.run_root": _path(),
    "demo.output_dir": _path(),
    "demo.seed": _seed(),
    "demo.n_train": _integer(1, 1_000_000),
    "demo.n_val": _integer(1, 1_000_000),
    "demo.n_test": _integer(1, 1_000_000),
    "demo.image_size": _integer(32, 4096),
    "demo.clip_model": _text(),
    "demo.clip_epochs": _integer(1, EPOCHS),
    "demo.clip_batch_size": _integer(2, BATCH),
    "demo.clip_lr": _positive(1.0),
    "demo.prior_pairs": Rule('a list of "a+b" category pairs (shared.datasets.CATEGORIES)',
                             lambda v: all(len([w for w in p.split("+") if w.strip()]) == 2
                                           for p in v)),
    "demo.clip_object_text_rate": _non_negative(1.0),
    "demo.prior_strength": _non_negative(1.0),
    "demo.counter_prior_fraction": _non_negative(1.0),
    "demo.synonym_rate": _non_negative(1.0),
    "vg.root": _path(),
    "vg.regions_per_image": _integer(1, 1000),
    "vg.n_val": _integer(0, 1_000_000),
    "vg.n_test": _integer(0, 1_000_000),
    "vg.seed": _seed(),
    "vg.coco_karpathy_json": _path(optional=True),
    "vg.object_categories": _integer(1, 100_000),
    "vg.concepts_json": _path(),
    "vg.concept_objects": _integer(0, 1_000_000),
    "vg.concept_attributes": _integer(0, 1_000_000),
    "clip.model": _text(),
    "clip.pretrained": Rule('a hub tag such as "openai", an open_clip "hf-hub:org/repo" name, a '
                            'local checkpoint file, or "random" (random weights)', _is_path),
    "clip.batch_size": _integer(1, BATCH),
    "clip.num_workers": _integer(0, 1024),
    "clip.max_failed_fraction": _non_negative(1.0),
    "store.rows_per_chunk": _integer(1, 1_000_000),
    "fsgr.d_model": _integer(1, WIDTH),
    "fsgr.n_layers": _integer(1, LAYERS),
    "fsgr.n_heads": _integer(1, 1024),
    "fsgr.d_ff": _integer(1, WIDTH),
    "fsgr.dropout": _dropout(),
    "fsgr.top_k": _integer(1, 100_000),
    "fsgr.gumbel_tau": _positive(100.0),
    "fsgr.learn_logit_scale": _flag(),
    "fsgr.contrastive_temperature": _positive(100.0),
    "fsgr.contrastive_weight": _non_negative(1000.0),
    "fsgr.concept_min_count": _integer(1, BIG),
    "fsgr.concept_list": _path("file", optional=True),
    "fsgr.prompt_template": _template(),
    "fsgr.epochs": _integer(1, EPOCHS),
    "fsgr.batch_size": _integer(1, BATCH),
    "fsgr.lr": _positive(1.0),
    "fsgr.warmup_steps": _integer(0, BIG),
    "fsgr.max_anchors": _integer(1, 10_000_000),
    "fsgr.captions_per_image": _integer(1, 1000),
    "fsgr.seed": _seed(),
    "decoder.d_model": _integer(1, WIDTH),
    "decoder.n_heads": _integer(1, 1024),
    "decoder.n_enc_layers": _integer(0, LAYERS),
    "decoder.n_dec_layers": _integer(1, LAYERS),
    "decoder.d_ff": _integer(1, WIDTH),
    "decoder.dropout": _dropout(),
    "memory.self": _flag(),
    "memory.cross": _flag(),
    "memory.n_prototypes": _integer(1, 1_000_000),
    "memory.knn": _integer(1, 1_000_000),
    "memory.bank_iterations": _integer(1, BIG),
    "memory.bank_cap": _integer(1, 100_000_000),
    "memory.refresh_stride": _integer(1, BIG),
    "memory.warmup_iterations": _integer(0, BIG),
    "memory.n_cross_prototypes": _integer(1, 1_000_000),
    "memory.init_from_cluster": _flag(),
    "memory.kmeans_max_points": _integer(0, BIG),
    "cluster.seed": _seed(),
    "cluster.n_iter": _integer(1, 100_000),
    "cluster.max_points": _integer(1, BIG),
    "train.experiment": _folder_name(optional=True),
    "train.batch_size": _integer(1, BATCH),
    "train.lr": _positive(1.0),
    "train.warmup_steps": _integer(0, BIG),
    "train.decay_every": _integer(1, EPOCHS),
    "train.decay_factor": _decay(),
    "train.max_epochs": _integer(1, EPOCHS),
    "train.patience": _integer(1, EPOCHS),
    "train.grad_clip": _positive(),
    "train.seed": _seed(),
    "train.shuffle_buffer": _integer(0, 100_000_000),
    "train.tensorboard": _flag(),
    "train.compile": _flag(),
    "scst.enabled": _flag(),
    "scst.init_checkpoint": _path("file", optional=True),
    "scst.n_samples": _integer(1, 100),
    "scst.lr": _positive(1.0),
    "scst.decay_every": _integer(0, EPOCHS),
    "scst.decay_factor": _decay(),
    "scst.max_epochs": _integer(0, EPOCHS),
    "scst.patience": _integer(1, EPOCHS),
    "scst.batch_size": _integer(1, BATCH),
    "eval.beam_size": _integer(1, 100),
    "eval.max_length": _integer(1, 1000),
    "eval.batch_size": _integer(1, BATCH),
    "eval.spice": _flag(),
    "eval.clipscore": _flag(),
    "eval.clipscore_pretrained": Rule('a hub tag such as "openai", a local checkpoint file of '
                                      'ViT-B-32 weights, or "random"', _is_path),
    "eval.subsets": _named_paths("file"),
}
RULES.update({f"{section}.{key}": _one_of(*typing.get_args(kind))
              for section, cls in _sections().items() for key, kind in _fields(cls).items()
              if typing.get_origin(kind) is Literal})
"""The rule of every config key (`load_config` fails on a key without one); a `Literal`
field's rule is its choices."""

MOVED = {"clip.device": "run.device"}
"""Keys that moved: reading the old name is an error naming the new one."""


@dataclass(frozen=True)
class Relation:
    """A rule between two keys; `problem` words a failure with {a}, {va}, {b}, {vb}."""

    a: str
    b: str
    holds: Callable[[Any, Any], bool]
    problem: str


RELATIONS: tuple[Relation, ...] = (
    Relation("decoder.d_model", "decoder.n_heads", lambda d, h: d % h == 0,
             "{a}={va} is not a multiple of {b}={vb}"),
    Relation("fsgr.d_model", "fsgr.n_heads", lambda d, h: d % h == 0,
             "{a}={va} is not a multiple of {b}={vb}"),
    Relation("memory.knn", "memory.n_prototypes", lambda k, m: k <= m,
             "{a}={va} is more than {b}={vb}"),
    Relation("memory.kmeans_max_points", "memory.n_prototypes", lambda p, m: p == 0 or p >= m,
             "{a}={va} is fewer than {b}={vb}; use 0 (every key) or at least {vb}"),
    Relation("scst.n_samples", "scst.baseline", lambda n, b: n >= 2 or b == "greedy",
             "{a}={va} must be >= 2 with {b}={vb} (it averages several candidates)"),
    Relation("fsgr.concept_list", "fsgr.concept_source", lambda f, s: not f or s == "captions",
             "{a}={va} replaces the caption-derived vocabulary; it cannot be combined with "
             "{b}={vb}"),
    Relation("eval.max_length", "data.max_caption_words", lambda n, w: n <= w + 2,
             "{a}={va} is more than {b}={vb} + 2 (the decoder's positions)"),
)


def _show(value: Any) -> str:
    """repr of a value, shortened to stay on one readable line."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def validate(config: Config) -> None:
    """Raise ConfigError (one line: key, value, what is allowed) at the first bad value."""
    for section, cls in _sections().items():
        for key in _fields(cls):
            dotted = f"{section}.{key}"
            rule = RULES.get(dotted)
            if rule is None:
                raise ConfigError(f"config key '{dotted}' has no rule in shared.config.RULES")
            value = getattr(getattr(config, section), key)
            if not rule.test(value):
                raise ConfigError(f"config key '{dotted}' must be {rule.allowed}, "
                                  f"got {_show(value)}")
    for rel in RELATIONS:
        va, vb = config.value(rel.a), config.value(rel.b)
        if not rel.holds(va, vb):
            raise ConfigError(f"config key '{rel.a}': "
                              + rel.problem.format(a=rel.a, va=_show(va), b=rel.b, vb=_show(vb)))


def _path_items(dotted: str, value: Any) -> list[tuple[str, str]]:
    """(key, path) of each path of a path key's value: a table's entries (`key.name`), a
    list's items, or the one path."""
    if isinstance(value, dict):
        return [(f"{dotted}.{name}", path) for name, path in value.items()]
    return [(dotted, item) for item in (value if isinstance(value, list) else [value])]


def require_paths(config: Config, *keys: str) -> None:
    """Raise ConfigError naming the first path key (of `keys`, default all path keys) whose
    file or folder does not exist; empty optional paths are skipped."""
    for dotted in keys or [k for k, r in RULES.items() if r.exists]:
        kind = RULES[dotted].exists
        if not kind:
            raise ConfigError(f"config key '{dotted}' is not a file or folder path")
        for key, item in _path_items(dotted, config.value(dotted)):
            found = Path(item).is_file() if kind == "file" else Path(item).is_dir()
            if item and not found:
                hint = (" or make it with `python -m shared.datasets prepare`"
                        if dotted.startswith("data.") else "")
                raise ConfigError(f"config key '{key}' names no existing {kind}: {item} "
                                  f"(fix the path{hint})")
