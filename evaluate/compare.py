"""`evaluate compare VARIANT...`: one table of several evaluations, with seeds and intervals.

A VARIANT is `[LABEL=]RUN[,RUN...]`: a table row, made of one run or of several runs of the
same model trained with different seeds (`CLIP=runs/demo/experiments/clip,runs/demo/
experiments/clip_s1`; a label may be given once). A RUN is a `metrics.json`, an eval folder
holding one (`runs/<ds>/eval/test`) or a run folder (`runs/<ds>`, whose `eval/<split>/
metrics.json` is used). The first variant is the baseline.

* Each metric of a variant is the mean over its runs, `± the sample standard deviation`
  (ddof 1) when it has more than one; a single run prints as it is.
* CIDEr, CHAIRs and CHAIRi (or CHAIRs_extended / CHAIRi_extended) get the difference of each
  variant from the baseline with a paired-bootstrap interval over the test images
  (`evaluate.paired_bootstrap`: `--resamples` resamples of the image ids, `--seed`,
  `--confidence`; per image the variant's values are averaged over its seeds first), from the
  `per_image.json` beside each `metrics.json`; `*` marks an interval that excludes 0. Runs of
  one variant must have scored the same images (refused otherwise); variants that scored
  different images, or a run without per-image results, get no interval, and a line says why.
  A `per_image.json` that does not reproduce its `metrics.json` is refused.
* Under the tables: the signature of every row (`evaluate.signature`), and the provenance of
  every run (`evaluate.run_provenance`: the evaluation's and the training's config hash,
  identity and code version, and the training seed), then any `NOTE_SECTIONS`.
* `Comparison.payload` (written as OUTPUT.json) holds every number: per run, per variant
  mean / std, the differences with their intervals and the bootstrap settings.
* Subsets (`eval.subsets`, `evaluate.subsets`): for every subset all runs scored, a table of
  each run's metrics.json["subsets"][name] (mean ± sd over seeds) and paired-bootstrap
  intervals of the CHAIRs / CHAIRi differences over the subset's images (membership from
  per_image.json, which must agree between the runs; CHAIR per image is exact on a subset).
  CIDEr is not bootstrapped there: per-image CIDEr-D keeps the full split's document
  frequencies. In the payload under "subsets"; nothing changes without subsets.

Only complete evaluations are compared: a `metrics.json` without its manifest
(`metrics.json.manifest.json`, written last by `evaluate score`) is refused. A run configured
with PMA memory whose checkpoint has 0 prototypes (`metrics.json`'s `memory`) is marked † in
the tables, with a line under them saying it is a plain transformer's result.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from evaluate.caption_checks import memoryless
from evaluate.hallucination import rate_change_section
from evaluate.metrics_table import (BY_NAME, FLAG, SIGNIFICANT, Interval, difference_latex,
                                    difference_markdown, latex_table, markdown_table)
from evaluate.paired_bootstrap import (METRICS, Difference, PerImage, check_settings,
                                       corpus_value, paired_difference, pool, read_per_image,
                                       restrict)
from evaluate.run_provenance import Provenance, provenance_of
from evaluate.signature import signature_line
from shared.manifest import manifest_path, read_manifest

PER_IMAGE = "per_image.json"
PROVENANCE = "Provenance (evaluation | training manifests)"


@dataclass(frozen=True)
class Run:
    """One evaluation: its metrics.json, payload and provenance."""

    path: Path
    payload: dict[str, Any]
    provenance: Provenance

    @property
    def metrics(self) -> dict[str, float]:
        return dict(self.payload["metrics"])

    @property
    def seed(self) -> int | None:
        return self.provenance.seed


@dataclass(frozen=True)
class Variant:
    """One table row: a label and its runs (one per seed)."""

    label: str
    runs: list[Run]

    def run_name(self, index: int) -> str:
        """The label alone for a one-run variant, else `LABEL seed S` (or `LABEL run k`)."""
        if len(self.runs) == 1:
            return self.label
        seed = self.runs[index].seed
        return f"{self.label} seed {seed}" if seed is not None else f"{self.label} run {index + 1}"


@dataclass(frozen=True)
class NoteSection:
    """A titled list of lines printed under the tables (and kept in the JSON)."""

    title: str
    lines: list[str]


NoteMaker = Callable[[list[Variant]], NoteSection | None]


def hallucination_changes(variants: list[Variant]) -> NoteSection | None:
    """Categories whose hallucination rate changes most vs the baseline (seeds pooled)."""
    found = rate_change_section([(v.label, [run.path for run in v.runs]) for v in variants])
    return NoteSection(*found) if found else None


NOTE_SECTIONS: tuple[NoteMaker, ...] = (hallucination_changes,)
"""Further sections under the provenance, in this order, each made from the compared variants
(labels, runs, their metrics.json paths and so the per_image.json beside them); e.g. the
categories whose hallucination rate changes most between variants."""


@dataclass(frozen=True)
class BootstrapSettings:
    """`--resamples`, `--seed`, `--confidence` of the paired bootstrap."""

    resamples: int = 1000
    seed: int = 0
    confidence: float = 0.95


@dataclass
class Intervals:
    """Differences from the baseline per variant label (metric -> Difference), the number of
    images, and why some or all could not be computed."""

    differences: dict[str, dict[str, Difference]] = field(default_factory=dict)
    images: int | None = None
    metrics: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Comparison:
    """The markdown and LaTeX texts and the JSON payload of a comparison."""

    markdown: str
    latex: str
    payload: dict[str, Any]


# ----------------------------------------------------------------------------- arguments


def find_metrics(path_text: str, split: str) -> Path:
    """The metrics.json of one RUN (a file, an eval folder or a run folder)."""
    path = Path(path_text)
    candidates = [path, path / "metrics.json", path / "eval" / split / "metrics.json"]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise FileNotFoundError(f"no metrics.json for '{path_text}' (looked at "
                                f"{', '.join(str(p) for p in candidates[1:])}); "
                                "run `python -m evaluate score` for it first")
    return found


def default_label(found: Path) -> str:
    """`<run>/<split>` for `<run>/eval/<split>/metrics.json`, else the folder."""
    parts = found.parent.parts
    return "/".join(parts[-3:-2] + parts[-1:]) if len(parts) >= 3 and parts[-2] == "eval" \
        else str(found.parent)


def parse_variants(arguments: list[str], split: str) -> list[tuple[str, list[Path]]]:
    """(label, metrics.json paths) of every VARIANT argument, in order."""
    variants: list[tuple[str, list[Path]]] = []
    for argument in arguments:
        label, _, runs_text = argument.rpartition("=") if "=" in argument else \
            ("", "", argument)
        texts = runs_text.split(",")
        if not all(texts):
            raise ValueError(f"'{argument}': an empty run in the list (LABEL=RUN,RUN,...)")
        if len(texts) > 1 and not label:
            raise ValueError(f"'{argument}': several runs make one row: name it, "
                             f"LABEL={runs_text}")
        paths = [find_metrics(text, split) for text in texts]
        resolved = [p.resolve() for p in paths]
        if len(set(resolved)) < len(resolved):
            raise ValueError(f"'{argument}' lists the same run twice")
        variants.append((label or default_label(paths[0]), paths))
    labels = [label for label, _ in variants]
    twice = next((label for label in labels if labels.count(label) > 1), None)
    if twice is not None:
        raise ValueError(f"label '{twice}' is given twice: list all its runs in one argument, "
                         f"{twice}=RUN1,RUN2,...")
    return variants


def load_run(path: Path) -> Run:
    """A complete evaluation (refused without its manifest) and its provenance."""
    if read_manifest(path) is None:
        raise ValueError(f"{path} has no readable manifest ({manifest_path(path).name}), so "
                         "it is no complete evaluation: make it with `python -m evaluate "
                         "score` (the run's --config/--set)")
    try:
        payload = json.loads(path.read_text())
        dict(payload["metrics"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: not an evaluation metrics file ({err})") from None
    return Run(path, payload, provenance_of(path))


def load_variants(arguments: list[str], split: str) -> list[Variant]:
    """Every VARIANT argument with its loaded runs; a seed repeated within a variant is
    refused."""
    variants = []
    for label, paths in parse_variants(arguments, split):
        runs = [load_run(path) for path in paths]
        seeds = [run.seed for run in runs if run.seed is not None]
        repeated = next((s for s in seeds if seeds.count(s) > 1), None)
        if repeated is not None:
            raise ValueError(f"the runs of {label} include training seed {repeated} twice: "
                             "a variant's runs must be trained with different train.seed")
        variants.append(Variant(label, runs))
    return variants


# ----------------------------------------------------------------------------- seeds


Summary = tuple[dict[str, float], dict[str, float], dict[str, str]]
"""(mean, sample standard deviation (only with > 1 run), not computed: metric -> why)."""


def seed_summary(variant: Variant) -> Summary:
    """The `Summary` of every metric over the variant's runs; a metric missing from any run
    is not computed."""
    return summarize([run.metrics for run in variant.runs],
                     [run.payload.get("not_computed") or {} for run in variant.runs])


def summarize(metric_sets: list[dict[str, float]], not_computed_sets: list[dict[str, str]]
              ) -> Summary:
    """The `Summary` of one row's runs, given each run's metrics and not-computed reasons."""
    names = set().union(*metric_sets)
    mean: dict[str, float] = {}
    std: dict[str, float] = {}
    not_computed: dict[str, str] = {}
    for reasons in not_computed_sets:
        not_computed.update(reasons)
    for name in sorted(names):
        values = [m[name] for m in metric_sets if name in m]
        if len(values) < len(metric_sets):
            not_computed.setdefault(name, "not computed in every run of this row")
            continue
        mean[name] = statistics.fmean(values)
        if len(values) > 1:
            std[name] = statistics.stdev(values)
    return mean, std, not_computed


# ----------------------------------------------------------------------------- intervals


def chair_names(variants: list[Variant]) -> dict[str, str]:
    """Bootstrapped metric -> its name in metrics.json: CHAIRs/CHAIRi, or the _extended pair
    when the baseline was scored with the extended vocabulary."""
    metrics = variants[0].runs[0].metrics
    suffix = "_extended" if "CHAIRs" not in metrics and "CHAIRs_extended" in metrics else ""
    return {"CIDEr": "CIDEr", "CHAIRs": f"CHAIRs{suffix}", "CHAIRi": f"CHAIRi{suffix}"}


def checked_per_image(run: Run, names: dict[str, str]) -> PerImage | None:
    """The run's per-image values (None without per_image.json), refused when they do not
    reproduce its metrics.json."""
    path = run.path.parent / PER_IMAGE
    if not path.is_file():
        return None
    values = read_per_image(path)
    require_reproduced(path, run, values, names.items(), run.metrics)
    return values


def require_reproduced(path: Path, run: Run, values: PerImage,
                       metrics: Iterable[tuple[str, str]], recorded: dict[str, float],
                       scope: str = "") -> None:
    """Refuse (one line) per-image values whose corpus `metrics` ((bootstrap metric, metric
    name) pairs) differ from the `recorded` ones of `run` (`scope`: e.g. " on subset x")."""
    for metric, name in metrics:
        value = recorded.get(name)
        if value is None or not values.has(metric):
            continue
        recomputed = corpus_value(metric, values)
        if not _reproduces(recomputed, value):
            raise ValueError(f"{path} does not reproduce {run.path.name}'s {name}{scope} "
                             f"({recomputed!r} != {value!r}): re-run `python -m evaluate "
                             "score --force` for it")


def _reproduces(recomputed: float, recorded: float) -> bool:
    """Whether a value recomputed from per_image.json is metrics.json's (up to rounding)."""
    return abs(recomputed - recorded) <= 1e-9 * max(1.0, abs(recorded))


