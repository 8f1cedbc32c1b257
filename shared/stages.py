"""The pipeline as data: each stage's output path, config keys and inputs (the DAG).

Every stage program asks this module where its output goes and what it depends on, so the
manifest checks (skip / re-run / stale) and `make status` agree on one picture. A stage's
`upstream` lists the stage specs whose outputs it reads: the manifest checks walk them
recursively, so a changed key of any stage up the DAG makes everything downstream refuse to
run (or be reported current) until the chain is rebuilt.
"""

from __future__ import annotations

from pathlib import Path

from shared.clip_model import pretrained_files, repo_model_config
from shared.config import Config
from shared.feature_store import store_path
from shared.manifest import StageSpec

# clip.decode: "gpu" gives other pixels for large JPEGs (no reduced-scale DCT decode,
# `shared.gpu_decode`), so another store
CLIP_KEYS = ["data.karpathy_json", "data.image_root", "clip.model", "clip.pretrained",
             "clip.precision", "clip.patch_attention", "clip.decode", "store.format",
             "store.rows_per_chunk", "store.dtype"]
VOCAB_KEYS = ["data.karpathy_json", "data.min_word_count"]
CONCEPT_KEYS = ["data.karpathy_json", "clip.model", "clip.pretrained", "fsgr.concept_min_count",
                "fsgr.concept_list", "fsgr.prompt_template"]
VG_CONCEPT_KEYS = ["fsgr.concept_source", "vg.concept_objects", "vg.concept_attributes"]
"""Concept keys only with `fsgr.concept_source = "vg"` (its counts file is an input), so adding
them kept every caption-derived codebook built before them up to date."""
FIT_KEYS = ["fsgr", "decoder.d_model", "decoder.n_heads", "decoder.n_dec_layers",
            "decoder.d_ff", "decoder.dropout", "data.max_caption_words",
            "train.decay_every", "train.decay_factor", "train.grad_clip", "train.shuffle_buffer",
            "train.precision", "eval.max_length"]
ENCODE_KEYS = ["store.format", "store.rows_per_chunk", "store.dtype", "clip.precision"]


def clip_store_path(config: Config) -> Path:
    """`runs/<dataset>/features/clip.{zarr|h5}`."""
    return store_path(config.run_dir / "features" / "clip", config.store.format)


def fsgr_store_path(config: Config) -> Path:
    """`runs/<dataset>/features/fsgr.{zarr|h5}`."""
    return store_path(config.run_dir / "features" / "fsgr", config.store.format)


def fsgr_dir(config: Config) -> Path:
    """`runs/<dataset>/fsgr/`: concept codebook, FSGR checkpoints, fit log."""
    return config.run_dir / "fsgr"


def codebook_usage_path(config: Config) -> Path:
    """`runs/<dataset>/fsgr/codebook_usage.json`: the fitted codebook's use on val patches."""
    return fsgr_dir(config) / "codebook_usage.json"


def vocab_path(config: Config) -> Path:
    """`runs/<dataset>/vocab.json`."""
    return config.run_dir / "vocab.json"


def clip_stage(config: Config) -> StageSpec:
    """`extract clip`: CLIP patch tokens + pooled embeddings of every image."""
    inputs = [Path(config.data.karpathy_json), *_checkpoint_inputs(config)]
    return StageSpec("extract.clip", clip_store_path(config), CLIP_KEYS, inputs,
                     command="python -m extract clip")


def vocab_stage(config: Config) -> StageSpec:
    """`extract vocab`: the caption vocabulary of the training split."""
    return StageSpec("extract.vocab", vocab_path(config), VOCAB_KEYS,
                     [Path(config.data.karpathy_json)], command="python -m extract vocab")


def _checkpoint_inputs(config: Config) -> list[Path]:
    """The CLIP weights file(s) and the repo's model config JSON, where they are files (a
    tag or an "hf-hub:" name is an identity by its value, a config key)."""
    inputs = pretrained_files(config.clip.pretrained)
    model_json = repo_model_config(config.clip.model)
    return inputs + ([model_json] if model_json else [])


def concepts_stage(config: Config) -> StageSpec:
    """`extract concepts`: concept words + CLIP text embeddings (FSGR's frozen codebook)."""
    inputs = [Path(config.data.karpathy_json), *_checkpoint_inputs(config)]
    if config.fsgr.concept_list:
        inputs.append(Path(config.fsgr.concept_list))
    keys = CONCEPT_KEYS
    if config.fsgr.concept_source == "vg":
        inputs.append(Path(config.vg.concepts_json))
        keys = [*CONCEPT_KEYS, *VG_CONCEPT_KEYS]
    return StageSpec("extract.concepts", fsgr_dir(config) / "concepts.npz", keys, inputs,
                     command="python -m extract concepts")


