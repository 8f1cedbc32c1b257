"""`python -m evaluate {score,report,caption,compare,transfer}`: the evaluation stage program.

`score` and `report` hold the lock on the eval folder (`shared.output_lock`), so a second
process on the same folder stops at once with exit status 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from evaluate.captioner import Captioner
from evaluate.compare import BootstrapSettings, compare_runs
from evaluate.paired_bootstrap import MIN_RESAMPLES
from evaluate.report_inputs import build_report
from evaluate.score import score as score_split
from evaluate.transfer import score_transfer
from shared.atomic_files import write_json_atomic, write_text_atomic
from shared.cli import ConfigOption, ForceOption, SetOption, load, one_line_errors
from shared.output_lock import output_lock
from shared.stages import eval_dir

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Decode and score a split, render its report, caption your own images, "
                       "compare runs.")
UNREADABLE_EXIT = 3


@app.command()
@one_line_errors
def score(config: ConfigOption, set_: SetOption = None, force: ForceOption = False,
          quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False
          ) -> None:
    """Beam-search `eval.split` with the best checkpoint and score it (BLEU, METEOR, ROUGE-L,
    CIDEr, SPICE when available, CHAIR, optional CLIP-S): runs/<dataset>/eval/<split>/."""
    cfg = load(config, set_)
    with output_lock(eval_dir(cfg), "evaluate score"):
        lines = score_split(cfg, force=force, progress=not quiet)
    for line in lines:
        typer.echo(line)


@app.command()
@one_line_errors
def transfer(config: ConfigOption,
             run: Annotated[Path, typer.Option(
                 "--run", help="The finished run that captions (e.g. runs/coco).")],
             set_: SetOption = None, force: ForceOption = False) -> None:
    """Score a finished run (e.g. COCO-trained) on this config's `eval.split` (e.g. nocaps
    val), overall and per `eval.subsets` entry: runs/<dataset>/eval/<split>/."""
    cfg = load(config, set_)
    with output_lock(eval_dir(cfg), "evaluate transfer"):
        lines = score_transfer(cfg, run, force=force)
    for line in lines:
        typer.echo(line)


@app.command()
@one_line_errors
def report(config: ConfigOption, set_: SetOption = None,
           max_images: Annotated[int, typer.Option(
               "--max-images", help="Show at most this many images (0: all).")] = 0) -> None:
    """Write the self-contained HTML report of the scored split (eval/<split>/report.html)."""
    cfg = load(config, set_)
    with output_lock(eval_dir(cfg), "evaluate report"):
        path = build_report(cfg, max_images=max_images)
    typer.echo(f"evaluate report: {path}")


@app.command()
@one_line_errors
def caption(images: Annotated[list[Path], typer.Argument(
                help="Image files and/or folders (searched recursively).")],
            config: ConfigOption, set_: SetOption = None,
            output: Annotated[Path | None, typer.Option(
                "--output", "-o", help="Write [{file, caption}] json here.")] = None,
            batch_size: Annotated[int, typer.Option("--batch-size")] = 32) -> None:
    """Caption raw images end to end (CLIP -> FSGR -> decoder) with a finished run.

    Unreadable files are reported on stderr; exit status 3 when there were any.
    """
    captioner = Captioner(load(config, set_))
    results, failed = [], 0
    for result in captioner.iter_captions(images, batch_size=batch_size):
        if result.error is not None:
            failed += 1
            typer.echo(f"unreadable: {result.source}: {result.error}", err=True)
            continue
        results.append({"file": str(result.source), "caption": result.text})
        if output is None:
            typer.echo(f"{result.source}\t{result.text}")
    if output is not None:
        write_json_atomic(output, results)
        typer.echo(f"evaluate caption: {len(results)} captions -> {output}")
    if not results and not failed:
        typer.echo("evaluate caption: no image files found", err=True)
    if failed:
        typer.echo(f"evaluate caption: {failed} file(s) could not be read", err=True)
        raise typer.Exit(UNREADABLE_EXIT)


@app.command()
@one_line_errors
def compare(variants: Annotated[list[str], typer.Argument(
                help="Rows, the first one the baseline: [LABEL=]RUN[,RUN...], a RUN being a "
                     "metrics.json, an eval folder or a run folder; several RUNs (one per "
                     "training seed, LABEL required) make one row, mean ± sd.")],
            split: Annotated[str, typer.Option("--split")] = "test",
            output: Annotated[Path | None, typer.Option(
                "--output", "-o",
                help="Also write OUTPUT.md, OUTPUT.tex and OUTPUT.json (every number).")] = None,
            resamples: Annotated[int, typer.Option(
                "--resamples", help="Paired-bootstrap resamples of the test images "
                                    f"(at least {MIN_RESAMPLES}).")] = 1000,
            seed: Annotated[int, typer.Option(
                "--seed", help="Seed of the bootstrap resamples.")] = 0,
            confidence: Annotated[float, typer.Option(
                "--confidence", help="Confidence level of the intervals.")] = 0.95) -> None:
    """One table (markdown and LaTeX, scores x 100, best in bold) of several evaluations:
    mean ± sd over each row's seeds, paired-bootstrap intervals of the CIDEr / CHAIRs /
    CHAIRi differences from the first row over the test images (* when an interval excludes
    0), each row's signature and each run's provenance."""
    result = compare_runs(variants, split, BootstrapSettings(resamples, seed, confidence))
    typer.echo(result.markdown)
    typer.echo("")
    typer.echo(result.latex)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(output.with_suffix(".md"), result.markdown + "\n")
        write_text_atomic(output.with_suffix(".tex"), result.latex + "\n")
        write_json_atomic(output.with_suffix(".json"), result.payload)
        typer.echo(f"evaluate compare: wrote {output.with_suffix('.md')}, "
                   f"{output.with_suffix('.json')} and {output.with_suffix('.tex')}")


if __name__ == "__main__":
    app()
