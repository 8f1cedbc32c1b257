"""One writer per output: a non-blocking `fcntl.flock` on `<output>.lock`.

A second process asking for an output that is being written stops at once with
`another process (pid N) is writing <output>` (`OutputBusy`, a RuntimeError: `error: ...` and
exit status 2 through `shared.cli.one_line_errors`). The kernel releases a flock when its
process dies, so a killed run (even `kill -9`) never leaves a lock that blocks the next run; the
lock file itself stays (deleting it would race with a process about to lock it) and holds the
pid of the last holder, for the message.

`shared=True` lets cooperating writers hold the lock together (the shards of one store) while
still excluding an exclusive writer; `try_flock` is the primitive the shards' per-chunk claims
use.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_PID_WIDTH = 10  # fixed-width pid record, so concurrent shared holders never mix digits


class OutputBusy(RuntimeError):
    """Another live process holds the lock on an output."""


def lock_path(output: Path) -> Path:
    """`<output>.lock`, beside the output (a store, a file or a folder)."""
    output = Path(output)
    return output.with_name(output.name + ".lock")


def try_flock(path: Path, shared: bool = False) -> int | None:
    """Open (creating) `path` and flock it without waiting: the fd, or None when held."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def release_flock(fd: int) -> None:
    """Unlock explicitly (forked children sharing the fd must not keep it held), then close."""
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def holder_pid(path: Path, wait_s: float = 0.5) -> int | None:
    """The pid of a live holder of the lock file: the recorded one if the kernel's lock table
    (`/proc/locks`, where readable) confirms it, else one the table names, else the recorded
    one (waiting briefly for a holder that has just locked to record itself)."""
    holders = _kernel_holders(path)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            text = Path(path).read_text().strip()
        except OSError:
            text = ""
        if text.isdigit() and (not holders or int(text) in holders):
            return int(text)
        if holders:
            return holders[0]
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.01)


def _kernel_holders(path: Path) -> list[int]:
    """Pids holding a flock on `path` per `/proc/locks` (empty where it cannot be read)."""
    try:
        inode = os.stat(path).st_ino
        table = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return []
    pids = []
    for line in table:
        fields = line.split()  # id: FLOCK ADVISORY WRITE pid maj:min:inode start end
        if len(fields) >= 6 and fields[1] == "FLOCK" \
                and fields[5].rsplit(":", 1)[-1] == str(inode) and fields[4].isdigit():
            pids.append(int(fields[4]))
    return [pid for pid in pids if pid > 0]


@contextmanager
def output_lock(output: Path, what: str, shared: bool = False) -> Iterator[None]:
    """Hold the lock on `output` for the block; raises `OutputBusy` at once when it is held.

    `what` names the stage in the message (e.g. `train`, `extract clip`).
    """
    path = lock_path(output)
    fd = try_flock(path, shared=shared)
    if fd is None:
        pid = holder_pid(path)
        who = f"another process (pid {pid})" if pid else "another process"
        raise OutputBusy(f"{what}: {who} is writing {output}")
    try:
        if not shared:
            os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid():>{_PID_WIDTH}}\n".encode(), 0)
        yield
    finally:
        if not shared:
            os.ftruncate(fd, 0)
        release_flock(fd)
