"""`extract vocab`: the caption vocabulary of the training split, saved beside the run."""

from __future__ import annotations

from shared.config import Config, require_paths
from shared.karpathy import load_karpathy, split_records
from shared.manifest import decide, write_manifest
from shared.stages import vocab_stage
from shared.vocabulary import Vocabulary, build_vocabulary


def build_vocab(config: Config, force: bool = False) -> tuple[Vocabulary, str]:
    """Build (or load, when up to date) `runs/<dataset>/vocab.json`; returns it and a line."""
    spec = vocab_stage(config)
    require_paths(config, "data.karpathy_json")
    decision = decide(spec, config, force=force)
    if decision.up_to_date:
        return Vocabulary.load(spec.output), f"extract vocab: {decision.reason}"
    records = load_karpathy(config.data.karpathy_json, config.data.image_root)
    train = split_records(records, "train")
    vocab = build_vocabulary((t for r in train for t in r.tokens), config.data.min_word_count)
    spec.output.parent.mkdir(parents=True, exist_ok=True)
    vocab.save(spec.output)
    write_manifest(spec, config, {"words": len(vocab), "train_images": len(train)})
    return vocab, (f"extract vocab: {len(vocab)} words (min count "
                   f"{config.data.min_word_count}) from {len(train)} training images")
