"""Resumable, shardable output of a stage that fills a feature store chunk by chunk.

Used by `extract clip` and `extract encode`, inside `shared.stage_runner.run_stage` (which skips
an up-to-date store and writes the manifest): it decides between resume and rebuild from the
identity recorded in the store, hands out the chunks this shard still has to compute, commits
each chunk after its rows are written, and writes the failures file once every chunk of every
shard is committed (until then the run is not `complete`: no manifest).

Writers: a whole-store run holds `<store>.lock` exclusively (`shared.output_lock`); the shards
of `--shard i/n` hold it together (shared) and claim each chunk with a non-blocking flock on
`<store>.progress/claim-<chunk>.lock` before computing it, so two processes never compute the
same chunk and a killed one (whose flocks the kernel drops) never blocks a resume. Under
`torchrun` (`launcher_shard`) each process takes shard RANK of WORLD_SIZE and, on CUDA, the GPU
LOCAL_RANK (`rank_device`); no process group is needed, the files coordinate the shards.

Failed inputs: each chunk's commit record lists the rows that failed. A later run re-computes
exactly those rows of committed chunks (and nothing else) and re-commits the chunk. When every
chunk is committed, failures beyond a `FailureLimit` raise `TooManyFailures` (no manifest, so
the next run is not "up to date" and retries them); within it the manifest is written.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared.config import Config
from shared.feature_store import ArraySpec, CommitLog, FeatureStore, remove_store, store_lock
from shared.manifest import StageSpec
from shared.output_lock import output_lock, release_flock, try_flock
from shared.stage_runner import StageResult, StageRun, label, run_stage

@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count`: owns chunks with `chunk % count == index`."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> Shard:
        """Parse `i/n` (0-based i)."""
        try:
            index, count = (int(x) for x in text.split("/"))
        except ValueError:
            raise ValueError(f"--shard '{text}': expected i/n, e.g. 0/4") from None
        if not 0 <= index < count:
            raise ValueError(f"--shard '{text}': need 0 <= i < n")
        return cls(index, count)

    def owns(self, chunk: int) -> bool:
        return chunk % self.count == self.index


def launcher_shard(environ: dict[str, str] | None = None) -> Shard | None:
    """This process's shard under `torchrun` (RANK of WORLD_SIZE); None outside it."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        return None
    try:
        rank, world = int(env.get("RANK", "")), int(env["WORLD_SIZE"])
    except ValueError:
        raise ValueError(f"torchrun environment: RANK={env.get('RANK')!r} / "
                         f"WORLD_SIZE={env['WORLD_SIZE']!r} are not integers") from None
    if not 0 <= rank < world:
        raise ValueError(f"torchrun environment: RANK={rank} is not below WORLD_SIZE={world}")
    return Shard(rank, world)


def resolve_shard(option: str | None, environ: dict[str, str] | None = None) -> Shard:
    """The shard of this process: `--shard i/n` (`option`), or torchrun's RANK / WORLD_SIZE;
    given both, they must agree."""
    launched = launcher_shard(environ)
    given = Shard.parse(option) if option is not None else None
    if given is not None and launched is not None and given != launched:
        raise ValueError(f"--shard {option} disagrees with torchrun's RANK={launched.index} "
                         f"WORLD_SIZE={launched.count}: leave --shard out under torchrun")
    return given or launched or Shard()


def rank_device(device: torch.device, environ: dict[str, str] | None = None) -> torch.device:
    """`device`, or on CUDA under torchrun the GPU of this process's LOCAL_RANK (made current)."""
    env = os.environ if environ is None else environ
    if device.type != "cuda" or device.index is not None or "LOCAL_RANK" not in env:
        return device
    local = int(env["LOCAL_RANK"])
    if local >= torch.cuda.device_count():
        raise RuntimeError(f"torchrun LOCAL_RANK={local} but only {torch.cuda.device_count()} "
                           "CUDA GPUs are visible (--nproc_per_node at most the GPUs per node)")
    torch.cuda.set_device(local)
    return torch.device("cuda", local)