def pooled_values(variants: list[Variant], names: dict[str, str]
                  ) -> tuple[dict[str, PerImage], list[str]]:
    """label -> per-image values pooled over the variant's seeds (refused when its runs scored
    different images), and a line for each variant that has none."""
    pooled: dict[str, PerImage] = {}
    notes = []
    for variant in variants:
        per_run = {variant.run_name(i): checked_per_image(run, names)
                   for i, run in enumerate(variant.runs)}
        missing = [variant.runs[i].path for i, v in enumerate(per_run.values()) if v is None]
        if missing:
            notes.append(f"no interval for {variant.label}: {missing[0].parent / PER_IMAGE} "
                         "does not exist")
            continue
        pooled[variant.label] = pool({k: v for k, v in per_run.items() if v is not None},
                                     variant.label)
    return pooled, notes


def bootstrap_intervals(variants: list[Variant], settings: BootstrapSettings) -> Intervals:
    """Paired-bootstrap differences of every variant from the first (see the module
    docstring), with a line for whatever could not be computed."""
    names = chair_names(variants)
    pooled, notes = pooled_values(variants, names)
    result = Intervals(notes=notes)
    if len(variants) < 2:
        return result
    return differences_from_baseline(variants, pooled, METRICS, names, settings, result)


def differences_from_baseline(variants: list[Variant], values: dict[str, PerImage],
                              candidates: Iterable[str], names: dict[str, str],
                              settings: BootstrapSettings, result: Intervals,
                              subset: str = "") -> Intervals:
    """Fill `result` with the paired-bootstrap differences of `candidates` (bootstrap metric
    names) of every variant in `values` (label -> per-image values) from the first variant's,
    and a note for each that scored other images (`subset`: the subset they are restricted
    to, named in the notes)."""
    scope = f" on subset {subset}" if subset else ""
    baseline = variants[0].label
    if baseline not in values:
        return result
    base = values[baseline]
    result.images = len(base.image_ids)
    if result.images < 2:
        result.notes.append(f"no intervals{scope}: a bootstrap over images needs at least 2 "
                            "images")
        return result
    metrics = [m for m in candidates if base.has(m)]
    result.metrics = [names[m] for m in metrics]
    for variant in variants[1:]:
        other = values.get(variant.label)
        if other is None:
            continue
        if not _same_ids(other, base):
            common = len(np.intersect1d(other.image_ids, base.image_ids))
            what = f"its {subset} images are not {baseline}'s" if subset else \
                f"it scored other images than {baseline}"
            result.notes.append(f"no interval for {variant.label}{scope}: {what} "
                                f"({len(other.image_ids)} vs {result.images}, {common} in "
                                "common)")
            continue
        result.differences[variant.label] = {
            names[m]: paired_difference(m, base, other, settings.resamples, settings.seed,
                                        settings.confidence)
            for m in metrics if other.has(m)}
    return result


