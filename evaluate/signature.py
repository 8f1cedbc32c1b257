"""A one-line signature of how a result was produced, written into every `metrics.json` and
printed under every comparison table.

Captioning papers rarely say how they ran SCST, yet leaving `<eos>` out of the CIDEr-D reward
alone inflates CIDEr-D by up to ~4 points (Barraco et al. 2023, "SacreEOS"). In the spirit of
sacreBLEU's signatures, each result carries the settings that change its numbers:

    train:xe+scst|cand:beam5|base:mean|eos:loss|norm:max_length|df:train(113287)|beam:5|
    maxlen:20|split:test(5000)|refs:captions_train2014.json+captions_val2014.json|chair:original

`eos:` says where `<eos>` counts in SCST (`reward+loss`, `loss`, `reward`, `none`); `df:` which
references gave the CIDEr-D reward's document frequencies (the training split and its images);
`refs:` what the captions were scored against; `chair:` the CHAIR vocabulary (`not-computed` when
CHAIR was not computed).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from shared.config import Config


@dataclass(frozen=True)
class ResultSignature:
    """The settings behind one evaluation result (see the module docstring)."""

    training: str
    scst_candidates: str | None
    scst_baseline: str | None
    eos_in_reward: bool | None
    eos_in_loss: bool | None
    loss_normalization: str | None
    reward_df: str | None
    beam_size: int
    max_length: int
    split: str
    split_images: int
    references: str
    chair_vocabulary: str

    def line(self) -> str:
        """The signature as one `key:value|...` line."""
        parts = [f"train:{self.training}"]
        if self.training != "xe":
            eos = "+".join(name for name, on in (("reward", self.eos_in_reward),
                                                 ("loss", self.eos_in_loss)) if on) or "none"
            parts += [f"cand:{self.scst_candidates}", f"base:{self.scst_baseline}",
                      f"eos:{eos}", f"norm:{self.loss_normalization}", f"df:{self.reward_df}"]
        parts += [f"beam:{self.beam_size}", f"maxlen:{self.max_length}",
                  f"split:{self.split}({self.split_images})", f"refs:{self.references}",
                  f"chair:{self.chair_vocabulary}"]
        return "|".join(parts)

    def to_json(self) -> dict[str, Any]:
        """The fields plus `line`, for metrics.json."""
        return {**asdict(self), "line": self.line()}


def result_signature(config: Config, split_images: int, train_images: int,
                     chair_computed: bool) -> ResultSignature:
    """The signature of evaluating `config`'s decoder on `split_images` images of
    `eval.split`; `train_images` is the size of the training split (train + restval) whose
    references give the SCST reward's document frequencies."""
    scst = config.scst if config.scst.enabled else None
    references = ("+".join(Path(p).name for p in config.data.captions_json)
                  if config.data.captions_json else "karpathy-json")
    return ResultSignature(
        training="xe+scst" if scst else "xe",
        scst_candidates=f"{scst.candidates}{scst.n_samples}" if scst else None,
        scst_baseline=scst.baseline if scst else None,
        # train/scst.py: <eos> counts in the loss, never as a reward word (as in M2)
        eos_in_reward=False if scst else None,
        eos_in_loss=True if scst else None,
        loss_normalization=scst.loss_normalization if scst else None,
        reward_df=f"train({train_images})" if scst else None,
        beam_size=config.eval.beam_size, max_length=config.eval.max_length,
        split=config.eval.split, split_images=split_images, references=references,
        chair_vocabulary=config.eval.chair_vocabulary if chair_computed else "not-computed")


def signature_line(metrics: dict[str, Any]) -> str:
    """The signature line of a metrics.json payload ('' for results written before
    signatures existed)."""
    signature = metrics.get("signature")
    return str(signature.get("line", "")) if isinstance(signature, dict) else ""
