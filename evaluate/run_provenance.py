"""Where a compared number comes from: the manifests of its evaluation and of the training run
that made the evaluated checkpoint.

For `<experiment>/eval/<split>/metrics.json`: its own manifest (stage `evaluate.score`: config
hash, identity, code version), and the decoder checkpoint's, found through the captions' manifest
(`captions.json.manifest.json` names the decoder stage, `train.scst` or `train`, and its
identity) at `<experiment>/train/scst/best.pt` or `<experiment>/train/best.pt`; the training
seed is that manifest's `train.seed`. A checkpoint retrained since the evaluation (another
identity) is said so, never silently used.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from shared.manifest import read_manifest, upstream_token

DECODER_OUTPUTS = {"train.scst": Path("train/scst/best.pt"), "train": Path("train/best.pt")}


@dataclass(frozen=True)
class StageRecord:
    """One stage output's manifest, in short."""

    stage: str
    output: str
    config_hash: str | None
    identity: str | None
    code_version: str | None
    created: str | None

    def line(self) -> str:
        return (f"{self.stage} config {self.config_hash} identity {self.identity} "
                f"code {self.code_version}")


def _record(output: Path, manifest: dict[str, Any]) -> StageRecord:
    return StageRecord(str(manifest.get("stage", "?")), str(output), manifest.get("config_hash"),
                       manifest.get("identity"), manifest.get("code_version"),
                       manifest.get("created"))


@dataclass(frozen=True)
class Provenance:
    """The evaluation's and the training's manifests of one compared run, its training seed,
    and why the training record is missing (`problem`), if it is."""

    evaluation: StageRecord
    training: StageRecord | None
    seed: int | None
    problem: str | None

    def line(self) -> str:
        """`<metrics.json> | evaluate.score config .. identity .. code .. | train.scst ...`."""
        training = self.training.line() if self.training else f"training: {self.problem}"
        seed = f" seed {self.seed}" if self.seed is not None else ""
        return f"{self.evaluation.output} | {self.evaluation.line()} | {training}{seed}"

    def to_json(self) -> dict[str, Any]:
        return {"evaluation": asdict(self.evaluation),
                "training": asdict(self.training) if self.training else None,
                "seed": self.seed, "problem": self.problem}


def provenance_of(metrics_path: Path) -> Provenance:
    """The provenance of a complete evaluation (its manifest is read by the caller first)."""
    metrics_path = Path(metrics_path)
    evaluation = _record(metrics_path, read_manifest(metrics_path) or {})
    training, problem = _training_record(metrics_path)
    seed = None
    if training is not None:
        manifest = read_manifest(Path(training.output)) or {}
        value = manifest.get("config", {}).get("train.seed")
        seed = value if isinstance(value, int) else None
    return Provenance(evaluation, training, seed, problem)


def _training_record(metrics_path: Path) -> tuple[StageRecord | None, str | None]:
    """The decoder checkpoint's manifest record, or None and why."""
    captions = read_manifest(metrics_path.parent / "captions.json")
    if captions is None:
        return None, f"no captions.json manifest beside {metrics_path.name}"
    stage = next((name for name in DECODER_OUTPUTS if name in captions.get("inputs", {})), None)
    if stage is None:
        return None, "the captions' manifest names no decoder stage"
    if metrics_path.parent.parent.name != "eval":
        return None, f"{metrics_path} is not in an <experiment>/eval/<split>/ folder"
    output = metrics_path.parent.parent.parent / DECODER_OUTPUTS[stage]
    manifest = read_manifest(output)
    if manifest is None:
        return None, f"no manifest of {output}"
    if upstream_token(manifest) != captions["inputs"][stage]:
        return None, (f"{output} was rebuilt after this evaluation (build "
                      f"{upstream_token(manifest)}, evaluated {captions['inputs'][stage]})")
    return _record(output, manifest), None