def _same_ids(a: PerImage, b: PerImage) -> bool:
    return a.image_ids.shape == b.image_ids.shape and bool((a.image_ids == b.image_ids).all())


# ----------------------------------------------------------------------------- notes


def signature_notes(variants: list[Variant]) -> list[str]:
    """One line per row (one per run when its runs' signatures differ): how the result was
    produced."""
    missing = "no signature (scored before signatures existed)"
    lines = []
    for variant in variants:
        signatures = [signature_line(run.payload) or missing for run in variant.runs]
        if len(set(signatures)) == 1:
            lines.append(f"{variant.label}: {signatures[0]}")
        else:
            lines += [f"{variant.run_name(i)}: {s}" for i, s in enumerate(signatures)]
    return lines


def memory_notes(variants: list[Variant]) -> list[str]:
    """One line per run whose PMA memory is empty (its row is marked `FLAG`)."""
    return [f"{FLAG} {variant.run_name(i)}: memory.self is on but its checkpoint has 0 memory "
            "prototypes (saved before the first refresh): a plain transformer's result, not "
            "PMA's"
            for variant in variants for i, run in enumerate(variant.runs)
            if memoryless(run.payload.get("memory") or {})]


def provenance_notes(variants: list[Variant]) -> list[str]:
    """One line per run: where its number comes from (`Provenance.line`)."""
    return [f"{variant.run_name(i)}: {run.provenance.line()}"
            for variant in variants for i, run in enumerate(variant.runs)]


