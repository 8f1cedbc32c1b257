"""Checkpoint files on disk: writing them whole, keeping the previous resume point, and
reading them back with one-line errors.

- `save_atomic`: `torch.save` to `<name>.tmp`, fsync, rename over `<name>`, fsync the folder:
  a checkpoint is whole or absent. Whatever stops the write (disk full, quota, Ctrl-C), no
  `.tmp` stays behind; a full disk or quota is one line naming the file, the bytes needed and
  the bytes free (`DiskFull`).
- Resume points (`last.pt`) rotate (`Rotation`): before `save_atomic` replaces `last.pt`,
  `keep_previous` hard-links it to `last.prev.pt`, so the previous epoch's point stays until
  the new one is complete and `last.pt` itself is never missing (where hard links are refused
  it is renamed instead, and a run killed in that short window finds only `last.prev.pt`:
  `pick_resume_point` takes it). Only a run's own points rotate: a run that started over
  drops a `last.prev.pt` left by an earlier run, and one that resumed from `last.prev.pt`
  (its `last.pt` was broken) keeps it until its own first save is complete.
- `load_checkpoint`: the one way to read a checkpoint or weights file (`weights_only`): a
  missing, empty, truncated or foreign file, or one without the expected entries, is one
  line naming the file and what to do, never torch's own message (which advises loading with
  `weights_only=False`).
- `pick_resume_point`: `last.pt` when it is readable, is this run's and passes the loop's own
  `check` (its memory banks file); else `last.prev.pt` when that is; else none. Each fallback
  comes with a warning line naming the files.
"""

from __future__ import annotations

import errno
import os
import pickle
import shutil
import warnings
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from shared.atomic_files import atomic_path, fsync_dir

RESUME_KEYS = ("identity", "model", "optimizer", "torch_rng", "epoch")  # every loop's last.pt


class UnreadableCheckpoint(RuntimeError):
    """A checkpoint that cannot be used: `reason` says why, `fix` what to do (one line)."""

    def __init__(self, path: Path, reason: str, fix: str = "") -> None:
        self.path, self.reason, self.fix = Path(path), reason, fix
        super().__init__(f"{path}: {reason}" + (f"; {fix}" if fix else ""))


class DiskFull(OSError):
    """Saving a checkpoint ran out of disk space or quota; the message says how much."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.errno = code


# -- reading ---------------------------------------------------------------------------------

def _why_unreadable(path: Path, err: Exception) -> str:
    """Why `torch.load` failed on `path`, in our words (torch's message is not passed on:
    an UnpicklingError's advises `weights_only=False`, i.e. running the file's code)."""
    size = path.stat().st_size if path.exists() else 0
    if size == 0:
        return "empty file (0 bytes)"
    if not zipfile.is_zipfile(path):
        return f"truncated, or not a torch checkpoint ({size:,} bytes)"
    if isinstance(err, pickle.UnpicklingError):
        return "it holds Python objects a checkpoint of this pipeline never has"
    detail = " ".join(str(err).split())[:120]
    if not detail or "weights_only" in detail:
        return f"damaged torch checkpoint ({type(err).__name__})"
    return f"damaged torch checkpoint ({type(err).__name__}: {detail})"


def load_checkpoint(path: Path, what: str, fix: str, keys: Iterable[str] = (),
                    map_location: Any = "cpu", mmap: bool = False) -> dict[str, Any]:
    """`torch.load(path, weights_only=True)` of a dict holding at least `keys`.

    `what` names the file in messages ("decoder checkpoint"), `fix` says what to do about it
    ("re-run `python -m train --force`"). Raises FileNotFoundError when it is missing and
    `UnreadableCheckpoint` when it is empty, truncated, not a torch file, holds objects a
    weights-only load refuses, is not a dict or lacks one of `keys`. `mmap=True` maps the
    tensors instead of reading them (a cheap check of a large file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}" + (f" ({fix})" if fix else ""))
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": not ours to show
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location=map_location, weights_only=True,
                                 mmap=mmap)
    except MemoryError:
        raise
    except Exception as err:  # noqa: BLE001 - torch raises anything from EOFError to KeyError
        raise UnreadableCheckpoint(path, f"not a readable {what}: {_why_unreadable(path, err)}",
                                   fix) from None
    if not isinstance(payload, dict):
        raise UnreadableCheckpoint(path, f"not a {what}: it holds a {type(payload).__name__}, "
                                         f"not a dict", fix)
    missing = [key for key in keys if key not in payload]
    if missing:
        raise UnreadableCheckpoint(path, f"not a {what}: no {', '.join(map(repr, missing))} "
                                         f"entr{'y' if len(missing) == 1 else 'ies'}", fix)
    return payload


def read_entry(path: Path, key: str) -> Any:
    """`path`'s top-level entry `key` (tensors only mapped, not read), or None when the file
    is missing, unreadable or has no such entry."""
    try:
        return load_checkpoint(path, "checkpoint", "", mmap=True).get(key)
    except (OSError, UnreadableCheckpoint):
        return None


# -- writing ---------------------------------------------------------------------------------

def _tensor_bytes(value: Any) -> int:
    """Bytes of the tensors in a (nested) checkpoint payload."""
    if torch.is_tensor(value):
        return value.numel() * value.element_size()
    if isinstance(value, Mapping):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:,} bytes"


