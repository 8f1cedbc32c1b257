"""The demo dataset as a pipeline stage: generate it unless up to date, and the `--set`
overrides that point a config at a generated copy.

`prepare_demo_data` runs `demo_writer.generate_dataset` when `DATA_KEYS` of the config (or the
output) changed since the manifest was written, and reports counts and the language prior's
statistics in one line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shared.config import Config
from shared.datasets.demo_writer import (SUBSET_NAMES, DemoPaths, check_demo_config,
                                         generate_dataset)
from shared.manifest import StageSpec
from shared.stage_runner import StageResult, StageRun, run_stage

DATA_KEYS = ["demo.output_dir", "demo.seed", "demo.n_train", "demo.n_val", "demo.n_test",
             "demo.image_size", "demo.prior_pairs", "demo.prior_strength",
             "demo.counter_prior_fraction", "demo.synonym_rate"]


def data_stage(config: Config) -> StageSpec:
    """The generated demo dataset as a stage output (the output folder)."""
    return StageSpec("datasets.demo", Path(config.demo.output_dir), DATA_KEYS,
                     command="python -m shared.datasets prepare", label="demo data")


def prepare_demo_data(config: Config, force: bool = False) -> StageResult:
    """Generate the demo dataset unless up to date."""
    check_demo_config(config.demo)
    return run_stage(data_stage(config), config, _generate, force=force)


def _generate(run: StageRun) -> dict[str, Any]:
    summary = generate_dataset(run.config.demo)
    run.say(f"wrote {summary.n_images} images ({summary.n_restval} restval), "
            f"{summary.n_captions} captions, {summary.n_objects} objects to {run.spec.output} "
            f"in {summary.seconds:.1f}s ({run.reason})" + prior_line(summary.prior))
    return summary.__dict__


def prior_line(statistics: dict[str, Any]) -> str:
    """'; prior star+heart: heart | star 97%, ...; test subsets in_prior 210, ...' or ''."""
    if not statistics:
        return ""
    shares = ", ".join(f"{k} {100 * v['share_with_partner']:.0f}%"
                       for k, v in statistics["cooccurrence"].items())
    sizes = ", ".join(f"{k} {v}" for k, v in statistics["test_subsets"].items())
    return (f"; prior {' '.join(statistics['pairs'])} (train share with partner: {shares}); "
            f"test subsets: {sizes}")


def demo_overrides(output_dir: str | Path) -> list[str]:
    """`--set` overrides that put a demo dataset in `output_dir` and point `[data]` at it."""
    paths = DemoPaths(Path(output_dir))
    quote = json.dumps
    return [f"demo.output_dir={quote(str(paths.root))}",
            f"data.karpathy_json={quote(str(paths.karpathy_json))}",
            f"data.image_root={quote(str(paths.image_root))}",
            f"data.captions_json=[{quote(str(paths.captions_json))}]",
            f"data.instances_json=[{quote(str(paths.instances_json))}]",
            "eval.subsets={" + ", ".join(f"{name} = {quote(str(paths.subset(name)))}"
                                         for name in SUBSET_NAMES) + "}"]