def interval_heading(intervals: Intervals, baseline: str, settings: BootstrapSettings,
                     subset: str = "") -> str:
    """The line above the difference table (of the images of `subset`, when given)."""
    scope = f" on subset {subset}" if subset else ""
    images = f"its {intervals.images}" if subset else f"the {intervals.images}"
    return (f"Difference from {baseline}{scope}, paired bootstrap over {images} test "
            f"images (seeds pooled per image): {settings.resamples} resamples, seed "
            f"{settings.seed}, {100 * settings.confidence:g}% BCa interval; {SIGNIFICANT} = "
            "the interval excludes 0")


def interval_definitions(intervals: Intervals) -> list[str]:
    """How the bootstrapped metrics are computed on a resample."""
    lines = []
    for name in intervals.metrics:
        text = BY_NAME[name].short
        if name == "CIDEr":
            lines.append(f"Δ{text}: mean of the per-image CIDEr-D, whose document frequencies "
                         "stay those of the full test set's references (pycocoevalcap's "
                         "per-image CIDEr-D), on every resample")
        elif name.startswith("CHAIRs"):
            lines.append(f"Δ{text}: share of the resampled captions with a hallucinated object "
                         "(lower is better, as for CHi)")
        elif name.startswith("CHAIRi"):
            lines.append(f"Δ{text}: hallucinated / all object mentions of the resampled "
                         "captions (repeats counted), a ratio of sums recomputed on every "
                         "resample and over the seeds' summed counts")
    return lines + percentile_notes(intervals)


