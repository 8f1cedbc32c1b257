"""Metric tables as papers print them (scores x 100), in plain text, markdown and LaTeX.

Metric keys are pycocoevalcap's (`Bleu_1`..`Bleu_4`, `METEOR`, `ROUGE_L`, `CIDEr`, `SPICE`) and
the CHAIR code's (`CHAIRs`, `CHAIRi`); the tables print short headers (B@4, C, CHs, ...).
A row may carry a spread per metric (the standard deviation over seeds: `70.1 ± 0.3`), and
`difference_markdown` / `difference_latex` print intervals of differences from a baseline
(`+1.2 [+0.4, +2.0] *`, the mark when the interval excludes 0).
"""

from __future__ import annotations

from evaluate.coco_metrics import METRIC_ORDER

COLUMN_ORDER = (*METRIC_ORDER, "CHAIRs", "CHAIRi", "CHAIRs_extended", "CHAIRi_extended",
                "CLIP-S", "RefCLIP-S")
SHORT_NAMES = {"Bleu_1": "B@1", "Bleu_2": "B@2", "Bleu_3": "B@3", "Bleu_4": "B@4",
               "METEOR": "M", "ROUGE_L": "R", "CIDEr": "C", "SPICE": "S",
               "CHAIRs": "CHs", "CHAIRi": "CHi", "CHAIRs_extended": "CHs-ext",
               "CHAIRi_extended": "CHi-ext", "CLIP-S": "CLIP-S", "RefCLIP-S": "RefCLIP-S"}
LOWER_IS_BETTER = {"CHAIRs", "CHAIRi", "CHAIRs_extended", "CHAIRi_extended"}


FLAG = "†"
"""Marks a row whose result is not what its label claims (e.g. PMA without prototypes); the
caller explains it under the table. LaTeX tables print it as a superscript \\dagger."""

NOT_COMPUTED = "not computed"
"""What a table cell says for a metric a run did not compute (SPICE offline, CHAIR without
instances, CLIP-S not asked for): never 0, never blank."""


def columns(metric_sets: list[dict[str, float]],
            not_computed: list[dict[str, str]] | None = None) -> list[str]:
    """The known metrics present (or recorded as not computed) in any of the sets, in the
    usual paper order."""
    present = set().union(*metric_sets, *(not_computed or [])) if metric_sets else set()
    return [name for name in COLUMN_ORDER if name in present]


PLUS_MINUS = {"markdown": " ± ", "latex": r" $\pm$ "}

SIGNIFICANT = "*"
"""Marks a difference whose interval excludes 0."""


def _cell(value: float | None, spread: float | None = None, style: str = "markdown") -> str:
    if value is None:
        return NOT_COMPUTED
    text = f"{100 * value:.1f}"
    return text if spread is None else f"{text}{PLUS_MINUS[style]}{100 * spread:.1f}"


def _rows_of_cells(rows: list[tuple[str, dict[str, float]]], bold_best: bool,
                   not_computed: list[dict[str, str]] | None, bold: str,
                   spread: list[dict[str, float]] | None = None, style: str = "markdown"
                   ) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """(column names, (label, cells) per row); `bold` is a format with one `{}`; `spread`
    (per row: metric -> standard deviation) adds `± sd` to those cells."""
    names = columns([m for _, m in rows], not_computed)
    best = _best(rows, names) if bold_best and len(rows) > 1 else {}
    spreads = list(spread) if spread is not None else [{} for _ in rows]
    table = []
    for (label, metrics), row_spread in zip(rows, spreads):
        cells = [_cell(metrics.get(name), row_spread.get(name), style) for name in names]
        table.append((label, [bold.format(c) if best.get(n) == label else c
                              for n, c in zip(names, cells)]))
    return names, table


def _flags(rows: list, flagged: list[bool] | None) -> list[bool]:
    return list(flagged) if flagged is not None else [False] * len(rows)


