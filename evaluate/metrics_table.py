"""Metric tables as papers print them (scores x 100), in plain text, markdown and LaTeX.

`METRICS` is the one list of reported metrics: keys as metrics.json has them (pycocoevalcap's,
CHAIR's, CLIP-S), the short headers the tables print (B@4, C, CHs, ...), direction and scale.
A row may carry a spread per metric (the standard deviation over seeds: `70.1 ± 0.3`), and
`difference_markdown` / `difference_latex` print intervals of differences from a baseline
(`+1.2 [+0.4, +2.0] *`, the mark when the interval excludes 0).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    """A reported metric: its metrics.json key, table header, direction and display factor."""

    name: str
    short: str
    lower_is_better: bool = False
    scale: float = 100


METRICS = (Metric("Bleu_1", "B@1"), Metric("Bleu_2", "B@2"), Metric("Bleu_3", "B@3"),
           Metric("Bleu_4", "B@4"), Metric("METEOR", "M"), Metric("ROUGE_L", "R"),
           Metric("CIDEr", "C"), Metric("SPICE", "S"), Metric("CHAIRs", "CHs", True),
           Metric("CHAIRi", "CHi", True), Metric("CHAIRs_extended", "CHs-ext", True),
           Metric("CHAIRi_extended", "CHi-ext", True), Metric("CLIP-S", "CLIP-S"),
           Metric("RefCLIP-S", "RefCLIP-S"), Metric("CLIP-S_run", "CLIP-S-run"),
           Metric("RefCLIP-S_run", "RefCLIP-S-run"))
"""Every metric the tables print, in their column order: a new metric is one entry here."""
BY_NAME = {m.name: m for m in METRICS}


FLAG = "†"
"""Marks a row whose result is not what its label claims (e.g. PMA without prototypes); the
caller explains it under the table. LaTeX tables print it as a superscript \\dagger."""

NOT_COMPUTED = "not computed"
"""What a table cell says for a metric a run did not compute (SPICE offline, CHAIR without
instances, CLIP-S not asked for): never 0, never blank."""


def columns(metric_sets: list[dict], not_computed: list[dict] | None = None) -> list[Metric]:
    """The known metrics present (or recorded as not computed) in any of the sets, in the
    usual paper order."""
    present = set().union(*metric_sets, *(not_computed or [])) if metric_sets else set()
    return [m for m in METRICS if m.name in present]


PLUS_MINUS = {"markdown": " ± ", "latex": r" $\pm$ "}

SIGNIFICANT = "*"
"""Marks a difference whose interval excludes 0."""


def _cell(metric: Metric, value: float | None, spread: float | None, style: str) -> str:
    if value is None:
        return NOT_COMPUTED
    text = f"{metric.scale * value:.1f}"
    return text if spread is None else f"{text}{PLUS_MINUS[style]}{metric.scale * spread:.1f}"


def _rows_of_cells(rows: list[tuple[str, dict[str, float]]], bold_best: bool,
                   not_computed: list[dict[str, str]] | None, bold: str,
                   spread: list[dict[str, float]] | None = None, style: str = "markdown"
                   ) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """(column headers, (label, cells) per row); `bold` is a format with one `{}`; `spread`
    (per row: metric -> standard deviation) adds `± sd` to those cells."""
    metrics = columns([m for _, m in rows], not_computed)
    best = _best(rows, metrics) if bold_best and len(rows) > 1 else {}
    spreads = list(spread) if spread is not None else [{} for _ in rows]
    table = []
    for (label, values), row_spread in zip(rows, spreads):
        cells = [_cell(m, values.get(m.name), row_spread.get(m.name), style) for m in metrics]
        table.append((label, [bold.format(c) if best.get(m.name) == label else c
                              for m, c in zip(metrics, cells)]))
    return [m.short for m in metrics], table


def markdown_table(rows: list[tuple[str, dict[str, float]]], bold_best: bool = False,
                   not_computed: list[dict[str, str]] | None = None,
                   flagged: list[bool] | None = None,
                   spread: list[dict[str, float]] | None = None) -> str:
    """| run | B@1 | ... | as a markdown table (best value per column in bold if asked);
    `not_computed` (per row: metric -> why) adds those columns, read "not computed";
    `flagged` rows get `FLAG` after their label; `spread` (per row: metric -> sd) prints
    `value ± sd`."""
    names, table = _rows_of_cells(rows, bold_best, not_computed, "**{}**", spread)
    lines = ["| run | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    lines += [f"| {label}{f' {FLAG}' if flag else ''} | " + " | ".join(cells) + " |"
              for (label, cells), flag in zip(table, flagged or [False] * len(rows))]
    return "\n".join(lines)


def latex_table(rows: list[tuple[str, dict[str, float]]], bold_best: bool = True,
                not_computed: list[dict[str, str]] | None = None,
                flagged: list[bool] | None = None,
                spread: list[dict[str, float]] | None = None) -> str:
    """A booktabs tabular with the same columns (best value per column in \\textbf,
    `flagged` rows marked with a superscript \\dagger, `spread` as `value $\\pm$ sd`)."""
    names, table = _rows_of_cells(rows, bold_best, not_computed, r"\textbf{{{}}}", spread,
                                  "latex")
    header = " & ".join(["Run", *names]) + r" \\"
    lines = [r"\begin{tabular}{l" + "r" * len(names) + "}", r"\toprule", header, r"\midrule"]
    lines += [" & ".join([_latex_escape(label) + (r"$^\dagger$" if flag else ""), *cells])
              + r" \\" for (label, cells), flag in zip(table, flagged or [False] * len(rows))]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines)


Interval = tuple[float, float, float]
"""(estimate, low, high) of a difference, as fractions (printed x 100)."""


def _signed(value: float, scale: float) -> str:
    text = f"{scale * value:+.1f}"
    return "+0.0" if text == "-0.0" else text


def _interval_cell(metric: Metric, cells: dict[str, Interval | None], latex: bool = False) -> str:
    interval = cells.get(metric.name)
    if interval is None:
        return NOT_COMPUTED
    estimate, low, high = (_signed(v, metric.scale) for v in interval)
    mark = SIGNIFICANT if interval[1] > 0 or interval[2] < 0 else ""
    if latex:
        mark = f"$^{{{mark}}}$" if mark else ""
        return f"${estimate}$ [${low}$, ${high}$]{mark}"
    return f"{estimate} [{low}, {high}]" + (f" {mark}" if mark else "")


def difference_markdown(rows: list[tuple[str, dict[str, Interval | None]]]) -> str:
    """| run | ΔC | ΔCHs | ... | of differences from a baseline with their intervals (x 100,
    `SIGNIFICANT` when an interval excludes 0); None reads "not computed"."""
    metrics = columns([r for _, r in rows])
    lines = ["| run | " + " | ".join(f"Δ{m.short}" for m in metrics) + " |",
             "|---|" + "---:|" * len(metrics)]
    lines += [f"| {label} | " + " | ".join(_interval_cell(m, cells) for m in metrics) + " |"
              for label, cells in rows]
    return "\n".join(lines)


def difference_latex(rows: list[tuple[str, dict[str, Interval | None]]]) -> str:
    """The same differences as a booktabs tabular."""
    metrics = columns([r for _, r in rows])
    header = " & ".join(["Run", *(rf"$\Delta${m.short}" for m in metrics)]) + r" \\"
    lines = [r"\begin{tabular}{l" + "r" * len(metrics) + "}", r"\toprule", header, r"\midrule"]
    lines += [" & ".join([_latex_escape(label),
                          *(_interval_cell(m, cells, latex=True) for m in metrics)]) + r" \\"
              for label, cells in rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines)


def _best(rows: list[tuple[str, dict[str, float]]], metrics: list[Metric]) -> dict[str, str]:
    """Column -> label of the run with the best value (lowest when lower is better)."""
    best: dict[str, str] = {}
    for metric in metrics:
        scored = [(v[metric.name], label) for label, v in rows if v.get(metric.name) is not None]
        if scored:
            best[metric.name] = (min if metric.lower_is_better else max)(scored)[1]
    return best


def _latex_escape(text: str) -> str:
    for char in "&%$#_{}":
        text = text.replace(char, "\\" + char)
    return text
