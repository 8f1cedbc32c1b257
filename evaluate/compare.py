"""`evaluate compare RUN...`: one table of the metrics of several evaluations.

A RUN is a `metrics.json`, an eval folder holding one (`runs/<ds>/eval/test`), or a run
folder (`runs/<ds>`, whose `eval/<split>/metrics.json` is used); `LABEL=PATH` names its row.

Only complete evaluations are compared: a `metrics.json` without its manifest
(`metrics.json.manifest.json`, written last by `evaluate score`) is refused. A run configured
with PMA memory whose checkpoint has 0 prototypes (`metrics.json`'s `memory`) is marked † in
the tables, with a line under them saying it is a plain transformer's result.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from evaluate.caption_checks import memoryless
from evaluate.metrics_table import FLAG, latex_table, markdown_table
from evaluate.signature import signature_line
from shared.manifest import manifest_path, read_manifest


def metrics_file(run: str, split: str) -> tuple[str, Path]:
    """(label, metrics.json path) of one RUN argument."""
    label, _, path_text = run.rpartition("=") if "=" in run else ("", "", run)
    path = Path(path_text)
    candidates = [path, path / "metrics.json", path / "eval" / split / "metrics.json"]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise FileNotFoundError(f"no metrics.json for '{run}' (looked at "
                                f"{', '.join(str(p) for p in candidates[1:])}); "
                                "run `python -m evaluate score` for it first")
    if not label:
        parts = found.parent.parts
        label = "/".join(parts[-3:-2] + parts[-1:]) if len(parts) >= 3 and \
            parts[-2] == "eval" else str(found.parent)
    return label, found


def load_rows(runs: list[str], split: str) -> list[tuple[str, dict[str, Any]]]:
    """(label, metrics.json payload) of every RUN, in the given order."""
    rows = []
    for run in runs:
        label, path = metrics_file(run, split)
        if read_manifest(path) is None:
            raise ValueError(f"{path} has no readable manifest ({manifest_path(path).name}), so "
                             "it is no complete evaluation: make it with `python -m evaluate "
                             "score` (the run's --config/--set)")
        try:
            payload = json.loads(path.read_text())
            dict(payload["metrics"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: not an evaluation metrics file ({err})") from None
        rows.append((label, payload))
    return rows


def signature_notes(rows: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """One line per row: its label and how the result was produced (its signature)."""
    missing = "no signature (scored before signatures existed)"
    return [f"{label}: {signature_line(payload) or missing}" for label, payload in rows]


def memory_notes(rows: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """One line per row whose PMA memory is empty (marked `FLAG` in the tables)."""
    return [f"{FLAG} {label}: memory.self is on but its checkpoint has 0 memory prototypes "
            "(saved before the first refresh): a plain transformer's result, not PMA's"
            for label, payload in rows if memoryless(payload.get("memory") or {})]


def compare_tables(runs: list[str], split: str = "test") -> tuple[str, str]:
    """(markdown, LaTeX) tables of the runs, best value per column in bold, metrics a run did
    not compute marked so, PMA runs without prototypes flagged, each table followed by the
    flag's explanation and the signature of every row."""
    rows = load_rows(runs, split)
    table_rows = [(label, dict(payload["metrics"])) for label, payload in rows]
    not_computed = [dict(payload.get("not_computed", {})) for _, payload in rows]
    flagged = [memoryless(payload.get("memory") or {}) for _, payload in rows]
    notes = signature_notes(rows)
    flags = memory_notes(rows)
    markdown = markdown_table(table_rows, bold_best=True, not_computed=not_computed,
                              flagged=flagged) + "\n\n" + \
        "\n".join([*(f"- **{note}**" for note in flags), *(f"- `{note}`" for note in notes)])
    latex = latex_table(table_rows, bold_best=True, not_computed=not_computed,
                        flagged=flagged) + "\n" + \
        "\n".join(f"% {note}" for note in [*flags, *notes])
    return markdown, latex
