"""`evaluate transfer`: score a finished run on another dataset's split (nocaps val with a
COCO-trained run), overall and per `eval.subsets` entry (nocaps' domains).

The model is the finished run's (`Captioner.from_run`: its CLIP, FSGR modules, decoder and
decoding settings), fed the images of `eval.split` of *this* config's dataset end to end, the
numeric path `evaluate score` takes through the caches; the references are this config's
(`data.captions_json`, else its Karpathy json). Scoring is `evaluate score`'s: pycocoevalcap,
CHAIR when `data.instances_json` is set (else reported as not computed), each subset scored
alone (`evaluate.subsets`). Writes, under `runs/<dataset>/eval/<split>/`:

    captions.json   COCO results [{"image_id", "caption"}]
    per_image.json  caption, references, per-image scores, subsets
    metrics.json    as `evaluate score`'s, plus "model_run" (the run that captioned)

with a manifest whose inputs are the run's checkpoint, the Karpathy json, the references and
the subset files: an unchanged evaluation is skipped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from evaluate.caption_checks import caption_stats, check_annotation_files, degeneracy_warnings
from evaluate.captioner import Captioner
from evaluate.chair import ImageChair, chair_scores, ground_truth_objects, metric_names
from evaluate.chair_vocabulary import vocabulary_for
from evaluate.coco_metrics import CaptionScorer
from evaluate.references import reference_captions
from evaluate.score import CLIPSCORE_NOTES, clip_score_metrics, score_subsets, split_of, \
    summary_lines
from evaluate.subsets import load_subsets
from shared.atomic_files import write_json_atomic
from shared.config import Config, require_paths
from shared.manifest import StageSpec
from shared.stage_runner import StageResult, StageRun, run_stage
from shared.stages import SCORE_KEYS, clipscore_dependencies, decoder_stage, eval_dir

TRANSFER_KEYS = ["eval.split", *SCORE_KEYS, "eval.subsets"]


def transfer_stage(config: Config, model: Config, model_dir: Path) -> StageSpec:
    """The transfer evaluation's output and identity (config keys, input files)."""
    checkpoint = decoder_stage(model).output
    if not checkpoint.is_absolute():
        checkpoint = model_dir / checkpoint
    inputs = [checkpoint, Path(config.data.karpathy_json),
              *(Path(p) for p in config.data.captions_json),
              *(Path(p) for p in config.data.instances_json),
              *(Path(p) for p in config.eval.subsets.values())]
    clip_keys, clip_inputs, _ = clipscore_dependencies(config)  # "run": refused in the build
    return StageSpec("evaluate.transfer", eval_dir(config) / "metrics.json",
                     [*TRANSFER_KEYS, *clip_keys], [*inputs, *clip_inputs],
                     command="python -m evaluate transfer")


def score_transfer(config: Config, model_run: str | Path, force: bool = False,
                   batch_size: int = 32) -> StageResult:
    """Caption `eval.split` of `config`'s dataset with the run in `model_run` and score it
    (skipped when up to date); the lines to print include a table."""
    require_paths(config, "data.karpathy_json", "data.image_root", "eval.subsets")
    if config.eval.clipscore and config.eval.clipscore_clip == "run":
        raise ValueError('eval.clipscore_clip = "run" scores with the CLIP cache of a run, '
                         'which a transfer evaluation has none of: use "reference"')
    captioner = Captioner.from_run(model_run)
    spec = transfer_stage(config, captioner.config, captioner.working_dir)

    def build(run: StageRun) -> dict[str, Any]:
        checked = check_annotation_files(config)
        records = split_of(config)
        subsets = load_subsets(config, [r.image_id for r in records])
        by_path = {r.path.resolve(): r for r in records}
        captions: dict[int, str] = {}
        unreadable: list[str] = []
        for captioned in captioner.iter_captions(list(by_path), batch_size=batch_size):
            if captioned.error is not None:
                unreadable.append(f"{captioned.source}: {captioned.error}")
            else:
                captions[by_path[Path(captioned.source)].image_id] = captioned.text or ""
        if not captions:
            raise RuntimeError(f"no image of split '{config.eval.split}' could be read "
                               f"(first: {unreadable[0] if unreadable else '-'})")
        scored = [r for r in records if r.image_id in captions]
        references = reference_captions(scored, config.data.captions_json)
        scorer = CaptionScorer(captions, references, spice=config.eval.spice)  # subsets too
        scores = scorer.score()
        corpus, notes = dict(scores.corpus), list(scores.notes)
        if unreadable:
            notes.append(f"{len(unreadable)} images could not be read (first: {unreadable[0]})")
        not_computed: dict[str, str] = {}
        if "SPICE" not in corpus:
            not_computed["SPICE"] = scores.notes[-1] if scores.notes else "SPICE skipped"
        per_image: dict[int, dict[str, Any]] = {
            r.image_id: {"image_id": r.image_id, "file": str(r.path),
                         "caption": captions[r.image_id], "references": references[r.image_id],
                         "scores": scores.per_image[r.image_id]} for r in scored}
        chair_images: dict[int, ImageChair] | None = None
        if config.data.instances_json:
            vocab = vocabulary_for(checked.categories(), config.eval.chair_vocabulary)
            truth = ground_truth_objects(checked.instances, references, vocab)
            chair, chair_images = chair_scores(captions, truth, vocab)
            corpus.update({name: chair[name] for name in metric_names(vocab.name)})
        else:
            notes.append("CHAIR not computed: the dataset has no instance annotations "
                         "(data.instances_json is empty)")
            for name in metric_names(config.eval.chair_vocabulary):
                not_computed[name] = "no instance annotations (data.instances_json is empty)"
        if config.eval.clipscore:
            ids = sorted(captions)
            corpus.update(clip_score_metrics(config, ids, {r.image_id: r.path for r in scored},
                                             captions, references, per_image,
                                             progress=True))
            notes.append(CLIPSCORE_NOTES[config.eval.clipscore_clip])
        model = captioner.config
        metrics: dict[str, Any] = {
            "split": config.eval.split, "images": len(captions), "metrics": corpus,
            "not_computed": not_computed, "notes": notes,
            "warnings": degeneracy_warnings(caption_stats(captions)),
            "caption_stats": caption_stats(captions),
            "decoding": {"beam_size": model.eval.beam_size, "max_length": model.eval.max_length},
            "model_run": str(model_run), "model_dataset": model.data.name}
        score_subsets(config, subsets, scorer, chair_images, per_image, metrics)
        scorer.close()
        folder = eval_dir(config)
        write_json_atomic(folder / "captions.json", [{"image_id": i, "caption": captions[i]}
                                                     for i in sorted(captions)])
        write_json_atomic(folder / "per_image.json", list(per_image.values()))
        write_json_atomic(run.spec.output, metrics)
        run.say(f"{len(captions)} images of '{config.eval.split}' captioned by {model_run} "
                f"({model.data.name})")
        run.lines += summary_lines(config, metrics)
        return {"metrics": corpus, "model_run": str(model_run)}

    result = run_stage(spec, config, build, force=force)
    if not result.ran:
        result.lines += summary_lines(config, json.loads(spec.output.read_text()))
    return result