def percentile_notes(intervals: Intervals) -> list[str]:
    """One line per difference whose interval is the percentile one (BCa undefined)."""
    return [f"{label} Δ{BY_NAME[name].short}: percentile interval (BCa is undefined "
            "when the difference is the same on every resample)"
            for label, differences in intervals.differences.items()
            for name, difference in differences.items() if difference.method != "BCa"]


# ----------------------------------------------------------------------------- subsets


SUBSET_METRICS = ("CHAIRs", "CHAIRi")
"""Bootstrapped on a subset: exact there from the per-image CHAIR counts."""

SUBSET_CIDER_NOTE = ("ΔC is not bootstrapped on a subset: the per-image CIDEr-D of "
                     "per_image.json uses the full split's document frequencies, while the "
                     "subset's C above uses the subset's own")


@dataclass(frozen=True)
class SubsetComparison:
    """One subset's table, differences and notes as markdown, LaTeX and JSON."""

    markdown: str
    latex: str
    payload: dict[str, Any]


def subset_names(variants: list[Variant]) -> tuple[list[str], list[str]]:
    """The subsets every run of every variant scored (metrics.json's "subsets", in the
    baseline's order), and a line for each subset some runs lack."""
    per_run = [list(run.payload.get("subsets") or {}) for v in variants for run in v.runs]
    common = [name for name in per_run[0] if all(name in names for names in per_run)]
    partial = dict.fromkeys(name for names in per_run for name in names if name not in common)
    return common, [f"subset {name}: not scored in every compared run, so not compared"
                    for name in partial]


def subset_summary(variant: Variant, name: str) -> Summary:
    """The `Summary` of subset `name`'s metrics over the variant's runs."""
    entries = [run.payload["subsets"][name] for run in variant.runs]
    return summarize([dict(e["metrics"]) for e in entries],
                     [e.get("not_computed") or {} for e in entries])