def fit_stage(config: Config) -> StageSpec:
    """`extract fit`: FSGR modules trained on the CLIP cache with an auxiliary decoder."""
    upstream = [clip_stage(config), concepts_stage(config), vocab_stage(config)]
    return StageSpec("extract.fit", fsgr_dir(config) / "fsgr.pt", FIT_KEYS, upstream=upstream,
                     command="python -m extract fit")


def encode_stage(config: Config) -> StageSpec:
    """`extract encode`: FSGR features, codebook indices and top-k concepts of every image."""
    upstream = [clip_stage(config), fit_stage(config)]
    return StageSpec("extract.encode", fsgr_store_path(config), ENCODE_KEYS, upstream=upstream,
                     command="python -m extract encode")


def prototypes_dir(config: Config) -> Path:
    """`runs/<dataset>/prototypes/`: feature and memory prototypes (`python -m cluster`)."""
    return config.run_dir / "prototypes"


def experiment_dir(config: Config) -> Path:
    """Where the decoder's outputs go: `runs/<dataset>/`, or `runs/<dataset>/experiments/<name>/`
    with `train.experiment = "<name>"`, so several decoders (baseline, FSGR, PMA, both) train
    and evaluate side by side on the same feature caches."""
    name = config.train.experiment
    if not name:
        return config.run_dir
    if Path(name).name != name or name in (".", ".."):
        raise ValueError(f"train.experiment must be a plain folder name, got {name!r}")
    return config.run_dir / "experiments" / name


def memory_banks_path(config: Config) -> Path:
    """`<experiment>/memory/banks.npz`: key/value banks dumped by the trainer."""
    return experiment_dir(config) / "memory" / "banks.npz"


def visual_stage(config: Config) -> StageSpec:
    """The cache the decoder reads (`decoder.visual_input`): FSGR features or CLIP tokens."""
    return encode_stage(config) if config.decoder.visual_input == "fsgr" else clip_stage(config)


def visual_array(config: Config) -> str:
    """The per-row array of `visual_stage`'s store that holds the patch vectors."""
    return "features" if config.decoder.visual_input == "fsgr" else "patch_tokens"


def cluster_features_stage(config: Config) -> StageSpec:
    """`cluster features`: K-Means prototypes of the visual cache (`memory.cross`)."""
    keys = ["cluster", "memory.n_cross_prototypes", "decoder.visual_input"]
    return StageSpec("cluster.features", prototypes_dir(config) / "features.npz", keys,
                     [Path(config.data.karpathy_json)], [visual_stage(config)],
                     command="python -m cluster features")


def cluster_activations_stage(config: Config) -> StageSpec:
    """`cluster activations`: per-layer M_K / M_V from the trainer's bank dump (`memory.self`)."""
    keys = ["cluster", "memory.n_prototypes", "memory.knn"]
    return StageSpec("cluster.activations",
                     experiment_dir(config) / "prototypes" / "memory.npz", keys,
                     upstream=[memory_banks_stage(config)],
                     command="python -m cluster activations")


TRAIN_KEYS = ["decoder", "memory", "train", "cluster.n_iter", "cluster.seed",
              "data.max_caption_words", "eval.max_length"]


RUN_CONFIG_FILE = "run_config.json"


def run_config_path(config: Config) -> Path:
    """`<experiment>/run_config.json`: {"config": the run's config, "working_dir": the folder
    its relative paths start at}, written by `python -m train`, read by `Captioner.from_run`."""
    return experiment_dir(config) / RUN_CONFIG_FILE


def train_dir(config: Config) -> Path:
    """`<experiment>/train/`: checkpoints, log and curves of the decoder."""
    return experiment_dir(config) / "train"


def train_stage(config: Config) -> StageSpec:
    """`train`: the caption decoder (XE) on the visual cache; output: the best checkpoint."""
    upstream = _train_upstream(config)
    if config.memory.self and config.memory.init_from_cluster:
        upstream.append(cluster_activations_stage(config))
    return StageSpec("train", train_dir(config) / "best.pt", TRAIN_KEYS, upstream=upstream,
                     command="python -m train --xe-only")


def _train_upstream(config: Config) -> list[StageSpec]:
    """What cross-entropy training reads, apart from activation prototypes it may start from."""
    upstream = [visual_stage(config), vocab_stage(config)]
    if config.memory.cross:
        upstream.append(cluster_features_stage(config))
    return upstream


SCST_KEYS = ["scst", "memory", "cluster.n_iter", "cluster.seed", "train.seed",
             "train.grad_clip", "train.precision", "train.shuffle_buffer",
             "data.max_caption_words", "eval.max_length"]


