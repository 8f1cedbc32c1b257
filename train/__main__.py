"""`python -m train --config PATH [--set k=v ...] [--force] [--resume] [--xe-only|--scst-only]`:
train the caption decoder, cross-entropy first, then self-critical (SCST) when `scst.enabled`.

Each phase resumes from its `last.pt` (`runs/<dataset>/train/last.pt`, `.../train/scst/last.pt`)
when it was started with the same config, and is skipped when its output is up to date;
`--force` starts over (the phases that run). Multi-GPU:
`torchrun --nproc_per_node N -m train --config PATH`.

The run holds the lock on `<experiment>/train/` (`shared.output_lock`; rank 0 under torchrun),
so a second `train` of the same experiment stops at once with exit status 2. Holding it, rank 0
records the run's config and the folder it was started from in `<experiment>/run_config.json`
(what `Captioner.from_run` loads the run from), unless the run's inputs are stale.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated

import typer

from shared.cli import ConfigOption, ForceOption, SetOption, StageFailure, load, one_line_errors
from shared.config import Config
from shared.atomic_files import write_json_atomic
from shared.manifest import first_stale_upstream
from shared.output_lock import output_lock
from shared.stages import run_config_path, scst_stage, train_dir, train_stage
from train.scst import train_scst
from train.trainer import train

ResumeOption = Annotated[bool, typer.Option(
    "--resume", help="Insist on continuing last.pt (error if it is missing or from another "
                     "config); without it a matching last.pt is resumed anyway.")]
XeOnlyOption = Annotated[bool, typer.Option(
    "--xe-only", help="Cross-entropy training only, even when scst.enabled.")]
ScstOnlyOption = Annotated[bool, typer.Option(
    "--scst-only", help="Self-critical training only (the XE checkpoint must be up to date, "
                        "or scst.init_checkpoint set).")]

app = typer.Typer(add_completion=False)


@app.command()
@one_line_errors
def main(config: ConfigOption, set_: SetOption = None, force: ForceOption = False,
         resume: ResumeOption = False, xe_only: XeOnlyOption = False,
         scst_only: ScstOnlyOption = False) -> None:
    """Cross-entropy training of the (PMA) decoder on the feature cache, then SCST."""
    if resume and force:
        raise StageFailure("--resume and --force contradict each other")
    if xe_only and scst_only:
        raise StageFailure("--xe-only and --scst-only contradict each other")
    cfg = load(config, set_)
    if scst_only and not cfg.scst.enabled:
        raise StageFailure("--scst-only but scst.enabled is false")
    # torchrun: rank 0 holds the lock for the job (a busy rank 0 exiting ends its job)
    first_rank = os.environ.get("RANK", "0") == "0"
    with output_lock(train_dir(cfg), "train") if first_rank else nullcontext():
        # a run refused for stale inputs leaves the finished run's record alone
        stage = scst_stage(cfg) if scst_only else train_stage(cfg)
        if first_rank and first_stale_upstream(stage, cfg) is None:
            write_run_config(cfg)
        _train_phases(cfg, force, resume, xe_only, scst_only)


def write_run_config(cfg: Config) -> Path:
    """Record the run's config and the folder its relative paths start at, atomically."""
    path = run_config_path(cfg)
    write_json_atomic(path, {"config": cfg.to_dict(), "working_dir": str(Path.cwd().resolve())})
    return path


def _train_phases(cfg: Config, force: bool, resume: bool, xe_only: bool,
                  scst_only: bool) -> None:
    """Cross-entropy, then SCST when enabled, as the options ask."""
    xe_was_done = scst_only
    if not scst_only:
        result = train(cfg, force=force, resume=resume)
        xe_was_done = not result.ran
        for line in result:
            typer.echo(line)
    if cfg.scst.enabled and not xe_only:
        # --resume insists on the interrupted phase: SCST's only when XE had nothing to do
        for line in train_scst(cfg, force=force, resume=resume and xe_was_done):
            typer.echo(line)


if __name__ == "__main__":
    app()
