"""`python -m shared.status --config PATH [--set k=v]`: one line per stage of the DAG:
`ok` (up to date), `stale` (its own config/inputs changed, or a stage upstream of it is
stale), `todo` (not built yet), or `extra` for a stage that is not ok but that nothing
up to the report needs under this config (e.g. `cluster.activations` without
`memory.init_from_cluster`). Honours `--set`, as every stage program does."""

from __future__ import annotations

import typer

from shared.cli import ConfigOption, SetOption, load, one_line_errors
from shared.config import Config
from shared.manifest import StageSpec, own_decision, first_stale_upstream, read_manifest
from shared.stages import all_stages

app = typer.Typer(add_completion=False)


def stage_status(spec: StageSpec, config: Config) -> tuple[str, str]:
    """(`ok` | `stale` | `todo`, one-line reason) of one stage."""
    found = first_stale_upstream(spec, config)
    built = read_manifest(spec.output) is not None
    if found is not None:
        upstream, reason = found
        what = "not built" if reason == "no complete output yet" else f"stale: {reason}"
        return ("stale" if built else "todo",
                f"waiting for {upstream.name} ({what}; `{upstream.command}`)")
    try:
        decision = own_decision(spec, config)
    except FileNotFoundError as err:
        return "todo", f"waiting for an input ({err})"
    if decision.up_to_date:
        return "ok", decision.reason
    return ("stale" if built else "todo"), f"{decision.reason}; `{spec.command}`"


def needed_stages(final: StageSpec) -> set[str]:
    """The names of `final` and of every stage upstream of it."""
    names = {final.name}
    for upstream in final.upstream:
        names |= needed_stages(upstream)
    return names


@app.command()
@one_line_errors
def status(config: ConfigOption, set_: SetOption = None) -> None:
    """Show which stage outputs are up to date with the config and their inputs."""
    cfg = load(config, set_)
    stages = all_stages(cfg)
    needed = needed_stages(stages[-1])
    for spec in stages:
        state, reason = stage_status(spec, cfg)
        if state != "ok" and spec.name not in needed:
            state, reason = "extra", f"not needed by this config's evaluation ({reason})"
        typer.echo(f"{state:<5} {spec.name:<20} {reason}")


if __name__ == "__main__":
    app()