def checked_subset(run: Run, name: str, values: PerImage, ids: np.ndarray,
                   names: dict[str, str]) -> PerImage:
    """The run's per-image values of subset `name`'s images `ids`, refused when they do not
    reproduce its metrics.json's image count and CHAIR on the subset."""
    path = run.path.parent / PER_IMAGE
    entry = run.payload["subsets"][name]
    subset = restrict(values, ids)
    recorded_images = entry.get("images")
    if recorded_images != len(ids):
        raise ValueError(f"{path} puts {len(ids)} images in subset {name}, {run.path.name} "
                         f"says {recorded_images}: re-run `python -m evaluate score --force` "
                         "for it")
    require_reproduced(path, run, subset, ((m, names[m]) for m in SUBSET_METRICS),
                       entry["metrics"], f" on subset {name}")
    return subset


def subset_values(variant: Variant, name: str, per_run: dict[Path, PerImage | None],
                  names: dict[str, str]) -> tuple[PerImage | None, str]:
    """The variant's per-image values on subset `name` (seeds pooled), or None and why."""
    runs: dict[str, PerImage] = {}
    for i, run in enumerate(variant.runs):
        values = per_run[run.path]
        path = run.path.parent / PER_IMAGE
        if values is None:
            return None, f"{path} does not exist"
        ids = values.subset_ids(name)
        if ids is None:
            return None, f"{path} records no membership of subset {name}"
        runs[variant.run_name(i)] = checked_subset(run, name, values, ids, names)
    first = next(iter(runs.values()))
    if not all(_same_ids(values, first) for values in runs.values()):
        return None, f"its runs put different images in subset {name}"
    return pool(runs, variant.label), ""


def subset_intervals(variants: list[Variant], name: str, settings: BootstrapSettings,
                     per_run: dict[Path, PerImage | None], names: dict[str, str]) -> Intervals:
    """Paired-bootstrap differences of CHAIRs / CHAIRi from the baseline over the images of
    subset `name` (by per_image.json's membership), with a line for what was not computed."""
    result = Intervals()
    values: dict[str, PerImage] = {}
    for variant in variants:
        found, why = subset_values(variant, name, per_run, names)
        if found is None:
            result.notes.append(f"no interval for {variant.label} on subset {name}: {why}")
        else:
            values[variant.label] = found
    return differences_from_baseline(variants, values, SUBSET_METRICS, names, settings, result,
                                     subset=name)


def subset_comparisons(variants: list[Variant], settings: BootstrapSettings
                       ) -> tuple[dict[str, SubsetComparison], list[str]]:
    """name -> comparison of every subset all runs scored, and a line for each subset only
    some runs scored."""
    subsets, partial = subset_names(variants)
    if not subsets:
        return {}, partial
    names = chair_names(variants)
    per_run = {run.path: checked_per_image(run, names)
               for v in variants for run in v.runs} if len(variants) > 1 else {}
    return ({name: compare_subset(variants, name, settings, per_run, names)
             for name in subsets}, partial)


def compare_subset(variants: list[Variant], name: str, settings: BootstrapSettings,
                   per_run: dict[Path, PerImage | None], names: dict[str, str]
                   ) -> SubsetComparison:
    """Subset `name`'s table (each run's metrics.json, mean ± sd over seeds), its CHAIR
    differences from the baseline over its images, and their notes."""
    summaries = [subset_summary(v, name) for v in variants]
    intervals = subset_intervals(variants, name, settings, per_run, names) \
        if len(variants) > 1 else Intervals()
    title = subset_title(variants, name)
    heading = interval_heading(intervals, variants[0].label, settings, subset=name) \
        if intervals.differences else None
    notes = subset_notes(intervals) if len(variants) > 1 else []
    markdown, latex = _tables(variants, summaries, intervals, heading)
    markdown.insert(0, f"**{title}**")
    latex[0] = f"% {title}\n" + latex[0]
    if notes:
        markdown.append("\n".join(f"- {n}" for n in notes))
        latex.append("\n".join(f"% {n}" for n in notes))
    return SubsetComparison("\n\n".join(markdown), "\n\n".join(latex),
                            _subset_payload(variants, name, summaries, intervals, settings,
                                            notes))


