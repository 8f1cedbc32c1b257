"""`python -m extract {vocab,clip,concepts,fit,encode,all}`: the feature-extraction stage program.

Each stage holds the lock on its output while it runs (`shared.output_lock`; `clip` and
`encode` take theirs in `shared.chunked_stage`, shared between `--shard` processes), so a
second process on the same output stops at once with exit status 2.
"""

from __future__ import annotations

from typing import Annotated

import typer

from extract.clip_features import extract_clip
from extract.concepts import build_concepts
from extract.fsgr_encode import encode_fsgr
from extract.fsgr_fit import fit_fsgr
from extract.vocab_stage import build_vocab
from shared.chunked_stage import Shard
from shared.cli import ConfigOption, ForceOption, SetOption, load, one_line_errors
from shared.output_lock import output_lock
from shared.run_log import require_tensorboard
from shared.stages import concepts_stage, fit_stage, vocab_stage

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Extract cached features: vocabulary, CLIP patch tokens, FSGR features.")

ShardOption = Annotated[str, typer.Option(
    "--shard", help="Fill only shard i of n (i/n, 0-based); run n processes to fill one store.")]
FAILED_IMAGES_EXIT = 3


@app.command()
@one_line_errors
def vocab(config: ConfigOption, set_: SetOption = None, force: ForceOption = False) -> None:
    """Build the caption vocabulary of the training split."""
    cfg = load(config, set_)
    with output_lock(vocab_stage(cfg).output, "extract vocab"):
        _, line = build_vocab(cfg, force=force)
    typer.echo(line)


@app.command()
@one_line_errors
def clip(config: ConfigOption, set_: SetOption = None, force: ForceOption = False,
         shard: ShardOption = "0/1") -> None:
    """Run CLIP once over every image into features/clip.{zarr,h5}.

    Exit status 3 when the run completed but some images could not be read, no more than
    `clip.max_failed_fraction` (listed in features/clip.failures.jsonl); a later run that
    finds the store complete exits 0. More failures: exit status 2, the store is not marked
    complete, and the next run retries only the failed images.
    """
    result = extract_clip(load(config, set_), force=force, shard=Shard.parse(shard))
    for line in result.messages:
        typer.echo(line)
    if not result.skipped and result.failed:
        raise typer.Exit(FAILED_IMAGES_EXIT)


@app.command()
@one_line_errors
def concepts(config: ConfigOption, set_: SetOption = None, force: ForceOption = False) -> None:
    """Build FSGR's concept codebook (CLIP text embeddings of the concept words)."""
    cfg = load(config, set_)
    with output_lock(concepts_stage(cfg).output, "extract concepts"):
        _, line = build_concepts(cfg, force=force)
    typer.echo(line)


@app.command()
@one_line_errors
def fit(config: ConfigOption, set_: SetOption = None, force: ForceOption = False) -> None:
    """Train the FSGR modules on the CLIP cache (with an auxiliary caption decoder)."""
    cfg = load(config, set_)
    with output_lock(fit_stage(cfg).output, "extract fit"):
        lines = fit_fsgr(cfg, force=force)
    for line in lines:
        typer.echo(line)


@app.command()
@one_line_errors
def encode(config: ConfigOption, set_: SetOption = None, force: ForceOption = False) -> None:
    """Run the fitted FSGR modules over every image into features/fsgr.{zarr,h5}."""
    for line in encode_fsgr(load(config, set_), force=force):
        typer.echo(line)


@app.command("all")
@one_line_errors
def run_all(config: ConfigOption, set_: SetOption = None, force: ForceOption = False) -> None:
    """vocab -> clip -> concepts -> fit -> encode, skipping what is up to date.

    `--force` redoes every step. Stops at the first step that fails (exit status 2), e.g.
    when more images could not be read than `clip.max_failed_fraction` allows; the error
    names the failure list.
    """
    cfg = load(config, set_)
    require_tensorboard(cfg.train.tensorboard)  # fit logs to it: fail before the CLIP cache
    with output_lock(vocab_stage(cfg).output, "extract vocab"):
        typer.echo(build_vocab(cfg, force=force)[1])
    for line in extract_clip(cfg, force=force).messages:
        typer.echo(line)
    with output_lock(concepts_stage(cfg).output, "extract concepts"):
        typer.echo(build_concepts(cfg, force=force)[1])
    with output_lock(fit_stage(cfg).output, "extract fit"):
        lines = fit_fsgr(cfg, force=force)
    for line in lines:
        typer.echo(line)
    for line in encode_fsgr(cfg, force=force):
        typer.echo(line)


if __name__ == "__main__":
    app()
