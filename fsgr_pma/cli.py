"""`fsgr-pma {data,extract,cluster,train,evaluate,status}`: every stage program under one
command, the same typer apps as `python -m shared.datasets`, `python -m extract`, ..."""

from __future__ import annotations

import typer

from cluster.__main__ import app as cluster_app
from evaluate.__main__ import app as evaluate_app
from extract.__main__ import app as extract_app
from shared.datasets.__main__ import app as data_app
from shared.status import status
from train.__main__ import main as train_main

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="FSGR + PMA captioning: prepare data, extract features, cluster "
                       "prototypes, train, evaluate. `--config` takes a path or a shipped "
                       "config's name (demo, coco, flickr30k, vg, nocaps).")
app.add_typer(data_app, name="data")
app.add_typer(extract_app, name="extract")
app.add_typer(cluster_app, name="cluster")
app.command("train")(train_main)
app.add_typer(evaluate_app, name="evaluate")
app.command("status")(status)


def main() -> None:
    """Entry point of the `fsgr-pma` console script."""
    app()


if __name__ == "__main__":
    main()
