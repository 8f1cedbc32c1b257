"""`evaluate report`: gather the scored split's outputs into `evaluate.report.write_report`.

Reads `eval/<split>/per_image.json` + `metrics.json` (written by `evaluate score`), for FSGR
runs the per-patch codebook concepts of `features/fsgr`, the concept words and the codebook
usage `extract fit` recorded (`fsgr/codebook_usage.json`), and the training curves
(`train/curves.png`, `train/scst/curves.png` with SCST); writes `eval/<split>/report.html`.
The page is titled with the experiment
(`train.experiment`, else the dataset's run name `data.name`) and opens with the run's
warnings (`report_warnings`): `metrics.json`'s (degenerate captions, PMA without prototypes),
the metrics not computed, and the `warnings` of the run's stage manifests (extraction,
clustering, training). With CHAIR, the "Hallucinations by category" section comes from
`eval/<split>/hallucination.json` (`hallucination_table`); with `eval.subsets`, the "Subsets"
table from `metrics.json["subsets"]` (`subset_rows`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from evaluate.hallucination import HALLUCINATION_FILE, load_hallucination
from evaluate.report import (CodebookUsage, CoObject, HallucinationRow, HallucinationTable,
                             Highlight, ReportImage, SubsetRow, write_report)
from evaluate.signature import signature_line
from extract.concepts import ConceptCodebook
from shared.config import Config
from shared.feature_store import FeatureStore
from shared.manifest import read_manifest, require_current
from shared.stage_runner import StageRun, run_stage
from shared.stages import (all_stages, codebook_usage_path, concepts_stage, encode_stage,
                           eval_dir, eval_stage, fit_stage, report_stage, train_dir)


def build_report(config: Config, max_images: int = 0) -> Path:
    """Write `eval/<split>/report.html` for the current evaluation; returns its path."""
    require_current(eval_stage(config), config, "python -m evaluate score")
    folder = eval_dir(config)
    metrics = json.loads((folder / "metrics.json").read_text())
    entries = json.loads((folder / "per_image.json").read_text())
    if max_images > 0:
        entries = entries[:max_images]
    grids, words = _concept_grids(config, [e["image_id"] for e in entries])
    usage = codebook_usage(config) if words is not None else None
    images = [_report_image(entry, grids.get(entry["image_id"])) for entry in entries]
    curves = train_dir(config) / ("scst/curves.png" if config.scst.enabled else "curves.png")
    decoding = metrics.get("decoding", {})
    config_lines = [f"dataset {config.data.name}, split {metrics['split']}, "
                    f"{metrics['images']} images",
                    f"CLIP {config.clip.model}, weights {_clip_weights(config)}",
                    f"decoder input {config.decoder.visual_input}, "
                    f"{memory_line(config, metrics.get('memory'))}",
                    f"beam {decoding.get('beam_size')}, max length {decoding.get('max_length')}",
                    *caption_lines(metrics.get("caption_stats")),
                    *([f"signature {signature_line(metrics)}"] if signature_line(metrics) else []),
                    *metrics.get("notes", [])]
    def build(run: StageRun) -> dict[str, Any]:
        write_report(run.spec.output,
                     title=f"{report_title(config)} / {metrics['split']}: captions and metrics",
                     images=images, metrics=metrics["metrics"], config_lines=config_lines,
                     curves_png=curves if curves.is_file() else None, concept_words=words,
                     codebook_usage=usage, warnings=report_warnings(config, metrics),
                     hallucinations=hallucination_table(folder), subsets=subset_rows(metrics))
        return {"images": len(images)}

    return run_stage(report_stage(config), config, build, force=True).output  # always rewritten


def subset_rows(metrics: dict[str, Any]) -> list[SubsetRow]:
    """The report's subset rows from `metrics.json["subsets"]` (none without subsets)."""
    return [SubsetRow(name, str(entry.get("file", "")), int(entry["images"]),
                      dict(entry["metrics"]), dict(entry.get("not_computed") or {}))
            for name, entry in (metrics.get("subsets") or {}).items()]


def hallucination_table(folder: Path) -> HallucinationTable | None:
    """The report's hallucination table from `folder/hallucination.json` (its `hallucinated`
    categories: the most hallucinated); None when there is none (CHAIR not computed)."""
    path = folder / HALLUCINATION_FILE
    if not path.is_file():
        return None
    data = load_hallucination(path)

    def objects(entries: list[dict[str, Any]], count: str) -> list[CoObject]:
        return [CoObject(e["category"], int(e[count]), e.get("p_given")) for e in entries]

    rows = [HallucinationRow(e["category"], int(e["mentions"]), int(e["hallucinated"]),
                             e.get("rate"),
                             objects(e.get("present_when_hallucinated", []), "mentions"),
                             objects(e.get("training_cooccurring", []), "training_images"))
            for e in data["hallucinated"]]
    return HallucinationTable(rows, int(data.get("mentions", 0)),
                              int(data.get("hallucinated_mentions", 0)),
                              int(data.get("training", {}).get("images", 0)),
                              str(data.get("vocabulary", "")))


