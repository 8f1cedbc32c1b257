"""`extract vocab`: the caption vocabulary of the training split, saved beside the run."""

from __future__ import annotations

from shared.config import Config, require_paths
from shared.karpathy import load_karpathy, split_records
from shared.stage_runner import StageResult, StageRun, run_stage
from shared.stages import vocab_stage
from shared.vocabulary import build_vocabulary


def build_vocab(config: Config, force: bool = False) -> StageResult:
    """Build (or skip, when up to date) `runs/<dataset>/vocab.json`."""
    require_paths(config, "data.karpathy_json")
    return run_stage(vocab_stage(config), config, _build, force=force)


def _build(run: StageRun) -> dict[str, int]:
    config = run.config
    train = split_records(load_karpathy(config.data.karpathy_json, config.data.image_root),
                          "train")
    vocab = build_vocabulary((t for r in train for t in r.tokens), config.data.min_word_count)
    vocab.save(run.spec.output)
    run.say(f"{len(vocab)} words (min count {config.data.min_word_count}) from {len(train)} "
            "training images")
    return {"words": len(vocab), "train_images": len(train)}
