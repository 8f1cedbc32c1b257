"""`python -m cluster {features,activations,all}`: the prototype stage program.

Each command holds the lock on its prototypes folder while it runs (`shared.output_lock`), so a
second process on the same folder stops at once with exit status 2.
"""

from __future__ import annotations

import typer

from cluster.activation_prototypes import NoBankDump, cluster_activations
from cluster.feature_prototypes import cluster_features
from shared.cli import ConfigOption, ForceOption, SetOption, StageFailure, load, one_line_errors
from shared.manifest import StaleInputError
from shared.output_lock import output_lock
from shared.stages import cluster_activations_stage, prototypes_dir

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="FAISS prototypes: of the visual cache and of the decoder's key/value "
                       "banks.")


@app.command()
@one_line_errors
def features(config: ConfigOption, set_: SetOption = None, force: ForceOption = False) -> None:
    """K-Means prototypes of the visual feature cache -> prototypes/features.npz."""
    cfg = load(config, set_)
    with output_lock(prototypes_dir(cfg), "cluster features"):
        lines = cluster_features(cfg, force=force)
    for line in lines:
        typer.echo(line)


@app.command()
@one_line_errors
def activations(config: ConfigOption, set_: SetOption = None, force: ForceOption = False) -> None:
    """Per-layer M_K / M_V from the trainer's bank dump -> prototypes/memory.npz.

    Exit status 2 when training has not dumped banks yet.
    """
    cfg = load(config, set_)
    try:
        with output_lock(cluster_activations_stage(cfg).output.parent, "cluster activations"):
            lines = cluster_activations(cfg, force=force)
    except NoBankDump as err:
        raise StageFailure(str(err), 2) from None
    for line in lines:
        typer.echo(line)


@app.command("all")
@one_line_errors
def run_all(config: ConfigOption, set_: SetOption = None, force: ForceOption = False) -> None:
    """features, then activations when a current bank dump exists (else a note, exit status
    0: in `make all` training runs after this and rebuilds a stale dump)."""
    cfg = load(config, set_)
    with output_lock(prototypes_dir(cfg), "cluster features"):
        lines = cluster_features(cfg, force=force)
    for line in lines:
        typer.echo(line)
    try:
        with output_lock(cluster_activations_stage(cfg).output.parent, "cluster activations"):
            lines = cluster_activations(cfg, force=force)
    except NoBankDump as err:
        lines = [f"cluster activations: skipped: {err}"]
    except StaleInputError as err:
        lines = [f"cluster activations: skipped until training has run again: {err}"]
    for line in lines:
        typer.echo(line)


if __name__ == "__main__":
    app()
