"""The finished run's caption decoder + vocabulary: `runs/<dataset>/train/scst/best.pt` when
`scst.enabled`, else the cross-entropy `runs/<dataset>/train/best.pt`, rebuilt from the sizes
the checkpoint records (`shared.models.factory.decoder_from_checkpoint`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from shared.checkpoint_files import load_checkpoint
from shared.config import Config
from shared.manifest import require_current
from shared.models.caption_decoder import CaptionDecoder
from shared.models.factory import decoder_from_checkpoint
from shared.stages import decoder_stage, vocab_stage
from shared.vocabulary import Vocabulary


@dataclass
class TrainedDecoder:
    """A decoder in eval mode (with its memory prototypes) and what it was trained on."""

    decoder: CaptionDecoder
    vocab: Vocabulary
    visual_input: str
    epoch: int
    val_cider: float


def load_trained_decoder(config: Config, device: torch.device) -> TrainedDecoder:
    """Load the best checkpoint of `config`'s run; refuses one trained with another config."""
    spec = decoder_stage(config)
    require_current(spec, config, "python -m train")
    vocab = Vocabulary.load(vocab_stage(config).output)
    rerun = "python -m train --scst-only --force" if config.scst.enabled else \
        "python -m train --force"
    ckpt = load_checkpoint(spec.output, "decoder checkpoint", f"re-run `{rerun}`",
                           keys=("model", "meta", "epoch", "val_cider"))
    meta = ckpt["meta"]
    if meta["vocab_size"] != len(vocab):
        raise RuntimeError(f"{spec.output} was trained with {meta['vocab_size']} words but "
                           f"{vocab_stage(config).output} has {len(vocab)}")
    decoder = decoder_from_checkpoint(ckpt, spec.output, config)
    return TrainedDecoder(decoder.to(device).eval(), vocab, meta["visual_input"],
                          int(ckpt["epoch"]), float(ckpt["val_cider"]))