def markdown_table(rows: list[tuple[str, dict[str, float]]], bold_best: bool = False,
                   not_computed: list[dict[str, str]] | None = None,
                   flagged: list[bool] | None = None,
                   spread: list[dict[str, float]] | None = None) -> str:
    """| run | B@1 | ... | as a markdown table (best value per column in bold if asked);
    `not_computed` (per row: metric -> why) adds those columns, read "not computed";
    `flagged` rows get `FLAG` after their label; `spread` (per row: metric -> sd) prints
    `value ± sd`."""
    names, table = _rows_of_cells(rows, bold_best, not_computed, "**{}**", spread)
    lines = ["| run | " + " | ".join(SHORT_NAMES[n] for n in names) + " |",
             "|---|" + "---:|" * len(names)]
    lines += [f"| {label}{f' {FLAG}' if flag else ''} | " + " | ".join(cells) + " |"
              for (label, cells), flag in zip(table, _flags(rows, flagged))]
    return "\n".join(lines)


def latex_table(rows: list[tuple[str, dict[str, float]]], bold_best: bool = True,
                not_computed: list[dict[str, str]] | None = None,
                flagged: list[bool] | None = None,
                spread: list[dict[str, float]] | None = None) -> str:
    """A booktabs tabular with the same columns (best value per column in \\textbf,
    `flagged` rows marked with a superscript \\dagger, `spread` as `value $\\pm$ sd`)."""
    names, table = _rows_of_cells(rows, bold_best, not_computed, r"\textbf{{{}}}", spread,
                                  "latex")
    header = " & ".join(["Run", *(SHORT_NAMES[n] for n in names)]) + r" \\"
    lines = [r"\begin{tabular}{l" + "r" * len(names) + "}", r"\toprule", header, r"\midrule"]
    lines += [" & ".join([_latex_escape(label) + (r"$^\dagger$" if flag else ""), *cells])
              + r" \\" for (label, cells), flag in zip(table, _flags(rows, flagged))]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines)


Interval = tuple[float, float, float]
"""(estimate, low, high) of a difference, as fractions (printed x 100)."""


def _signed(value: float) -> str:
    text = f"{100 * value:+.1f}"
    return "+0.0" if text == "-0.0" else text


def _interval_cell(interval: Interval | None, latex: bool = False) -> str:
    if interval is None:
        return NOT_COMPUTED
    estimate, low, high = interval
    mark = SIGNIFICANT if low > 0 or high < 0 else ""
    if latex:
        mark = f"$^{{{mark}}}$" if mark else ""
        return f"${_signed(estimate)}$ [${_signed(low)}$, ${_signed(high)}$]{mark}"
    return f"{_signed(estimate)} [{_signed(low)}, {_signed(high)}]" + (f" {mark}" if mark else "")


def _difference_columns(rows: list[tuple[str, dict[str, Interval | None]]]) -> list[str]:
    present = set().union(*(r for _, r in rows)) if rows else set()
    return [name for name in COLUMN_ORDER if name in present]


def difference_markdown(rows: list[tuple[str, dict[str, Interval | None]]]) -> str:
    """| run | ΔC | ΔCHs | ... | of differences from a baseline with their intervals (x 100,
    `SIGNIFICANT` when an interval excludes 0); None reads "not computed"."""
    names = _difference_columns(rows)
    lines = ["| run | " + " | ".join(f"Δ{SHORT_NAMES[n]}" for n in names) + " |",
             "|---|" + "---:|" * len(names)]
    lines += [f"| {label} | " + " | ".join(_interval_cell(cells.get(n)) for n in names) + " |"
              for label, cells in rows]
    return "\n".join(lines)


def difference_latex(rows: list[tuple[str, dict[str, Interval | None]]]) -> str:
    """The same differences as a booktabs tabular."""
    names = _difference_columns(rows)
    header = " & ".join(["Run", *(rf"$\Delta${SHORT_NAMES[n]}" for n in names)]) + r" \\"
    lines = [r"\begin{tabular}{l" + "r" * len(names) + "}", r"\toprule", header, r"\midrule"]
    lines += [" & ".join([_latex_escape(label),
                          *(_interval_cell(cells.get(n), latex=True) for n in names)]) + r" \\"
              for label, cells in rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines)


def _best(rows: list[tuple[str, dict[str, float]]], names: list[str]) -> dict[str, str]:
    """Column -> label of the run with the best value (lowest for CHAIR)."""
    best: dict[str, str] = {}
    for name in names:
        scored = [(m[name], label) for label, m in rows if m.get(name) is not None]
        if scored:
            pick = min if name in LOWER_IS_BETTER else max
            best[name] = pick(scored)[1]
    return best


def _latex_escape(text: str) -> str:
    for char in "&%$#_{}":
        text = text.replace(char, "\\" + char)
    return text