def failures_path(store_file: Path) -> Path:
    """`<store>.failures.jsonl`: one line per input that could not be processed."""
    return Path(store_file).with_name(Path(store_file).stem + ".failures.jsonl")


@dataclass(frozen=True)
class FailureLimit:
    """The largest share of failed inputs a complete output may have, and its config key."""

    fraction: float
    key: str
    noun: str = "inputs"

    def exceeded(self, failed: int, total: int) -> bool:
        return failed > 0 and failed > self.fraction * total


@dataclass(frozen=True)
class ChunkWork:
    """The rows of one chunk still to compute; `retry`: the failed rows of a committed chunk."""

    chunk: int
    rows: list[int]
    retry: bool


class TooManyFailures(RuntimeError):
    """Every chunk is committed but more inputs failed than the `FailureLimit` allows."""


def run_chunked(spec: StageSpec, config: Config, build: Callable[[ChunkedOutput], dict[str, Any]],
                *, force: bool = False, shard: Shard = Shard()) -> StageResult:
    """`run_stage` for a store filled chunk by chunk: under the output lock (shared between the
    processes of `--shard i/n`), `build` gets the store's `ChunkedOutput` (its `run` to `say`
    lines) and returns the manifest summary."""
    def in_store(run: StageRun) -> dict[str, Any]:
        with ChunkedOutput(run, shard) as output:
            return build(output)

    with output_lock(spec.output, label(spec), shared=shard.count > 1):
        return run_stage(spec, config, in_store, force=force)


