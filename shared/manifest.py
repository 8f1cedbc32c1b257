"""Stage manifests: what an output was built from, and whether it is still up to date.

Every stage output `X` (a store, a folder, a file) has a sibling `X.manifest.json` holding the
config values the stage depends on, the identities of its inputs (upstream stages by name,
plain files by content), the code version and the time. An output is up to date when its
manifest exists, both the config values and the input identities match the current ones, and
every upstream stage is itself up to date, recursively: a stage never runs on, or is reported
current from, inputs that a config change has made stale (`StaleInputError` names the first
stale stage up the DAG and the command that rebuilds it). Each manifest also holds a `build`
token, new whenever the stage runs; a downstream manifest records an upstream stage by its
identity and build (`upstream_token`), so a re-run, even a `--force` one with unchanged config
and inputs (new code), makes everything downstream of it stale automatically. The identity
itself stays a function of the config and inputs: an interrupted build resumes under it.

Input keys never hold where the runs or the checkout live (upstream stages by name, files
under the run folder or the repository by relative path, file identities by content), so
moving `runs/` (`data.run_root`) or the checkout keeps finished stages up to date.
"""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from shared.atomic_files import write_json_atomic
from shared.config import Config, hash_values

_FULL_HASH_LIMIT = 256 * 1024 * 1024
_SAMPLE_BYTES = 8 * 1024 * 1024
REPO_ROOT = Path(__file__).resolve().parent.parent


class StaleInputError(RuntimeError):
    """A stage's upstream stage is missing or stale for the current config (one line)."""


@dataclass
class StageSpec:
    """One stage output: where it goes, which config keys, plain input files and upstream
    stages it depends on, the command that builds it, and how it names itself in what it
    prints when not by its name ("demo data" for "datasets.demo")."""

    name: str
    output: Path
    config_keys: list[str]
    inputs: list[Path] = field(default_factory=list)
    upstream: list[StageSpec] = field(default_factory=list)
    command: str = ""
    label: str = ""

    @property
    def manifest_path(self) -> Path:
        return manifest_path(self.output)


@dataclass
class Decision:
    """Whether a stage must run, and why (one line, for the user)."""

    up_to_date: bool
    reason: str


def manifest_path(output: Path) -> Path:
    """`<output>.manifest.json`, beside the output."""
    output = Path(output)
    return output.with_name(output.name + ".manifest.json")


