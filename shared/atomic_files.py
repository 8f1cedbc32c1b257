"""Writing files atomically: a reader sees the old file or the new one, never half of one.

- `atomic_path(path)`: a context manager yielding a temporary path in `path`'s folder; write
  it by any means (`open`, `torch.save`, `np.savez`, `savefig`), and when the block ends
  normally it is renamed over `path` (`os.replace`). On any exception (Ctrl-C included) the
  temporary file is removed and the exception propagates; `path` is untouched. The temporary
  name is `.<stem>.tmp<pid><suffix>`: hidden, unique per process, and with `path`'s suffix, as
  numpy and matplotlib choose the format from it. `durable=True` also fsyncs the file before
  the rename and the folder after it (a power cut leaves the old file or the new one).
  `tmp_name` fixes the temporary name instead (checkpoints keep `<name>.tmp`).
- `write_text_atomic`, `write_bytes_atomic`, `write_json_atomic`, `write_npz_atomic`:
  whole-file writes through it (they create the folder; `atomic_path` leaves that to you).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["atomic_path", "fsync_dir", "temp_path", "write_bytes_atomic", "write_json_atomic",
           "write_npz_atomic", "write_text_atomic"]


def temp_path(path: Path) -> Path:
    """`dir/name.ext` -> `dir/.name.tmp<pid>.ext`: the temporary file `atomic_path` writes."""
    path = Path(path)
    return path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (where the OS and file system allow it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EACCES,
                             errno.EPERM):
            raise
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDWR)  # write access: Windows refuses to flush a read-only handle
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path, *, durable: bool = False,
                tmp_name: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path` (`temp_path`, or `tmp_name` in the same folder);
    on success rename it over `path` (with `durable`, fsync the file before and the folder
    after); on any exception remove it and re-raise. The folder must exist."""
    path = Path(path)
    tmp = path.with_name(tmp_name) if tmp_name else temp_path(path)
    try:
        yield tmp
        if durable:
            _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def write_bytes_atomic(path: str | Path, data: bytes, *, durable: bool = False) -> None:
    """Write `data` to `path` atomically (`atomic_path`), creating its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, durable=durable) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | Path, text: str, *, encoding: str = "utf-8",
                      durable: bool = False) -> None:
    """Write `text` to `path` atomically (`atomic_path`), creating its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, durable=durable) as tmp:
        tmp.write_text(text, encoding=encoding)


def write_json_atomic(path: str | Path, payload: Any, *, durable: bool = True) -> None:
    """Write `payload` as JSON (indent 2, sorted keys) atomically, creating the folder;
    durable by default: manifests and records are what later stages trust."""
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True), durable=durable)


def write_npz_atomic(path: str | Path, arrays: dict[str, Any], *, durable: bool = False) -> None:
    """Write `arrays` as an .npz atomically (`atomic_path`), creating its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, durable=durable) as tmp, tmp.open("wb") as fh:  # no second ".npz"
        np.savez(fh, **arrays)
