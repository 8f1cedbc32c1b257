"""`evaluate report`: gather the scored split's outputs into `evaluate.report.write_report`.

Reads `eval/<split>/per_image.json` + `metrics.json` (written by `evaluate score`), for FSGR
runs the per-patch codebook concepts of `features/fsgr`, the concept words and the codebook
usage `extract fit` recorded (`fsgr/codebook_usage.json`), and the training curve
`train/curves.png`; writes `eval/<split>/report.html`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from evaluate.report import CodebookUsage, Highlight, ReportImage, write_report
from evaluate.signature import signature_line
from extract.concepts import ConceptCodebook
from extract.fsgr_fit import USAGE_FILE
from shared.config import Config
from shared.feature_store import FeatureStore
from shared.manifest import read_manifest, require_current
from shared.stages import (concepts_stage, encode_stage, eval_dir, eval_stage, fit_stage,
                           fsgr_dir, train_dir)


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
    curves = train_dir(config) / "curves.png"
    decoding = metrics.get("decoding", {})
    config_lines = [f"dataset {config.data.name}, split {metrics['split']}, "
                    f"{metrics['images']} images",
                    f"decoder input {config.decoder.visual_input}, memory self="
                    f"{config.memory.self} cross={config.memory.cross}",
                    f"beam {decoding.get('beam_size')}, max length {decoding.get('max_length')}",
                    *([f"signature {signature_line(metrics)}"] if signature_line(metrics) else []),
                    *metrics.get("notes", [])]
    return write_report(folder / "report.html",
                        title=f"{config.data.name} / {metrics['split']}: captions and metrics",
                        images=images, metrics=metrics["metrics"], config_lines=config_lines,
                        curves_png=curves if curves.is_file() else None, concept_words=words,
                        codebook_usage=usage)


def codebook_usage(config: Config) -> CodebookUsage | None:
    """The per-concept usage `extract fit` recorded for the current `fsgr.pt` (argmax over the
    val images' patches at the best epoch); None when absent or from another fit."""
    path = fsgr_dir(config) / USAGE_FILE
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
