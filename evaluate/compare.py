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

Only complete evaluations are compared: a `metrics.json` without its manifest
(`metrics.json.manifest.json`, written last by `evaluate score`) is refused. A run configured
with PMA memory whose checkpoint has 0 prototypes (`metrics.json`'s `memory`) is marked † in
the tables, with a line under them saying it is a plain transformer's result.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evaluate.caption_checks import memoryless
from evaluate.hallucination import rate_change_section
from evaluate.metrics_table import (FLAG, SHORT_NAMES, SIGNIFICANT, Interval, difference_latex,
                                    difference_markdown, latex_table, markdown_table)
from evaluate.paired_bootstrap import (METRICS, Difference, PerImage, check_settings,
                                       corpus_value, paired_difference, pool, read_per_image)
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


def seed_summary(variant: Variant) -> tuple[dict[str, float], dict[str, float],
                                              dict[str, str]]:
    """(mean, sample standard deviation (only with > 1 run), not computed: metric -> why) of
    every metric over the variant's runs; a metric missing from any run is not computed."""
    metric_sets = [run.metrics for run in variant.runs]
    names = set().union(*metric_sets)
    mean: dict[str, float] = {}
    std: dict[str, float] = {}
    not_computed: dict[str, str] = {}
    for run in variant.runs:
        not_computed.update(run.payload.get("not_computed") or {})
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
    for metric, name in names.items():
        recorded = run.metrics.get(name)
        if recorded is None or not values.has(metric):
            continue
        recomputed = corpus_value(metric, values)
        if abs(recomputed - recorded) > 1e-9 * max(1.0, abs(recorded)):
            raise ValueError(f"{path} does not reproduce {run.path.name}'s {name} "
                             f"({recomputed!r} != {recorded!r}): re-run `python -m evaluate "
                             "score --force` for it")
    return values


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
    baseline = variants[0].label
    if baseline not in pooled or len(variants) < 2:
        return result
    base = pooled[baseline]
    result.images = len(base.image_ids)
    if result.images < 2:
        result.notes.append("no intervals: a bootstrap over images needs at least 2 images")
        return result
    metrics = [m for m in METRICS if base.has(m)]
    result.metrics = [names[m] for m in metrics]
    for variant in variants[1:]:
        values = pooled.get(variant.label)
        if values is None:
            continue
        if not _same_ids(values, base):
            result.notes.append(f"no interval for {variant.label}: it scored other images than "
                                f"{baseline} ({len(values.image_ids)} vs {result.images})")
            continue
        result.differences[variant.label] = {
            names[m]: paired_difference(m, base, values, settings.resamples, settings.seed,
                                        settings.confidence)
            for m in metrics if values.has(m)}
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


def interval_heading(intervals: Intervals, baseline: str, settings: BootstrapSettings) -> str:
    """The line above the difference table."""
    return (f"Difference from {baseline}, paired bootstrap over the {intervals.images} test "
            f"images (seeds pooled per image): {settings.resamples} resamples, seed "
            f"{settings.seed}, {100 * settings.confidence:g}% BCa interval; {SIGNIFICANT} = "
            "the interval excludes 0")


def interval_definitions(intervals: Intervals) -> list[str]:
    """How the bootstrapped metrics are computed on a resample."""
    short = {name: SHORT_NAMES.get(name, name) for name in intervals.metrics}
    lines = []
    for name, text in short.items():
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
    lines += [f"{label} Δ{short[name]}: percentile interval (BCa is undefined when the "
              "difference is the same on every resample)"
              for label, differences in intervals.differences.items()
              for name, difference in differences.items() if difference.method != "BCa"]
    return lines


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
    extra = [s for s in (maker(variants) for maker in
                         (NOTE_SECTIONS if sections is None else sections)) if s is not None]
    rows = [(v.label, mean) for v, (mean, _, _) in zip(variants, summaries)]
    options = dict(bold_best=True, not_computed=[nc for _, _, nc in summaries],
                   flagged=[any(memoryless(r.payload.get("memory") or {}) for r in v.runs)
                            for v in variants],
                   spread=[std for _, std, _ in summaries])
    differences: list[tuple[str, dict[str, Interval | None]]] = [
        (v.label, {name: _interval(intervals.differences.get(v.label, {}).get(name))
                   for name in intervals.metrics}) for v in variants[1:]]
    heading = interval_heading(intervals, variants[0].label, settings) \
        if intervals.differences else None
    plain, flags, signatures = _notes(variants, intervals)
    provenance = provenance_notes(variants)

    markdown = [markdown_table(rows, **options)]
    if heading:
        markdown.append(heading + ":\n\n" + difference_markdown(differences))
    markdown.append("\n".join([*(f"- {n}" for n in plain), *(f"- **{n}**" for n in flags),
                               *(f"- `{n}`" for n in signatures)]))
    markdown.append(f"{PROVENANCE}:\n" + "\n".join(f"- `{line}`" for line in provenance))
    markdown += [f"**{s.title}**\n" + "\n".join(f"- {line}" for line in s.lines) for s in extra]

    latex = [latex_table(rows, **options)]
    if heading:
        latex.append(f"% {heading}\n" + difference_latex(differences))
    notes = [*plain, *flags, *signatures]
    comments = [*notes, PROVENANCE, *provenance,
                *(line for s in extra for line in (s.title, *s.lines))]
    latex_text = "\n\n".join(latex) + "\n" + "\n".join(f"% {n}" for n in comments)
    return Comparison("\n\n".join(markdown), latex_text,
                      _payload(variants, summaries, intervals, settings, split, notes, extra))


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
            "bootstrap": {"resamples": settings.resamples, "seed": settings.seed,
                          "confidence_level": settings.confidence, "paired": True,
                          "unit": "test image", "images": intervals.images,
                          "metrics": intervals.metrics, "interval": "BCa (scipy.stats.bootstrap)",
                          "seeds": "per-image values averaged over a variant's seeds"},
            "variants": rows, "notes": notes,
            "sections": [{"title": s.title, "lines": s.lines} for s in extra]}