def subset_title(variants: list[Variant], name: str) -> str:
    """The line above a subset's table: its name, images and how its metrics were made."""
    counts = sorted({run.payload["subsets"][name]["images"] for v in variants for run in v.runs})
    images = str(counts[0]) if len(counts) == 1 else f"{counts[0]} to {counts[-1]}"
    return (f"Subset {name} ({images} images): each run's metrics on the subset alone "
            "(pycocoevalcap on its captions, so C uses the subset's document frequencies; "
            "CHAIR over its captions)")


def subset_notes(intervals: Intervals) -> list[str]:
    """The lines under a subset's differences: what was bootstrapped, percentile intervals,
    why CIDEr was not, and what could not be computed."""
    bootstrapped = ", ".join(f"Δ{BY_NAME[m].short}" for m in intervals.metrics)
    defined = [f"{bootstrapped}: counted as for the whole split, on resamples of the subset's "
               "captions (exact per image)"] if intervals.differences else []
    return [*defined, *percentile_notes(intervals), SUBSET_CIDER_NOTE, *intervals.notes]


def _subset_payload(variants: list[Variant], name: str, summaries: list[Summary],
                    intervals: Intervals, settings: BootstrapSettings, notes: list[str]
                    ) -> dict[str, Any]:
    """Every number of one subset's comparison (fractions, as in metrics.json)."""
    rows = []
    for variant, (mean, std, not_computed) in zip(variants, summaries):
        differences = intervals.differences.get(variant.label)
        rows.append({
            "label": variant.label, "mean": mean,
            "std": std if len(variant.runs) > 1 else None, "not_computed": not_computed,
            "difference_from_baseline": None if differences is None else
            {metric: d.to_json() for metric, d in differences.items()},
            "runs": [{"name": variant.run_name(i), "metrics_json": str(run.path),
                      "file": run.payload["subsets"][name].get("file"),
                      "images": run.payload["subsets"][name]["images"],
                      "metrics": run.payload["subsets"][name]["metrics"]}
                     for i, run in enumerate(variant.runs)]})
    return {"bootstrap": {**_bootstrap_json(settings, intervals),
                          "not_bootstrapped": {"CIDEr": SUBSET_CIDER_NOTE}},
            "variants": rows, "notes": notes}


# ----------------------------------------------------------------------------- output


def compare_runs(arguments: list[str], split: str = "test",
                 settings: BootstrapSettings | None = None,
                 sections: tuple[NoteMaker, ...] | None = None) -> Comparison:
    """The comparison of the VARIANT arguments (see the module docstring); `sections`
    default to `NOTE_SECTIONS`."""
    settings = settings or BootstrapSettings()
    check_settings(settings.resamples, settings.confidence)
    variants = load_variants(arguments, split)
    summaries = [seed_summary(v) for v in variants]
    intervals = bootstrap_intervals(variants, settings)
    subsets, partial = subset_comparisons(variants, settings)
    extra = [s for s in (maker(variants) for maker in
                         (NOTE_SECTIONS if sections is None else sections)) if s is not None]
    heading = interval_heading(intervals, variants[0].label, settings) \
        if intervals.differences else None
    plain, flags, signatures = _notes(variants, intervals)
    plain += partial
    provenance = provenance_notes(variants)

    markdown, latex = _tables(variants, summaries, intervals, heading)
    markdown.append("\n".join([*(f"- {n}" for n in plain), *(f"- **{n}**" for n in flags),
                               *(f"- `{n}`" for n in signatures)]))
    markdown += [c.markdown for c in subsets.values()]
    markdown.append(f"{PROVENANCE}:\n" + "\n".join(f"- `{line}`" for line in provenance))
    markdown += [f"**{s.title}**\n" + "\n".join(f"- {line}" for line in s.lines) for s in extra]

    latex += [c.latex for c in subsets.values()]
    notes = [*plain, *flags, *signatures]
    comments = [*notes, PROVENANCE, *provenance,
                *(line for s in extra for line in (s.title, *s.lines))]
    latex_text = "\n\n".join(latex) + "\n" + "\n".join(f"% {n}" for n in comments)
    payload = _payload(variants, summaries, intervals, settings, split, notes, extra)
    if any(run.payload.get("subsets") for v in variants for run in v.runs):
        payload["subsets"] = {name: c.payload for name, c in subsets.items()}
    return Comparison("\n\n".join(markdown), latex_text, payload)


