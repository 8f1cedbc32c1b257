"""`python -m train --config PATH [--set k=v ...] [--force]`: train the caption decoder.

A run resumes from `runs/<dataset>/train/last.pt` when it was started with the same config;
`--force` starts over. Multi-GPU: `torchrun --nproc_per_node N -m train --config PATH`.
"""

from __future__ import annotations

from typing import Annotated

import typer

from shared.cli import ConfigOption, ForceOption, SetOption, StageFailure, load, one_line_errors
from train.trainer import train

ResumeOption = Annotated[bool, typer.Option(
    "--resume", help="Insist on continuing last.pt (error if it is missing or from another "
                     "config); without it a matching last.pt is resumed anyway.")]

app = typer.Typer(add_completion=False)


@app.command()
@one_line_errors
def main(config: ConfigOption, set_: SetOption = None, force: ForceOption = False,
         resume: ResumeOption = False) -> None:
    """Cross-entropy training of the (PMA) decoder on the feature cache."""
    if resume and force:
        raise StageFailure("--resume and --force contradict each other")
    for line in train(load(config, set_), force=force, resume=resume):
        typer.echo(line)


if __name__ == "__main__":
    app()
