"""The project as a researcher installs it: the wheel, non-editable, in a fresh virtualenv with
only the runtime dependencies and faiss-cpu, run from a folder outside the checkout.

The virtualenv is built in the background from the start of the session (conftest)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from shared.config import load_config
from shared.karpathy import load_karpathy
from shared.stages import eval_dir, vocab_stage

STAGE_PROGRAMS = ["shared.datasets", "extract", "cluster", "train", "evaluate", "shared.status",
                  "fsgr_pma.cli"]

HELP_OF_EVERY_PROGRAM = """
import importlib, sys
from pathlib import Path
from typer.testing import CliRunner
venv = Path(sys.prefix).resolve()
for name in {programs!r}:
    module = importlib.import_module(name if name in ("shared.status", "fsgr_pma.cli")
                                     else name + ".__main__")
    assert Path(module.__file__).resolve().is_relative_to(venv), (name, module.__file__)
    result = CliRunner().invoke(module.app, ["--help"])
    assert result.exit_code == 0, (name, result.output, result.exception)
    print("ok", name)
"""


def _run(bin_dir: Path, args: list[str], cwd: Path, timeout: float = 300
         ) -> subprocess.CompletedProcess:
    """A command of the wheel's virtualenv, outside the checkout, with no PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run([str(bin_dir / args[0]), *args[1:]], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=timeout)


def _set_args(sets: list[str]) -> list[str]:
    return [arg for value in sets for arg in ("--set", value)]


def test_every_stage_program_imports_and_helps_from_the_wheel(wheel_bin, tmp_path) -> None:
    result = _run(wheel_bin, ["python", "-c",
                              HELP_OF_EVERY_PROGRAM.format(programs=STAGE_PROGRAMS)], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == [w for n in STAGE_PROGRAMS for w in ("ok", n)]
    console = _run(wheel_bin, ["fsgr-pma", "--help"], tmp_path)
    assert console.returncode == 0, console.stderr
    for command in ("data", "extract", "cluster", "train", "evaluate", "status"):
        assert f" {command} " in console.stdout


def test_a_shipped_config_by_name_writes_under_the_current_folder(wheel_bin, demo_run,
                                                                 tmp_path) -> None:
    _, sets = demo_run
    status = _run(wheel_bin, ["fsgr-pma", "status", "--config", "demo"], tmp_path)
    assert status.returncode == 0, status.stderr
    assert status.stdout.splitlines()[0].startswith("todo")
    local = [s for s in sets if not s.startswith("data.run_root=")]  # the default: runs/
    vocab = _run(wheel_bin, ["fsgr-pma", "extract", "vocab", "--config", "demo",
                             *_set_args(local)], tmp_path)
    assert vocab.returncode == 0, vocab.stderr
    relative = vocab_stage(load_config("demo", local)).output
    assert not relative.is_absolute() and (tmp_path / relative).is_file()
    no_board = _run(wheel_bin, ["fsgr-pma", "train", "--config", "demo", *_set_args(local),
                                "--set", "train.tensorboard=true"], tmp_path)
    assert (no_board.returncode, no_board.stderr) == (  # not installed without the extra
        2, "error: train.tensorboard = true needs TensorBoard: pip install "
           "'fsgr-pma[tensorboard]'\n")


def test_evaluate_caption_from_the_wheel_gives_the_checkout_captions(wheel_bin, scored_run,
                                                                     tmp_path) -> None:
    config, sets, _ = scored_run
    captions = {c["image_id"]: c["caption"] for c in
                json.loads((eval_dir(config) / "captions.json").read_text())}
    records = [r for r in load_karpathy(config.data.karpathy_json, config.data.image_root)
               if r.image_id in captions][:4]
    folder = tmp_path / "mine"
    folder.mkdir()
    for record in records:
        shutil.copy(record.path, folder / record.path.name)
    out = tmp_path / "captions.json"
    result = _run(wheel_bin, ["fsgr-pma", "evaluate", "caption", str(folder), "--config", "demo",
                              *_set_args(sets), "--output", str(out)], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    written = {Path(e["file"]).name: e["caption"] for e in json.loads(out.read_text())}
    assert written == {r.path.name: captions[r.image_id] for r in records}
