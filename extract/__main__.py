"""`python -m extract {vocab,clip,concepts,fit,encode,all}`: the feature-extraction stage program.

Each stage holds the lock on its output while it runs (`shared.output_lock`; `clip` and
`encode` take theirs in `shared.chunked_stage`, shared between `--shard` processes), so a
second process on the same output stops at once with exit status 2.

`clip` and `encode` scale out with `--shard i/n` (one process per shard, on one Zarr store) or
under `torchrun --nproc_per_node G -m extract clip|encode ...`, which gives each process its
shard from RANK / WORLD_SIZE and its GPU from LOCAL_RANK (`shared.chunked_stage`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Annotated

import typer

from extract.clip_features import extract_clip
from extract.concepts import build_concepts
from extract.fsgr_encode import encode_fsgr
from extract.fsgr_fit import fit_fsgr
from extract.vocab_stage import build_vocab
from shared.chunked_stage import launcher_shard, resolve_shard
from shared.cli import ConfigOption, ForceOption, SetOption, load, one_line_errors
from shared.config import Config
from shared.manifest import StageSpec
from shared.output_lock import output_lock
from shared.run_log import require_tensorboard
from shared.stage_runner import label
from shared.stages import concepts_stage, fit_stage, vocab_stage

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Extract cached features: vocabulary, CLIP patch tokens, FSGR features.")

ShardOption = Annotated[str | None, typer.Option(
    "--shard", help="Fill only shard i of n (i/n, 0-based); run n processes to fill one store. "
                    "Under torchrun the shard is RANK/WORLD_SIZE (no --shard needed).")]
FAILED_IMAGES_EXIT = 3


def _echo(lines: Iterable[str]) -> None:
    for line in lines:
        typer.echo(line)


def _locked(stage: Callable[[Config], StageSpec], build: Callable[..., Iterable[str]],
            cfg: Config, force: bool) -> None:
    """Run a stage under its output's lock and print its lines."""
    spec = stage(cfg)
    with output_lock(spec.output, label(spec)):
        result = build(cfg, force=force)
    _echo(result)


@app.command()
@one_line_errors
def vocab(config: ConfigOption, set_: SetOption = None, force: ForceOption = False) -> None:
    """Build the caption vocabulary of the training split."""
    _locked(vocab_stage, build_vocab, load(config, set_), force)


@app.command()
@one_line_errors
def clip(config: ConfigOption, set_: SetOption = None, force: ForceOption = False,
         shard: ShardOption = None) -> None:
    """Run CLIP once over every image into features/clip.{zarr,h5}.

    Exit status 3 when the run completed but some images could not be read, no more than
    `clip.max_failed_fraction` (listed in features/clip.failures.jsonl); a later run that
    finds the store complete exits 0. More failures: exit status 2, the store is not marked
    complete, and the next run retries only the failed images.
    """
    launched = launcher_shard()
    result = extract_clip(load(config, set_), force=force, shard=resolve_shard(shard))
    _echo(result)
    # under torchrun a non-zero exit ends the other ranks: only the rank that completed the
    # store reports unreadable images by its exit status
    if result.ran and result.summary["failed"] and (launched is None or result.complete):
        raise typer.Exit(FAILED_IMAGES_EXIT)


@app.command()
@one_line_errors
def concepts(config: ConfigOption, set_: SetOption = None, force: ForceOption = False) -> None:
    """Build FSGR's concept codebook (CLIP text embeddings of the concept words)."""
    _locked(concepts_stage, build_concepts, load(config, set_), force)


@app.command()
@one_line_errors
def fit(config: ConfigOption, set_: SetOption = None, force: ForceOption = False) -> None:
    """Train the FSGR modules on the CLIP cache (with an auxiliary caption decoder)."""
    _locked(fit_stage, fit_fsgr, load(config, set_), force)


@app.command()
@one_line_errors
def encode(config: ConfigOption, set_: SetOption = None, force: ForceOption = False,
           shard: ShardOption = None) -> None:
    """Run the fitted FSGR modules over every image into features/fsgr.{zarr,h5}."""
    _echo(encode_fsgr(load(config, set_), force=force, shard=resolve_shard(shard)))


@app.command("all")
@one_line_errors
def run_all(config: ConfigOption, set_: SetOption = None, force: ForceOption = False) -> None:
    """vocab -> clip -> concepts -> fit -> encode, skipping what is up to date.

    `--force` redoes every step. Stops at the first step that fails (exit status 2), e.g.
    when more images could not be read than `clip.max_failed_fraction` allows; the error
    names the failure list.
    """
    launched = launcher_shard()
    if launched is not None and launched.count > 1:
        raise ValueError("extract all does not run under torchrun: launch `extract clip` and "
                         "`extract encode` with torchrun, the other steps as one process")
    cfg = load(config, set_)
    require_tensorboard(cfg.train.tensorboard)  # fit logs to it: fail before the CLIP cache
    _locked(vocab_stage, build_vocab, cfg, force)
    _echo(extract_clip(cfg, force=force))
    _locked(concepts_stage, build_concepts, cfg, force)
    _locked(fit_stage, fit_fsgr, cfg, force)
    _echo(encode_fsgr(cfg, force=force))


if __name__ == "__main__":
    app()
