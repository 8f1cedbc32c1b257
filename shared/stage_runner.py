"""The one way a stage runs: decide -> mark the old output incomplete -> build -> manifest.

Every stage program calls `run_stage` with its `StageSpec` and a `build` function; the runner
checks the upstream stages (`StaleInputError` naming the first stale one and its command),
skips an output that is up to date, removes the old manifest before anything is rewritten (so
an interrupted build is never taken for complete), calls `build(run)` and writes the manifest
with the summary `build` returns (unless `build` set `run.complete = False`: a sharded store
that other processes are still filling). The result is typed: `StageResult.ran` says whether
the stage did anything, `summary` holds what the manifest holds (for a skipped stage: the
existing manifest's), `lines` what to print.

Under `torchrun` only the main process touches the manifest (`main=False` on the others): they
decide alike, build their share, and leave the bookkeeping to rank 0.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.config import Config
from shared.manifest import (Decision, StageSpec, current_state, decide, read_manifest,
                             remove_manifest, write_manifest)


@dataclass
class StageRun:
    """What `build` gets: the spec, the config, the run's state (its identity and input
    identities, fixed before the build starts), why it runs, and the lines to print;
    `complete = False` from `build`: the output is not finished yet, write no manifest."""

    spec: StageSpec
    config: Config
    state: dict[str, Any]
    reason: str
    force: bool
    lines: list[str] = field(default_factory=list)
    complete: bool = True

    @property
    def identity(self) -> str:
        return self.state["identity"]

    def say(self, line: str) -> None:
        """Add a line (prefixed with the stage's label) to what the stage prints."""
        self.lines.append(f"{label(self.spec)}: {line}")


@dataclass
class StageResult:
    """How a stage run ended: its output, whether it ran (False: up to date, skipped), the
    one-line reason, the manifest summary (a skipped stage's: the existing one), the lines to
    print, and whether the output is complete (False: other shards are still filling it)."""

    stage: str
    output: Path
    ran: bool
    reason: str
    summary: dict[str, Any] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)
    complete: bool = True

    def __iter__(self) -> Iterator[str]:
        """The lines to print, so `for line in result` reads as before."""
        return iter(self.lines)


def label(spec: StageSpec) -> str:
    """How a stage names itself in what it prints: "extract clip", "train scst", ... (or
    its own `label`: "demo data")."""
    return spec.label or spec.name.replace(".", " ")


def run_stage(spec: StageSpec, config: Config, build: Callable[[StageRun], dict[str, Any]],
              force: bool = False, main: bool = True,
              decision: Decision | None = None) -> StageResult:
    """Run `build` for `spec` unless its output is up to date; write its manifest after.

    `build` returns the manifest summary (a dict) and may add lines with `run.say`; raising
    leaves the output without a manifest (incomplete, rebuilt next time). `decision` is one
    already taken by the caller (with its checks between deciding and building)."""
    decision = decision or decide(spec, config, force=force)
    if decision.up_to_date:
        return StageResult(spec.name, spec.output, False, decision.reason,
                           (read_manifest(spec.output) or {}).get("summary") or {},
                           [f"{label(spec)}: {decision.reason}"])
    if main:
        remove_manifest(spec.output)  # from here on the old output is no longer complete
    run = StageRun(spec, config, current_state(spec, config), decision.reason, force)
    summary = build(run) or {}
    if main and run.complete:
        write_manifest(spec, config, summary, state=run.state)
    return StageResult(spec.name, spec.output, True, decision.reason, summary, run.lines,
                       run.complete)
