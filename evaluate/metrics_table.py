"""Metric tables as papers print them (scores x 100), in plain text, markdown and LaTeX.

Metric keys are pycocoevalcap's (`Bleu_1`..`Bleu_4`, `METEOR`, `ROUGE_L`, `CIDEr`, `SPICE`) and
the CHAIR code's (`CHAIRs`, `CHAIRi`); the tables print short headers (B@4, C, CHs, ...).
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


def columns(metric_sets: list[dict[str, float]]) -> list[str]:
    """The known metrics present in any of the sets, in the usual paper order."""
    present = set().union(*metric_sets) if metric_sets else set()
    return [name for name in COLUMN_ORDER if name in present]


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def markdown_table(rows: list[tuple[str, dict[str, float]]], bold_best: bool = False) -> str:
    """| run | B@1 | ... | as a markdown table (best value per column in bold if asked)."""
    names = columns([m for _, m in rows])
    best = _best(rows, names) if bold_best and len(rows) > 1 else {}
    lines = ["| run | " + " | ".join(SHORT_NAMES[n] for n in names) + " |",
             "|---|" + "---:|" * len(names)]
    for label, metrics in rows:
        cells = []
        for name in names:
            cell = _cell(metrics.get(name))
            cells.append(f"**{cell}**" if best.get(name) == label else cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def latex_table(rows: list[tuple[str, dict[str, float]]], bold_best: bool = True) -> str:
    """A booktabs tabular with the same columns (best value per column in \\textbf)."""
    names = columns([m for _, m in rows])
    best = _best(rows, names) if bold_best and len(rows) > 1 else {}
    header = " & ".join(["Run", *(SHORT_NAMES[n] for n in names)]) + r" \\"
    lines = [r"\begin{tabular}{l" + "r" * len(names) + "}", r"\toprule", header, r"\midrule"]
    for label, metrics in rows:
        cells = [_latex_escape(label)]
        for name in names:
            cell = _cell(metrics.get(name))
            cells.append(rf"\textbf{{{cell}}}" if best.get(name) == label else cell)
        lines.append(" & ".join(cells) + r" \\")
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
