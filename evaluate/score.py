"""`evaluate score`: beam-search captions of a split from the cache, then the field's metrics.

Two manifest-checked halves, so a failure while scoring never loses the decoded captions:

    runs/<dataset>/eval/<split>/captions.json    COCO results format [{"image_id", "caption"}]
    runs/<dataset>/eval/<split>/metrics.json     corpus metrics, checkpoint, decoding, notes
    runs/<dataset>/eval/<split>/per_image.json   caption, references, per-image scores, CHAIR
    runs/<dataset>/eval/<split>/hallucination.json  CHAIR per category, training co-occurrence

With `eval.subsets`, `metrics.json["subsets"]` holds each named subset's metrics computed on it
alone (`evaluate.subsets`) and every `per_image.json` entry the names of its subsets.

Before anything is computed the annotation files are checked (`evaluate.caption_checks`; the
instances files' content is kept for CHAIR). `metrics.json` also states the memory of the
evaluated checkpoint (`"memory": {"self": .., "prototypes": N, ...}`, read from its state) and
`warnings`: degenerate captions, a PMA checkpoint with 0 prototypes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evaluate.caption_checks import (CheckedAnnotations, caption_stats, check_annotation_files,
                                     checkpoint_memory, degeneracy_warnings, memory_warnings)
from evaluate.chair import ImageChair, chair_scores, ground_truth_objects, metric_names
from evaluate.chair_vocabulary import vocabulary_for
from evaluate.checkpoint import load_trained_decoder
from evaluate.clip_score import NAMES, clip_scores, reference_clip_scores
from evaluate.coco_metrics import CaptionScorer
from evaluate.decode_split import decode_records
from evaluate.hallucination import (hallucination_analysis, training_cooccurrence,
                                    write_hallucination)
from evaluate.metrics_table import markdown_table
from evaluate.references import reference_captions
from evaluate.signature import result_signature, signature_line
from evaluate.subsets import load_subsets, memberships, subset_scores
from shared.checkpoint_files import load_checkpoint
from shared.clip_model import create_clip
from shared.config import Config, require_paths
from shared.devices import resolve_device
from shared.feature_store import FeatureStore
from shared.karpathy import ImageRecord, load_karpathy, split_records
from shared.atomic_files import write_json_atomic
from shared.manifest import decide, read_manifest, require_current
from shared.stage_runner import StageResult, StageRun, run_stage
from shared.stages import captions_stage, clip_stage, decoder_stage, eval_dir, eval_stage


def split_of(config: Config, dataset: list[ImageRecord] | None = None) -> list[ImageRecord]:
    """The records of `eval.split` (an error when the split is empty)."""
    if dataset is None:
        dataset = load_karpathy(config.data.karpathy_json, config.data.image_root)
    records = split_records(dataset, config.eval.split)
    if not records:
        raise ValueError(f"{config.data.karpathy_json} has no images in split "
                         f"'{config.eval.split}' (eval.split)")
    return records


def write_captions(config: Config, force: bool = False, progress: bool = True,
                   dataset: list[ImageRecord] | None = None) -> StageResult:
    """Decode `eval.split` of `dataset` (default: the Karpathy json) into captions.json, or
    skip it when up to date."""
    def build(run: StageRun) -> dict[str, Any]:
        device = resolve_device(config.run.device)
        trained = load_trained_decoder(config, device)
        started = time.perf_counter()
        captions = decode_records(config, trained, split_of(config, dataset), device, progress)
        if not captions:
            raise RuntimeError(f"no image of split '{config.eval.split}' is readable in the "
                               "cache")
        seconds = time.perf_counter() - started
        write_json_atomic(run.spec.output, [{"image_id": i, "caption": captions[i]}
                                            for i in sorted(captions)])
        run.say(f"{len(captions)} images of '{config.eval.split}' in {seconds:.1f}s "
                f"({len(captions) / max(seconds, 1e-9):.1f} img/s), beam "
                f"{config.eval.beam_size} -> {run.spec.output}")
        return {"images": len(captions), "checkpoint_epoch": trained.epoch + 1,
                "checkpoint_val_cider": trained.val_cider, "seconds": seconds}

    return run_stage(captions_stage(config), config, build, force=force)


def read_captions(path) -> dict[int, str]:  # noqa: ANN001
    """image id -> caption of a COCO results json."""
    try:
        return {int(e["image_id"]): str(e["caption"]) for e in json.loads(path.read_text())}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: not a COCO results json ({err})") from None


def score(config: Config, force: bool = False, progress: bool = True) -> StageResult:
    """Decode (if needed) and score `eval.split`; the lines to print include a table.
    When there is anything to compute, the annotation files are checked before decoding; the
    subset files (`eval.subsets`) always are."""
    require_paths(config, "eval.subsets")
    spec = eval_stage(config)
    try:
        to_compute = not decide(spec, config, force=force).up_to_date
    except (FileNotFoundError, RuntimeError):  # an input is missing or stale: the checks say
        to_compute = True                      # which, with the fix, if it is ours
    checked = check_annotation_files(config) if to_compute else None
    dataset = load_karpathy(config.data.karpathy_json, config.data.image_root)
    subsets = load_subsets(config, [r.image_id for r in split_of(config, dataset)])
    captioned = write_captions(config, force=force, progress=progress, dataset=dataset)
    captions = read_captions(captioned.output)
    result = run_stage(spec, config, lambda run: _score(run, dataset, captions, subsets, checked,
                                                        progress), force=force)
    if not result.ran:
        result.lines += summary_lines(config, json.loads(spec.output.read_text()))
    result.lines[:0] = captioned.lines
    return result


def _score(run: StageRun, dataset: list[ImageRecord], captions: dict[int, str],
           subsets: dict[str, frozenset[int]], checked: CheckedAnnotations | None,
           progress: bool = False) -> dict[str, Any]:
    """The work of `score` once it is known there is some; returns the manifest summary."""
    config = run.config
    checked = checked if checked is not None else check_annotation_files(config)
    records = {r.image_id: r for r in split_of(config, dataset) if r.image_id in captions}
    train_records = split_records(dataset, "train")  # restval included
    references = reference_captions(list(records.values()), config.data.captions_json)
    scorer = CaptionScorer(captions, references, spice=config.eval.spice)  # subsets reuse it
    scores = scorer.score()
    corpus, notes = dict(scores.corpus), list(scores.notes)
    not_computed: dict[str, str] = {}
    if "SPICE" not in corpus:
        not_computed["SPICE"] = scores.notes[-1] if scores.notes else "SPICE skipped"
    per_image: dict[int, dict[str, Any]] = {
        i: {"image_id": i, "file": str(records[i].path), "caption": captions[i],
            "references": references[i], "scores": scores.per_image[i]} for i in sorted(captions)}

    chair_images: dict[int, ImageChair] | None = None
    if config.data.instances_json:
        vocab = vocabulary_for(checked.categories(), config.eval.chair_vocabulary)
        truth = ground_truth_objects(checked.instances, references, vocab)  # path -> content
        chair, chair_images = chair_scores(captions, truth, vocab)
        names = metric_names(vocab.name)
        corpus.update({name: chair[name] for name in names})
        for i, result in chair_images.items():
            per_image[i]["chair"] = result.to_json()
        chair_counts = {k: v for k, v in chair.items() if k not in names}
        hallucination = hallucination_analysis(chair_images, vocab, training_cooccurrence(
            (r.captions for r in train_records), vocab))
    else:
        chair_counts, hallucination = {}, None
        notes.append("CHAIR skipped: data.instances_json is empty")
        for name in metric_names(config.eval.chair_vocabulary):
            not_computed[name] = "data.instances_json is empty (no objects to check against)"

    if config.eval.clipscore:
        ids = sorted(captions)
        corpus.update(clip_score_metrics(config, ids, {i: records[i].path for i in ids},
                                         captions, references, per_image, progress))
        notes.append(CLIPSCORE_NOTES[config.eval.clipscore_clip])

    signature = result_signature(config, len(captions), len(train_records),
                                 chair_computed=bool(config.data.instances_json))
    stats = caption_stats(captions)
    memory = checkpoint_memory(decoder_state(config), config)
    metrics = {"split": config.eval.split, "images": len(captions), "metrics": corpus,
               "not_computed": not_computed,
               "warnings": [*degeneracy_warnings(stats), *memory_warnings(memory)],
               "caption_stats": stats, "memory": memory, "signature": signature.to_json(),
               "chair_counts": chair_counts, "notes": notes,
               "decoding": {"beam_size": config.eval.beam_size,
                            "max_length": config.eval.max_length},
               "checkpoint": (read_manifest(captions_stage(config).output) or {}).get("summary",
                                                                                        {})}
    score_subsets(config, subsets, scorer, chair_images, per_image, metrics)
    scorer.close()
    write_json_atomic(eval_dir(config) / "per_image.json", list(per_image.values()))
    write_hallucination(eval_dir(config), hallucination)  # None: a stale one is removed
    write_json_atomic(run.spec.output, metrics)
    run.lines += summary_lines(config, metrics)
    return {"metrics": corpus}


def score_subsets(config: Config, subsets: dict[str, frozenset[int]], scorer: CaptionScorer,
                  chair: dict[int, ImageChair] | None,
                  per_image: dict[int, dict[str, Any]], metrics: dict[str, Any]) -> None:
    """With `subsets`, add metrics.json's "subsets" (name -> file, images, metrics,
    not_computed, chair_counts: `evaluate.subsets.subset_scores` on the subset's captioned
    images, with the split's `scorer`), a note per subset that lost images without a caption
    (unreadable in the cache) and to each `per_image` entry the names of its subsets."""
    if not subsets:
        return
    entries: dict[str, Any] = {}
    notes, not_computed = metrics["notes"], metrics["not_computed"]
    scores = {i: entry["scores"] for i, entry in per_image.items()}
    for name, ids in subsets.items():
        scored = frozenset(ids & set(scorer.ids))
        if not scored:
            raise RuntimeError(f"subset '{name}': none of its {len(ids)} images has a caption "
                               "(unreadable in the cache)")
        if len(scored) < len(ids):
            notes.append(f"subset {name}: {len(ids) - len(scored)} of its {len(ids)} images "
                         f"have no caption (unreadable in the cache), scored on {len(scored)}")
        values, counts = subset_scores(scored, scorer, chair, config.eval.chair_vocabulary,
                                       scores)
        entries[name] = {"file": config.eval.subsets[name], "images": len(scored),
                         "metrics": values,
                         "not_computed": {k: v for k, v in not_computed.items()
                                          if k not in values},
                         "chair_counts": counts}
    metrics["subsets"] = entries
    for i, entry in per_image.items():
        entry["subsets"] = memberships(subsets, i)


def decoder_state(config: Config) -> dict[str, torch.Tensor]:
    """The state dict of the evaluated checkpoint (memory-mapped: only shapes are read)."""
    return load_checkpoint(decoder_stage(config).output, "decoder checkpoint",
                           "re-run `python -m train --force`", keys=("model",), mmap=True)["model"]


CLIPSCORE_NOTES = {
    "reference": "CLIP-S / RefCLIP-S: Hessel et al.'s code (ViT-B-32, the image files)",
    "run": "CLIP-S_run / RefCLIP-S_run: the run's own CLIP (cached image embeddings); "
           "comparable only between runs with the same CLIP"}


def clip_score_metrics(config: Config, ids: list[int], files: dict[int, Path],
                       captions: dict[int, str], references: dict[int, list[str]],
                       per_image: dict[int, dict[str, Any]], progress: bool = False
                       ) -> dict[str, float]:
    """CLIP-S / RefCLIP-S of `eval.clipscore_clip` (`evaluate.clip_score`), per image into
    `per_image` and their means (`progress`: a bar over the reference CLIP's images)."""
    device = resolve_device(config.run.device)
    texts, refs = [captions[i] for i in ids], [references[i] for i in ids]
    if config.eval.clipscore_clip == "reference":
        result = reference_clip_scores(config.eval.clipscore_pretrained,
                                       [files[i] for i in ids], texts, refs, device,
                                       progress=progress)
    else:
        store_spec = clip_stage(config)
        require_current(store_spec, config, "python -m extract clip")
        with FeatureStore.open(store_spec.output) as store:
            row_of = {int(i): r for r, i in enumerate(store.read("image_ids"))}
            embeds = store.read_rows("image_embed", np.array([row_of[i] for i in ids]))
        bundle = create_clip(config.clip.model, config.clip.pretrained, device)
        result = clip_scores(bundle, embeds, texts, refs, device)
    names = NAMES[config.eval.clipscore_clip]
    for i, clip_s, ref_s in zip(ids, result.clip_s.tolist(), result.ref_clip_s.tolist()):
        per_image[i]["scores"].update({names[0]: clip_s, names[1]: ref_s})
    return result.corpus(names)


def summary_lines(config: Config, metrics: dict[str, Any]) -> list[str]:
    """Notes, the metric table (x 100), the subsets' table and where the outputs are."""
    label = f"{config.train.experiment or config.data.name}/{metrics['split']}"
    return [*metrics.get("warnings", []), *metrics.get("notes", []), "",
            markdown_table([(label, metrics["metrics"])],
                           not_computed=[metrics.get("not_computed", {})]),
            *subset_table_lines(label, metrics.get("subsets") or {}),
            *([f"signature: {signature_line(metrics)}"] if signature_line(metrics) else []), "",
            f"evaluate score: {metrics['images']} images; metrics in "
            f"{eval_dir(config) / 'metrics.json'} (scores x 100)"]


def subset_table_lines(label: str, subsets: dict[str, Any]) -> list[str]:
    """A blank line and one table of the subsets (`<label>:<name> (n images)`, x 100); none
    without subsets."""
    if not subsets:
        return []
    rows = [(f"{label}:{name} ({entry['images']} images)", entry["metrics"])
            for name, entry in subsets.items()]
    return ["", markdown_table(rows, not_computed=[e.get("not_computed", {})
                                                   for e in subsets.values()])]