def _clip_weights(config: Config) -> str:
    """What the CLIP cache was computed with: a hub tag, a file, or "random" (said loudly)."""
    weights = config.clip.pretrained
    return "RANDOM (clip.pretrained = \"random\")" if weights == "random" else weights


def report_title(config: Config) -> str:
    """The experiment's name (`train.experiment`, with its dataset), else the dataset's run
    name (`data.name`)."""
    if config.train.experiment:
        return f"{config.train.experiment} ({config.data.name})"
    return config.data.name


def memory_line(config: Config, memory: dict[str, Any] | None) -> str:
    """The configured memory and the prototypes the evaluated checkpoint holds."""
    line = f"memory self={config.memory.self} cross={config.memory.cross}"
    if not memory:
        return line + " (prototypes in the checkpoint: not recorded, scored by older code)"
    parts = []
    if memory.get("self"):
        per_layer = "/".join(str(n) for n in memory.get("prototypes_per_layer", []))
        parts.append(f"{per_layer or memory.get('prototypes', 0)} self-attention prototypes "
                     f"per layer")
    if memory.get("cross"):
        parts.append(f"{memory.get('cross_prototypes', 0)} feature prototypes")
    return line + (f" ({', '.join(parts)} in the checkpoint)" if parts else "")


def caption_lines(stats: dict[str, Any] | None) -> list[str]:
    """The captions' empty and duplicate shares (`evaluate.caption_checks.caption_stats`)."""
    if not stats:
        return []
    return [f"captions: {stats['empty_share']:.0%} empty, {stats['duplicate_share']:.0%} "
            f"duplicates ({stats['distinct']} distinct of {stats['captions']})"]


def report_warnings(config: Config, metrics: dict[str, Any]) -> list[str]:
    """What the banner lists: `metrics.json`'s warnings, the metrics not computed (with why)
    and the `warnings` of the run's stage manifests."""
    lines = [*metrics.get("warnings", [])]
    lines += [f"not computed: {name} ({why})"
              for name, why in metrics.get("not_computed", {}).items()]
    lines += stage_warnings(config)
    if config.clip.pretrained == "random":
        lines.append('CLIP has random weights (clip.pretrained = "random"): features, concepts '
                     'and captions come from an untrained image encoder')
    return list(dict.fromkeys(lines))


def stage_warnings(config: Config) -> list[str]:
    """`"<stage>: <warning>"` for every `warnings` line in the manifest summaries of the run's
    stages (`shared.stages.all_stages`: extraction, clustering, training, evaluation), upstream
    first."""
    lines: list[str] = []
    for stage in all_stages(config):
        summary = (read_manifest(stage.output) or {}).get("summary") or {}
        lines.extend(f"{stage.name}: {w}" for w in summary.get("warnings", []) or [])
    return lines


def codebook_usage(config: Config) -> CodebookUsage | None:
    """The per-concept usage `extract fit` recorded for the current `fsgr.pt` (argmax over the
    val images' patches at the best epoch); None when absent or from another fit."""
    path = codebook_usage_path(config)
    fit = read_manifest(fit_stage(config).output)
    try:
        usage = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if fit is None or usage.get("fit_identity") != fit.get("identity"):
        return None
    source = (f"{usage.get('split', '?')} images, {usage.get('assignment', 'argmax')} "
              f"assignment, extract fit epoch {usage.get('epoch', '?')}")
    return CodebookUsage(np.asarray(usage["counts"], dtype=np.int64), source)


def _report_image(entry: dict, grid: np.ndarray | None) -> ReportImage:
    chair = entry.get("chair", {})
    return ReportImage(
        image_id=int(entry["image_id"]), file=Path(entry["file"]), caption=entry["caption"],
        references=list(entry["references"]), cider=float(entry["scores"].get("CIDEr", 0.0)),
        hallucinated=[Highlight(int(m["start"]), int(m["end"]), m["category"])
                      for m in chair.get("hallucinated_words", [])],
        mentioned=list(chair.get("mentioned", [])),
        ground_truth=list(chair.get("ground_truth", [])), patch_concepts=grid)


def _concept_grids(config: Config, image_ids: list[int]
                   ) -> tuple[dict[int, np.ndarray], list[str] | None]:
    """image id -> [grid_h, grid_w] concept ids, and the concept words (FSGR runs only)."""
    if config.decoder.visual_input != "fsgr":
        return {}, None
    spec = encode_stage(config)
    require_current(spec, config, "python -m extract encode")
    words = ConceptCodebook.load(concepts_stage(config).output).words
    with FeatureStore.open(spec.output) as store:
        grid = tuple(store.attrs["grid"])
        row_of = {int(i): r for r, i in enumerate(store.read("image_ids"))}
        wanted = [i for i in image_ids if i in row_of]
        index = store.read_rows("codebook_index", [row_of[i] for i in wanted])
    return {i: index[k].reshape(grid) for k, i in enumerate(wanted)}, words