def read_manifest(output: Path) -> dict[str, Any] | None:
    """The manifest of `output`, or None when there is none (or it is unreadable)."""
    path = manifest_path(output)
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def file_fingerprint(path: Path) -> str:
    """Content hash of a file (for files over 256 MiB: size + hash of its first, middle and
    last 8 MiB, so a copied or moved file keeps its identity).

    Memoised on (path, size, mtime), so the several manifest checks of one run hash a large
    input (e.g. COCO's 140 MB Karpathy json) once, and a rewritten file is hashed again.
    """
    stat = Path(path).stat()
    return _fingerprint(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _fingerprint(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        if size > _FULL_HASH_LIMIT:
            digest.update(str(size).encode())
            for start in (0, size // 2, size - _SAMPLE_BYTES):
                fh.seek(start)
                digest.update(fh.read(_SAMPLE_BYTES))
            return "sampled-" + digest.hexdigest()[:16]
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def upstream_token(manifest: dict[str, Any]) -> str:
    """How a downstream manifest records an upstream output: `<identity>+<build>` (the build
    is new on every run of the stage); the bare identity for manifests written before builds
    were recorded, so finished runs stay current."""
    build = manifest.get("build")
    return f"{manifest['identity']}+{build}" if build else manifest["identity"]


def input_identity(path: Path) -> str:
    """Identity of an input: its manifest's `upstream_token` if it has one, else a file hash."""
    path = Path(path)
    manifest = read_manifest(path)
    if manifest is not None:
        return upstream_token(manifest)
    if path.is_file():
        return file_fingerprint(path)
    if path.exists():
        raise FileNotFoundError(f"input {path} has no manifest: run the stage that makes it")
    raise FileNotFoundError(f"input not found: {path}")


def input_key(path: Path, config: Config) -> str:
    """How a plain input file is named in a manifest: relative to the run folder
    (`runs:...`) or the repository (`repo:...`) when it lies in one, else its absolute path."""
    resolved = Path(path).resolve()
    for root, tag in ((config.run_dir.resolve(), "runs"), (REPO_ROOT, "repo")):
        if resolved.is_relative_to(root):
            return f"{tag}:{resolved.relative_to(root).as_posix()}"
    return str(resolved)


def _state(spec: StageSpec, config: Config) -> dict[str, Any]:
    """Config values and input identities of `spec` now, without looking further upstream."""
    values = config.select(spec.config_keys)
    try:
        inputs = {input_key(p, config): input_identity(p) for p in spec.inputs}
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{spec.name}: {err}") from None
    for upstream in spec.upstream:
        manifest = read_manifest(upstream.output)
        if manifest is None:
            raise StaleInputError(_rebuild_line(spec, upstream, "has not been built"))
        inputs[upstream.name] = upstream_token(manifest)
    return {"config": values, "config_hash": hash_values(values), "inputs": inputs,
            "identity": hash_values({"stage": spec.name, "config": values, "inputs": inputs})}


def current_state(spec: StageSpec, config: Config) -> dict[str, Any]:
    """Config values and input identities the stage would be built from now; raises
    `StaleInputError` when an upstream stage is missing or stale."""
    check_upstream(spec, config)
    return _state(spec, config)


def own_decision(spec: StageSpec, config: Config) -> Decision:
    """Up to date or not from `spec`'s own manifest alone (upstream assumed current)."""
    old = read_manifest(spec.output)
    if old is None or not Path(spec.output).exists():
        return Decision(False, "no complete output yet")
    now = _state(spec, config)
    changed = [k for k in sorted(set(now["config"]) | set(old.get("config", {})))
               if now["config"].get(k) != old.get("config", {}).get(k)]
    if changed:
        detail = ", ".join(f"{k}: {old.get('config', {}).get(k)!r} -> {now['config'].get(k)!r}"
                           for k in changed[:3])
        return Decision(False, f"config changed ({detail})")
    stale = [k for k, v in now["inputs"].items() if old.get("inputs", {}).get(k) != v]
    if stale:
        return Decision(False, f"input changed ({', '.join(stale)})")
    return Decision(True, f"up to date ({spec.output})")


def first_stale_upstream(spec: StageSpec, config: Config) -> tuple[StageSpec, str] | None:
    """The stage nearest the start of the DAG among `spec`'s upstream stages that is missing
    or not up to date (with the reason), or None when all of them are current."""
    for upstream in spec.upstream:
        found = first_stale_upstream(upstream, config)
        if found is not None:
            return found
        try:
            decision = own_decision(upstream, config)
        except FileNotFoundError as err:
            return upstream, f"an input is missing ({err})"
        if not decision.up_to_date:
            return upstream, decision.reason
    return None


def _rebuild_line(spec: StageSpec, upstream: StageSpec, reason: str) -> str:
    command = f": rebuild it with `{upstream.command}`" if upstream.command else ""
    return (f"{spec.name}: its input {upstream.name} ({upstream.output}) {reason}{command} "
            f"(same --config/--set; `make extract`/`make train` run the whole chain)")


def check_upstream(spec: StageSpec, config: Config) -> None:
    """Raise `StaleInputError` naming the first stale upstream stage and its command."""
    found = first_stale_upstream(spec, config)
    if found is not None:
        upstream, reason = found
        text = "has not been built" if reason == "no complete output yet" else \
            f"is stale ({reason})"
        raise StaleInputError(_rebuild_line(spec, upstream, text))


def decide(spec: StageSpec, config: Config, force: bool = False) -> Decision:
    """Up to date (skip) or not (run), with a one-line reason naming what changed; raises
    `StaleInputError` when an upstream stage is missing or stale (whatever `force` says)."""
    check_upstream(spec, config)
    if force:
        return Decision(False, "--force")
    return own_decision(spec, config)


def code_version() -> str:
    """Git commit of the code (with '+dirty' when modified) in a checkout; the installed
    distribution's version (`fsgr-pma <version>`) elsewhere; else 'unknown'."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():  # installed: never ask git about whatever holds the venv
        try:
            return f"fsgr-pma {metadata.version('fsgr-pma')}"
        except metadata.PackageNotFoundError:
            return "unknown"
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, text=True,
                             capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, text=True, capture_output=True, check=True).stdout
        return rev + ("+dirty" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_manifest(spec: StageSpec, config: Config, summary: dict[str, Any] | None = None,
                   state: dict[str, Any] | None = None) -> dict[str, Any]:
    """Atomically write the manifest that marks `spec.output` complete."""
    state = state or current_state(spec, config)
    manifest = {"stage": spec.name, "output": str(spec.output), **state,
                "build": uuid.uuid4().hex[:12], "code_version": code_version(),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "summary": summary or {}}
    write_json_atomic(spec.manifest_path, manifest)
    return manifest


def remove_manifest(output: Path) -> None:
    """Mark an output incomplete (before it is rebuilt)."""
    manifest_path(output).unlink(missing_ok=True)


def require_current(spec: StageSpec, config: Config, command: str = "") -> None:
    """Refuse to read an input that is missing or was built from another config (itself or
    anything upstream of it)."""
    decision = decide(spec, config)
    if not decision.up_to_date:
        raise StaleInputError(f"{spec.output} is not usable for this config "
                              f"({decision.reason}): run `{command or spec.command}` first")
