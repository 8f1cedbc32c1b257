"""`python -m shared.datasets prepare --config PATH [--set k=v ...] [--force]`.

demo: generate the synthetic dataset, then train the tiny CLIP (each skipped when up to date).
coco: download COCO 2014 + the Karpathy split where the network allows (exit 2 otherwise).
flickr30k: check the files, or print the manual steps and exit 2.
"""

from __future__ import annotations

from pathlib import Path

import typer

from shared.cli import ConfigOption, ForceOption, SetOption, StageFailure, load, one_line_errors
from shared.config import Config
from shared.datasets.coco_download import download_coco, flickr30k_instructions
from shared.datasets.demo_scenes import DemoPaths, prepare_demo_data
from shared.datasets.tiny_clip import train_tiny_clip

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Prepare datasets: the embedded demo (+ its tiny CLIP), COCO, Flickr30k.")


@app.callback()
def main() -> None:
    """Dataset preparation."""


def _demo_path_warnings(config: Config) -> list[str]:
    paths = DemoPaths(Path(config.demo.output_dir))
    expected = {"data.karpathy_json": (config.data.karpathy_json, paths.karpathy_json),
                "data.image_root": (config.data.image_root, paths.image_root)}
    return [f"warning: {key} is {got!r} but the demo dataset is written to {want}"
            for key, (got, want) in expected.items() if Path(got) != want]


@app.command()
@one_line_errors
def prepare(config: ConfigOption, set_: SetOption = None, force: ForceOption = False) -> None:
    """Make the dataset named by data.name ready on disk."""
    cfg = load(config, set_)
    name = cfg.data.name
    if name == "demo":
        for line in _demo_path_warnings(cfg):
            typer.echo(line, err=True)
        _, line = prepare_demo_data(cfg, force=force)
        typer.echo(line)
        _, line = train_tiny_clip(cfg, force=force)
        typer.echo(line)
    elif name == "coco":
        for line in download_coco(cfg.data):
            typer.echo(line)
    elif name == "flickr30k":
        if Path(cfg.data.karpathy_json).is_file() and Path(cfg.data.image_root).is_dir():
            typer.echo(f"flickr30k: found {cfg.data.karpathy_json} and {cfg.data.image_root}")
            return
        typer.echo(flickr30k_instructions(cfg.data), err=True)
        raise StageFailure("flickr30k must be downloaded by hand (steps above)")
    else:
        raise StageFailure(f"config key 'data.name' is {name!r}: prepare knows demo, coco, "
                           "flickr30k")


if __name__ == "__main__":
    app()
