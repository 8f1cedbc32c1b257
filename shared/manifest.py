"""Stage manifests: what an output was built from, and whether it is still up to date.

Every stage output `X` (a store, a folder, a file) has a sibling `X.manifest.json` holding the
config values the stage depends on, the identities of its inputs (other manifests or plain
files), the code version and the time. An output is up to date when its manifest exists and
both the config values and the input identities match the current ones. A stage that re-runs
gets a new identity, so everything downstream of it becomes stale automatically.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.config import Config, hash_values

_FULL_HASH_LIMIT = 256 * 1024 * 1024


@dataclass
class StageSpec:
    """One stage output: where it goes, which config keys and which inputs it depends on."""

    name: str
    output: Path
    config_keys: list[str]
    inputs: list[Path] = field(default_factory=list)

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
    """Content hash of a file (size + mtime for files over 256 MiB).

    Memoised on (path, size, mtime), so the several manifest checks of one run hash a large
    input (e.g. COCO's 140 MB Karpathy json) once, and a rewritten file is hashed again.
    """
    stat = Path(path).stat()
    return _fingerprint(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _fingerprint(path: str, size: int, mtime_ns: int) -> str:
    if size > _FULL_HASH_LIMIT:
        return f"size{size}-mtime{mtime_ns}"
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def input_identity(path: Path) -> str:
    """Identity of an input: the identity in its manifest if it has one, else a file hash."""
    path = Path(path)
    manifest = read_manifest(path)
    if manifest is not None:
        return manifest["identity"]
    if path.is_file():
        return file_fingerprint(path)
    if path.exists():
        raise FileNotFoundError(f"input {path} has no manifest: run the stage that makes it")
    raise FileNotFoundError(f"input not found: {path}")


def current_state(spec: StageSpec, config: Config) -> dict[str, Any]:
    """Config values and input identities the stage would be built from now."""
    values = config.select(spec.config_keys)
    try:
        inputs = {str(p): input_identity(p) for p in spec.inputs}
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{spec.name}: {err}") from None
    return {"config": values, "config_hash": hash_values(values), "inputs": inputs,
            "identity": hash_values({"stage": spec.name, "config": values, "inputs": inputs})}


def decide(spec: StageSpec, config: Config, force: bool = False) -> Decision:
    """Up to date (skip) or not (run), with a one-line reason naming what changed."""
    if force:
        return Decision(False, "--force")
    old = read_manifest(spec.output)
    if old is None or not Path(spec.output).exists():
        return Decision(False, "no complete output yet")
    now = current_state(spec, config)
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


def code_version() -> str:
    """Git commit of the code (with '+dirty' when modified), or 'unknown'."""
    root = Path(__file__).resolve().parent.parent
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
                "code_version": code_version(),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "summary": summary or {}}
    write_json_atomic(spec.manifest_path, manifest)
    return manifest


def remove_manifest(output: Path) -> None:
    """Mark an output incomplete (before it is rebuilt)."""
    manifest_path(output).unlink(missing_ok=True)


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON via a temporary file + fsync + rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with tmp.open("w") as fh:
        json.dump(payload, fh, indent=2, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def require_current(spec: StageSpec, config: Config, command: str) -> None:
    """Refuse to read an input that is missing or was built from another config."""
    decision = decide(spec, config)
    if not decision.up_to_date:
        raise RuntimeError(f"{spec.output} is not usable for this config "
                           f"({decision.reason}): run `{command}` first")
