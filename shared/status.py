"""`python -m shared.status --config PATH`: one line per stage: up to date, stale, or missing."""

from __future__ import annotations

import typer

from shared.cli import ConfigOption, SetOption, load, one_line_errors
from shared.manifest import decide
from shared.stages import all_stages

app = typer.Typer(add_completion=False)


@app.command()
@one_line_errors
def status(config: ConfigOption, set_: SetOption = None) -> None:
    """Show which stage outputs are up to date with the config and their inputs."""
    cfg = load(config, set_)
    for spec in all_stages(cfg):
        try:
            decision = decide(spec, cfg)
            state = "ok   " if decision.up_to_date else "todo "
            reason = decision.reason
        except FileNotFoundError as err:
            state, reason = "todo ", f"waiting for an input ({err})"
        typer.echo(f"{state} {spec.name:<20} {reason}")


if __name__ == "__main__":
    app()