def scst_stage(config: Config) -> StageSpec:
    """`train` after cross-entropy: self-critical training from the XE best checkpoint (or
    `scst.init_checkpoint`); output: `train/scst/best.pt`."""
    inputs = [Path(config.data.karpathy_json)]
    upstream = [visual_stage(config), vocab_stage(config)]
    if config.scst.init_checkpoint:
        inputs.insert(0, Path(config.scst.init_checkpoint))
    else:
        upstream.insert(0, train_stage(config))
    return StageSpec("train.scst", train_dir(config) / "scst" / "best.pt", SCST_KEYS, inputs,
                     upstream, command="python -m train --scst-only")


def decoder_stage(config: Config) -> StageSpec:
    """The checkpoint evaluation uses: SCST's when `scst.enabled`, else cross-entropy's."""
    return scst_stage(config) if config.scst.enabled else train_stage(config)


def memory_banks_stage(config: Config) -> StageSpec:
    """The key/value banks `train` dumps at its end (input of `cluster activations`).

    Their identity is the training run's: the train stage's config keys and inputs, so banks
    from a run with another `train.lr` (or cache, ...) make the activation prototypes stale.
    The activation prototypes a run may start from (`memory.init_from_cluster`) are left out:
    they are built from these banks, and counting them would re-train forever."""
    return StageSpec("train.banks", memory_banks_path(config), list(TRAIN_KEYS),
                     upstream=_train_upstream(config), command="python -m train --xe-only")


CAPTIONS_KEYS = ["eval.split", "eval.beam_size", "eval.max_length", "data.max_caption_words"]
SCORE_KEYS = ["eval.spice", "eval.clipscore", "eval.chair_vocabulary", "data.captions_json",
              "data.instances_json"]
SUBSETS_KEY = "eval.subsets"
"""A score key only when subsets are configured, so adding the key kept every evaluation
scored before it (without subsets) up to date."""
CLIPSCORE_KEYS = ["eval.clipscore_clip", "eval.clipscore_pretrained"]
"""Score keys only with `eval.clipscore` on (evaluations without CLIP-S stay up to date)."""


def clipscore_dependencies(config: Config) -> tuple[list[str], list[Path], list[StageSpec]]:
    """The config keys, input files and upstream stages CLIP-S adds to a scoring stage: none
    when off; the reference CLIP's weights file (if one) for "reference"; the CLIP cache for
    "run"."""
    if not config.eval.clipscore:
        return [], [], []
    if config.eval.clipscore_clip == "run":
        return CLIPSCORE_KEYS, [], [clip_stage(config)]
    return CLIPSCORE_KEYS, pretrained_files(config.eval.clipscore_pretrained), []


def eval_dir(config: Config, split: str | None = None) -> Path:
    """`<experiment>/eval/<split>/`: captions, metrics, per-image results, report."""
    return experiment_dir(config) / "eval" / (split or config.eval.split)


def captions_stage(config: Config) -> StageSpec:
    """`evaluate score`, first half: beam-search captions of `eval.split` (COCO results json)."""
    upstream = [decoder_stage(config), visual_stage(config), vocab_stage(config)]
    return StageSpec("evaluate.captions", eval_dir(config) / "captions.json", CAPTIONS_KEYS,
                     [Path(config.data.karpathy_json)], upstream,
                     command="python -m evaluate score")


def eval_stage(config: Config) -> StageSpec:
    """`evaluate score`, second half: metrics of the captions (pycocoevalcap, CHAIR, CLIP-S),
    also on each of `eval.subsets`, whose files are inputs."""
    inputs = [*(Path(p) for p in config.data.captions_json),
              *(Path(p) for p in config.data.instances_json),
              *(Path(p) for p in config.eval.subsets.values())]
    keys = [*SCORE_KEYS, SUBSETS_KEY] if config.eval.subsets else SCORE_KEYS
    clip_keys, clip_inputs, clip_upstream = clipscore_dependencies(config)
    return StageSpec("evaluate.score", eval_dir(config) / "metrics.json",
                     [*keys, *clip_keys], [*inputs, *clip_inputs],
                     [captions_stage(config), *clip_upstream],
                     command="python -m evaluate score")


def report_stage(config: Config) -> StageSpec:
    """`evaluate report`: the self-contained HTML page of the scored split."""
    return StageSpec("evaluate.report", eval_dir(config) / "report.html", ["eval.split"],
                     upstream=[eval_stage(config)], command="python -m evaluate report")


def all_stages(config: Config) -> list[StageSpec]:
    """Every stage that exists so far, upstream first."""
    return [vocab_stage(config), clip_stage(config), concepts_stage(config), fit_stage(config),
            encode_stage(config), cluster_features_stage(config), train_stage(config),
            *([scst_stage(config)] if config.scst.enabled else []),
            cluster_activations_stage(config), captions_stage(config),
            eval_stage(config), report_stage(config)]