class ChunkedOutput:
    """The store a chunked stage writes, opened for resume or rebuild (`run_chunked`).

    Use as a context manager: leaving releases the chunk claims and closes the store.
    """

    def __init__(self, run: StageRun, shard: Shard = Shard()) -> None:
        self.run, self.spec, self.config, self.shard = run, run.spec, run.config, shard
        self.log = CommitLog(run.spec.output)
        self.store: FeatureStore | None = None
        self._claims: dict[int, int] = {}
        self._claims_guard = threading.Lock()

    def __enter__(self) -> ChunkedOutput:
        return self

    def __exit__(self, *exc: object) -> None:
        with self._claims_guard:
            claims, self._claims = self._claims, {}
        for fd in claims.values():
            release_flock(fd)
        if self.store is not None:
            self.store.close()
            self.store = None

    def open(self, arrays: list[ArraySpec], n_rows: int, attrs: dict[str, Any],
             whole: dict[str, np.ndarray] | None = None) -> str:
        """Create the store, or reopen a matching partial one; returns what happened (a line)."""
        path = self.spec.output
        rows_per_chunk = self.config.store.rows_per_chunk
        with store_lock(path):
            existing, run = _identity_of(path), self.run
            if existing is not None and (run.force and self.shard.index == 0
                                         or existing != run.identity):
                what = ("--force" if run.force else
                        f"it was started for another config or input; {run.reason}")
                remove_store(path)
                failures_path(path).unlink(missing_ok=True)
                existing = None
                action = f"rebuilding {path} ({what})"
            elif existing is not None:
                committed = self.log.committed()
                failed = sum(len(r["failures"]) for r in committed.values())
                action = (f"resuming {path} ({len(committed)} chunks already done"
                          + (f", {failed} failed rows to retry)" if failed else ")"))
            else:
                action = f"creating {path}"
            if existing is None:
                self.log.reset()
                meta = {**attrs, "identity": run.identity, "config": run.state["config"]}
                store = FeatureStore.create(path, arrays, n_rows, rows_per_chunk, meta)
                for name, value in (whole or {}).items():
                    store.write_whole(name, value)
                store.close()
            self.store = FeatureStore.open(path, writable=True)
        return action

    def pending(self) -> list[ChunkWork]:
        """This shard's chunks that still need work, in order: every row of a chunk without
        a commit marker, the failed rows of a committed one. A snapshot: `claim` re-reads it
        under the chunk's claim."""
        assert self.store is not None
        done = self.log.committed()
        work = (self._work(c, done.get(c)) for c in range(self.store.n_chunks)
                if self.shard.owns(c))
        return [w for w in work if w.rows]

    def pending_chunks(self) -> list[int]:
        """Chunks of this shard with work left (see `pending`), in order."""
        return [work.chunk for work in self.pending()]

    def claim(self, chunk: int) -> ChunkWork | None:
        """Claim `chunk` for this process and return what it still needs; None (and no claim
        kept) when another process holds it or nothing is left to do."""
        assert self.store is not None
        fd = try_flock(self.log.claim_path(chunk))
        if fd is None:
            return None
        work = self._work(chunk, self.log.record(chunk))
        if not work.rows:
            release_flock(fd)
            return None
        with self._claims_guard:
            self._claims[chunk] = fd
        return work

    def write_chunk(self, chunk: int, values: dict[str, np.ndarray],
                    failures: list[dict[str, Any]]) -> None:
        """Write a chunk's rows, then commit it (with the inputs that failed in it)."""
        assert self.store is not None
        start, stop = self.store.chunk_rows(chunk)
        for name, value in values.items():
            if len(value) != stop - start:
                raise ValueError(f"chunk {chunk}: '{name}' has {len(value)} rows, "
                                 f"expected {stop - start}")
        self.store.write_rows(start, values)
        self.log.commit(chunk, {"rows": [start, stop], "failures": failures})
        self._release(chunk)

    def write_retry(self, chunk: int, rows: list[int], values: dict[str, np.ndarray],
                    failures: list[dict[str, Any]]) -> None:
        """Write the re-computed failed `rows` of a committed chunk (other rows untouched),
        then re-commit it with the failures that remain."""
        assert self.store is not None
        self.store.write_row_list(rows, values)
        record = self.log.record(chunk) or {"rows": list(self.store.chunk_rows(chunk))}
        self.log.commit(chunk, {**record, "failures": failures,
                                "retried": int(record.get("retried", 0)) + len(rows)})
        self._release(chunk)

    def finish(self, limit: FailureLimit | None = None) -> int | None:
        """Write the failures file if every chunk is committed and return the number of failed
        inputs; None (and `run.complete = False`: no manifest) while chunks are missing or
        another process is still retrying failed rows; `TooManyFailures` beyond `limit`.
        """
        assert self.store is not None
        n_chunks, n_rows = self.store.n_chunks, self.store.n_rows
        self.store.close()
        self.store = None
        with store_lock(self.spec.output):
            committed = self.log.committed()
            failed_chunks = [c for c in sorted(committed) if committed[c]["failures"]]
            if len(committed) < n_chunks or any(self._claimed_elsewhere(c)
                                                for c in failed_chunks):
                self.run.complete = False
                return None
            failures = [f for c in failed_chunks for f in committed[c]["failures"]]
            path = failures_path(self.spec.output)
            with path.open("w") as fh:
                for failure in failures:
                    fh.write(json.dumps(failure) + "\n")
            if limit is not None and limit.exceeded(len(failures), n_rows):
                raise TooManyFailures(
                    f"{label(self.spec)}: {len(failures)} of {n_rows} {limit.noun} failed, more "
                    f"than {limit.key} = {limit.fraction:g} allows; not marked complete (a re-run "
                    f"retries only the failed ones); failure list: {path}")
        return len(failures)

    def _work(self, chunk: int, record: dict[str, Any] | None) -> ChunkWork:
        assert self.store is not None
        if record is None:
            return ChunkWork(chunk, list(range(*self.store.chunk_rows(chunk))), retry=False)
        return ChunkWork(chunk, sorted(int(f["row"]) for f in record["failures"]), retry=True)

    def _release(self, chunk: int) -> None:
        with self._claims_guard:
            fd = self._claims.pop(chunk, None)
        if fd is not None:
            release_flock(fd)

    def _claimed_elsewhere(self, chunk: int) -> bool:
        fd = try_flock(self.log.claim_path(chunk))
        if fd is None:
            return True
        release_flock(fd)
        return False


def _identity_of(path: Path) -> str | None:
    """The identity recorded in an existing store, or None if there is no readable store."""
    if not Path(path).exists():
        return None
    try:
        with FeatureStore.open(path) as store:
            return store.attrs.get("identity")
    except Exception:  # an unreadable leftover is treated as absent and rebuilt
        return ""