def _tables(variants: list[Variant], summaries: list[Summary], intervals: Intervals,
            heading: str | None) -> tuple[list[str], list[str]]:
    """(markdown, LaTeX) of the rows' table (mean ± sd, best in bold, † flags) and, with a
    heading, of their differences from the baseline."""
    rows = [(v.label, mean) for v, (mean, _, _) in zip(variants, summaries)]
    options = dict(bold_best=True, not_computed=[nc for _, _, nc in summaries],
                   flagged=[any(memoryless(r.payload.get("memory") or {}) for r in v.runs)
                            for v in variants],
                   spread=[std for _, std, _ in summaries])
    differences: list[tuple[str, dict[str, Interval | None]]] = [
        (v.label, {name: _interval(intervals.differences.get(v.label, {}).get(name))
                   for name in intervals.metrics}) for v in variants[1:]]
    markdown = [markdown_table(rows, **options)]
    latex = [latex_table(rows, **options)]
    if heading:
        markdown.append(heading + ":\n\n" + difference_markdown(differences))
        latex.append(f"% {heading}\n" + difference_latex(differences))
    return markdown, latex


def _interval(difference: Difference | None) -> Interval | None:
    return None if difference is None else (difference.estimate, difference.low, difference.high)


def _notes(variants: list[Variant], intervals: Intervals
           ) -> tuple[list[str], list[str], list[str]]:
    """(definitions, the seeds' spread and missing intervals; `FLAG` lines; signatures)."""
    plain = interval_definitions(intervals) if intervals.differences else []
    if any(len(v.runs) > 1 for v in variants):
        plain.append("value ± sd: mean and sample standard deviation over the row's seeds")
    return [*plain, *intervals.notes], memory_notes(variants), signature_notes(variants)


def _payload(variants: list[Variant], summaries: list, intervals: Intervals,
             settings: BootstrapSettings, split: str, notes: list[str],
             extra: list[NoteSection]) -> dict[str, Any]:
    """Every number of the comparison (fractions, as in metrics.json; tables print x 100)."""
    rows = []
    for variant, (mean, std, not_computed) in zip(variants, summaries):
        differences = intervals.differences.get(variant.label)
        rows.append({
            "label": variant.label, "seeds": [run.seed for run in variant.runs],
            "mean": mean, "std": std if len(variant.runs) > 1 else None,
            "not_computed": not_computed,
            "difference_from_baseline": None if differences is None else
            {name: d.to_json() for name, d in differences.items()},
            "runs": [{"name": variant.run_name(i), "metrics_json": str(run.path),
                      "seed": run.seed, "metrics": run.metrics,
                      "signature": signature_line(run.payload) or None,
                      "memoryless": memoryless(run.payload.get("memory") or {}),
                      "provenance": run.provenance.to_json()}
                     for i, run in enumerate(variant.runs)]})
    return {"split": split, "baseline": variants[0].label, "scale": "fractions (tables x 100)",
            "std": "sample standard deviation over seeds (ddof 1), only with > 1 seed",
            "bootstrap": _bootstrap_json(settings, intervals),
            "variants": rows, "notes": notes,
            "sections": [{"title": s.title, "lines": s.lines} for s in extra]}


def _bootstrap_json(settings: BootstrapSettings, intervals: Intervals) -> dict[str, Any]:
    """The bootstrap's settings, images and metrics, for the payload."""
    return {"resamples": settings.resamples, "seed": settings.seed,
            "confidence_level": settings.confidence, "paired": True,
            "unit": "test image", "images": intervals.images,
            "metrics": intervals.metrics, "interval": "BCa (scipy.stats.bootstrap)",
            "seeds": "per-image values averaged over a variant's seeds"}