def _space_error(err: BaseException | None) -> int | None:
    """ENOSPC / EDQUOT when `err` or an exception it was raised from is a full disk or
    quota: torch's zip writer turns a failed write into its own RuntimeError ("unexpected
    pos") while closing the archive, the OSError is then its context."""
    seen = 0
    while err is not None and seen < 10:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return err.errno
        err = err.__cause__ or err.__context__
        seen += 1
    return None


def save_atomic(payload: dict[str, Any], path: Path) -> None:
    """`torch.save` to `<path>.tmp`, fsync, rename over `path`, fsync the folder: a
    checkpoint is whole or absent. On any failure the `.tmp` is removed; a full disk or
    quota raises `DiskFull` naming the file, the bytes needed and the bytes free."""
    path = Path(path)
    written = 0
    try:
        with atomic_path(path, durable=True, tmp_name=path.name + ".tmp") as tmp:
            try:
                with tmp.open("wb") as fh:
                    torch.save(payload, fh)
            finally:  # what reached the disk, for `DiskFull`
                written = tmp.stat().st_size if tmp.exists() else 0
    except BaseException as err:
        code = _space_error(err)
        if code is not None:
            needed = max(written, _tensor_bytes(payload))
            free = shutil.disk_usage(path.parent).free
            cause = "no space left on the device" if code == errno.ENOSPC else \
                "disk quota exceeded"
            raise DiskFull(f"cannot write {path}: {cause}: needs about {_size(needed)}, "
                           f"{_size(free)} free there ({needed:,} / {free:,} bytes); free some "
                           f"space (or move data.run_root) and re-run", code) from None
        raise


# -- resume points ---------------------------------------------------------------------------

def previous_path(path: Path) -> Path:
    """`last.pt` -> `last.prev.pt`: the resume point before the current one."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def keep_previous(path: Path) -> None:
    """Before `save_atomic` replaces the resume point `path`: keep it as `previous_path`
    (a hard link, or a rename where links are refused). Skipped when `path` is missing or not
    a complete torch file, so a good previous point is never replaced by a broken one."""
    path = Path(path)
    if not path.is_file() or not zipfile.is_zipfile(path):
        return
    prev = previous_path(path)
    try:
        with atomic_path(prev, tmp_name=prev.name + ".tmp") as tmp:
            tmp.unlink(missing_ok=True)  # one a killed run left
            os.link(path, tmp)
    except OSError:  # no hard links here
        path.replace(prev)  # `last.pt` is absent until the new one is renamed in
    fsync_dir(path.parent)


class Rotation:
    """When a loop writes its resume point `path` (call `before_save()` just before each
    `save_atomic` of it): rotate (`keep_previous`) when `path` is this run's own, i.e. the
    point it resumed from or one it wrote; after starting over (`resumed_from` None) remove
    another run's `previous_path` instead; after resuming from `previous_path` leave it."""

    def __init__(self, path: Path, resumed_from: Path | None) -> None:
        self.path = Path(path)
        self.own = resumed_from is not None and Path(resumed_from) == self.path
        self.started_over = resumed_from is None

    def before_save(self) -> None:
        if self.own:
            keep_previous(self.path)
        elif self.started_over:
            previous_path(self.path).unlink(missing_ok=True)
        self.own, self.started_over = True, False


Check = Callable[[Path, dict], None]


def _usable(path: Path, identity: str, check: Check | None) -> tuple[bool | None, str]:
    """(True, "") when `path` can be resumed from, (None, "") when it is another run's,
    (False, why) when it is missing or broken."""
    try:
        ckpt = load_checkpoint(path, "resume point", "", keys=RESUME_KEYS, mmap=True)
        if ckpt["identity"] != identity:
            return None, ""
        if check is not None:
            check(path, ckpt)
    except FileNotFoundError:
        return False, "is missing"
    except UnreadableCheckpoint as err:
        reason = err.reason if err.path == path else str(err)
        return False, f"is unusable ({reason})"
    return True, ""


def pick_resume_point(path: Path, identity: str, check: Check | None = None
                      ) -> tuple[Path | None, list[str]]:
    """The file to resume the run `identity` from, and the warnings to show.

    `path` (`last.pt`) when it is readable, this run's, and `check(path, ckpt)` (the loop's
    own files; raises `UnreadableCheckpoint`) passes; when it is another run's: None (start
    over, no warning). When it is missing or broken: `previous_path(path)` if that is usable,
    else None (start over), each with a one-line warning naming both files. Nothing at all
    (a first run): (None, [])."""
    path = Path(path)
    prev = previous_path(path)
    if not path.exists() and not prev.exists():
        return None, []
    usable, why = _usable(path, identity, check)
    if usable:
        return path, []
    if usable is None:
        return None, []
    usable_prev, why_prev = _usable(prev, identity, check)
    if usable_prev:
        return prev, [f"warning: {path} {why}; resuming from {prev.name} (one epoch earlier)"]
    prev_text = "is another run's" if usable_prev is None else why_prev
    return None, [f"warning: {path} {why} and {prev.name} {prev_text}; starting over"]
