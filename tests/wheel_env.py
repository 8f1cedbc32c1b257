"""A virtualenv with the project installed from its wheel, as a researcher installs it.

`start_wheel_env` builds the wheel and installs it non-editable, with only the runtime
dependencies and `faiss-cpu` (the `cpu` extra) into a fresh virtualenv, in a background process
started when the session begins (conftest), so its minute of pip overlaps the other tests.

Torch is reused, not reinstalled (as a cluster user installs their CUDA torch first): the new
venv sees the torch stack installed here (torch, torchvision and what they require; nothing
else of this venv, so no dev extra) through a `.pth` file naming a folder of links to it. The
PyPI CUDA build is several GB to install, and a CPU torch wheel does not fit PyPI's
torchvision.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent


def torch_closure() -> list[metadata.Distribution]:
    """torch, torchvision and every distribution they require (extras included), as
    installed here."""
    seen: dict[str, metadata.Distribution] = {}
    visited: set[tuple[str, frozenset[str]]] = set()
    todo = [Requirement("torch"), Requirement("torchvision")]
    while todo:
        wanted = todo.pop()
        name, extras = canonicalize_name(wanted.name), frozenset(wanted.extras)
        if (name, extras) in visited:
            continue
        visited.add((name, extras))
        try:
            seen[name] = dist = seen.get(name) or metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional or platform-specific requirement not installed here
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or any(requirement.marker.evaluate({"extra": e})
                                                 for e in extras or {""}):
                todo.append(requirement)
    return list(seen.values())


def link_torch_layer(layer: Path) -> Path:
    """A folder of links to the installed torch stack (`torch_closure`): top-level packages and
    dist-info folders, so pip in the new venv sees torch as installed and reuses it."""
    layer.mkdir(parents=True, exist_ok=True)
    for dist in torch_closure():
        site = Path(dist.locate_file(""))
        for top in {Path(f).parts[0] for f in dist.files or [] if not Path(f).is_absolute()}:
            source, target = site / top, layer / top
            if top not in ("..", "bin") and source.exists() and not target.exists():
                target.symlink_to(source)
    return layer


def copy_sources(target: Path) -> Path:
    """The checkout's tracked and not-ignored files (links kept) in `target`: the wheel is
    built from them, not from the checkout, whose `build/` may hold files removed since."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], cwd=REPO, check=True,
                            capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_symlink() or source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name, follow_symlinks=False)
    return target


def _script(root: Path, layer: Path) -> str:
    base_python = getattr(sys, "_base_executable", sys.executable)
    site = f"lib/python{sys.version_info.major}.{sys.version_info.minor}/site-packages"
    q = shlex.quote
    return "\n".join([
        "set -euo pipefail",
        f"{q(sys.executable)} -m pip wheel --quiet --no-deps -w {q(str(root / 'dist'))} "
        f"{q(str(root / 'src'))}",
        f"{q(base_python)} -m venv {q(str(root / 'venv'))}",
        f"echo {q(str(layer))} > {q(str(root / 'venv' / site / 'torch_layer.pth'))}",
        f"{q(str(root / 'venv' / 'bin' / 'pip'))} install --quiet "
        f"\"$(ls {q(str(root / 'dist'))}/fsgr_pma-*.whl)[cpu]\"",
    ])


@dataclass
class WheelEnv:
    """The background installation; `wait` returns the venv's bin folder once it is done."""

    root: Path
    process: subprocess.Popen

    @property
    def log(self) -> Path:
        return self.root / "install.log"

    def wait(self, timeout: float) -> Path:
        """The venv's `bin/` when the install succeeded; AssertionError with pip's tail if not."""
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError(f"wheel install took over {timeout:.0f} s") from None
        tail = self.log.read_text()[-3000:] if self.log.exists() else ""
        assert code == 0, f"wheel install failed ({code}):\n{tail}"
        return self.root / "venv" / "bin"

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.root, ignore_errors=True)


def start_wheel_env(root: Path) -> WheelEnv:
    """Start building the wheel and installing it into `root/venv` (in the background)."""
    root.mkdir(parents=True, exist_ok=True)
    layer = link_torch_layer(root / "torch_layer")
    copy_sources(root / "src")
    with (root / "install.log").open("w") as log:
        process = subprocess.Popen(["bash", "-c", _script(root, layer)], stdout=log,
                                   stderr=subprocess.STDOUT, cwd=root,
                                   env={**os.environ, "PIP_NO_WARN_SCRIPT_LOCATION": "1"})
    return WheelEnv(root, process)
