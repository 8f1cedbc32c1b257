"""`python -m shared.datasets prepare --config PATH [--set k=v ...] [--force]`.

What it does follows `data.kind` (`data.name` only names the run):
demo: generate the synthetic dataset, then train the tiny CLIP (each skipped when up to date).
coco: download COCO 2014 + the Karpathy split where the network allows (exit 2 otherwise).
flickr30k: check the images (else one line: where to place them), download Karpathy's json
    where the network allows, write the COCO caption json (shared/datasets/flickr30k.py).
vg: convert Visual Genome's files under vg.root (shared/datasets/visual_genome.py).
nocaps: convert the nocaps validation json, write the domain subsets (shared/datasets/nocaps.py).
karpathy: a Karpathy-format json already on disk: check it, its images and annotation files.
"""

from __future__ import annotations

from pathlib import Path

import typer

from shared.cli import ConfigOption, ForceOption, SetOption, load, one_line_errors
from shared.config import Config, require_paths
from shared.datasets.coco_download import download_coco
from shared.datasets.demo_stage import prepare_demo_data
from shared.datasets.demo_writer import DemoPaths
from shared.datasets.flickr30k import prepare_flickr30k
from shared.datasets.nocaps import prepare_nocaps
from shared.datasets.visual_genome import prepare_visual_genome
from shared.datasets.tiny_clip import train_tiny_clip
from shared.karpathy import SPLITS, load_karpathy, split_records

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Prepare datasets (data.kind): the embedded demo (+ its tiny CLIP), "
                       "COCO, Flickr30k, Visual Genome, nocaps, or check a Karpathy-format "
                       "one on disk.")


@app.callback()
def main() -> None:
    """Dataset preparation."""


def _demo_path_warnings(config: Config) -> list[str]:
    paths = DemoPaths(Path(config.demo.output_dir))
    expected = {"data.karpathy_json": (config.data.karpathy_json, paths.karpathy_json),
                "data.image_root": (config.data.image_root, paths.image_root)}
    return [f"warning: {key} is {got!r} but the demo dataset is written to {want}"
            for key, (got, want) in expected.items() if Path(got) != want]


def check_karpathy(config: Config) -> str:
    """Check a Karpathy-format dataset on disk (json, every image, annotation files); the
    one-line summary, or an error naming the key or file."""
    data = config.data
    require_paths(config, "data.karpathy_json", "data.image_root", "data.captions_json",
                  "data.instances_json")
    records = load_karpathy(data.karpathy_json, data.image_root, check_images=True)
    counts = ", ".join(f"{split} {len(split_records(records, split))}" for split in SPLITS)
    return f"{data.name}: {data.karpathy_json}: {len(records)} images ({counts}), all present"


CONVERTERS = {"flickr30k": prepare_flickr30k, "vg": prepare_visual_genome,
              "nocaps": prepare_nocaps}
"""data.kind -> the function preparing that dataset (it returns the lines to print)."""


@app.command()
@one_line_errors
def prepare(config: ConfigOption, set_: SetOption = None, force: ForceOption = False) -> None:
    """Make the dataset of kind data.kind ready on disk."""
    cfg = load(config, set_)
    kind = cfg.data.kind
    if kind == "demo":
        for line in _demo_path_warnings(cfg):
            typer.echo(line, err=True)
        for stage in (prepare_demo_data, train_tiny_clip):
            for line in stage(cfg, force=force):
                typer.echo(line)
    elif kind == "coco":
        for line in download_coco(cfg.data):
            typer.echo(line)
    elif kind in CONVERTERS:
        for line in CONVERTERS[kind](cfg):
            typer.echo(line)
    else:  # "karpathy" (load_config allows no other kind)
        typer.echo(check_karpathy(cfg))


if __name__ == "__main__":
    app()
