"""Resumable, shardable output of a stage that fills a feature store chunk by chunk.

Used by `extract clip` and `extract encode`. It decides between skip / resume / rebuild from the
stage manifest and the identity recorded in the store, hands out the chunks this shard still has
to compute, commits each chunk after its rows are written, and writes the manifest (and the
failures file) once every chunk of every shard is committed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared.config import Config
from shared.feature_store import ArraySpec, CommitLog, FeatureStore, remove_store, store_lock
from shared.manifest import (StageSpec, current_state, decide, read_manifest, remove_manifest,
                             write_manifest)


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


def failures_path(store_file: Path) -> Path:
    """`<store>.failures.jsonl`: one line per input that could not be processed."""
    return Path(store_file).with_name(Path(store_file).stem + ".failures.jsonl")


class ChunkedOutput:
    """The store a chunked stage writes, opened for skip, resume or rebuild."""

    def __init__(self, spec: StageSpec, config: Config, *, force: bool = False,
                 shard: Shard = Shard()) -> None:
        self.spec, self.config, self.shard = spec, config, shard
        self.log = CommitLog(spec.output)
        self.state = current_state(spec, config)
        decision = decide(spec, config, force=force)
        self.up_to_date = decision.up_to_date
        self.reason = decision.reason
        self.store: FeatureStore | None = None
        self._force = force

    def open(self, arrays: list[ArraySpec], n_rows: int, attrs: dict[str, Any],
             whole: dict[str, np.ndarray] | None = None) -> str:
        """Create the store, or reopen a matching partial one; returns what happened (a line)."""
        path = self.spec.output
        rows_per_chunk = self.config.store.rows_per_chunk
        with store_lock(path):
            existing = _identity_of(path)
            if existing is not None and (self._force and self.shard.index == 0
                                         or existing != self.state["identity"]):
                what = ("--force" if self._force else
                        f"it was started for another config or input; {self.reason}")
                remove_store(path)
                remove_manifest(path)
                failures_path(path).unlink(missing_ok=True)
                existing = None
                action = f"rebuilding {path} ({what})"
            elif existing is not None:
                action = f"resuming {path} ({len(self.log.committed())} chunks already done)"
            else:
                action = f"creating {path}"
            if existing is None:
                self.log.reset()
                meta = {**attrs, "identity": self.state["identity"],
                        "config": self.state["config"]}
                store = FeatureStore.create(path, arrays, n_rows, rows_per_chunk, meta)
                for name, value in (whole or {}).items():
                    store.write_whole(name, value)
                store.close()
            self.store = FeatureStore.open(path, writable=True)
        return action

    def pending_chunks(self) -> list[int]:
        """Chunks of this shard without a commit marker, in order."""
        assert self.store is not None
        done = self.log.committed()
        return [c for c in range(self.store.n_chunks) if self.shard.owns(c) and c not in done]

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

    def finish(self, summary: dict[str, Any]) -> bool:
        """Write manifest + failures file if every chunk is committed; True when complete."""
        assert self.store is not None
        n_chunks = self.store.n_chunks
        self.store.close()
        with store_lock(self.spec.output):
            committed = self.log.committed()
            if len(committed) < n_chunks:
                return False
            failures = [f for c in sorted(committed) for f in committed[c]["failures"]]
            with failures_path(self.spec.output).open("w") as fh:
                for failure in failures:
                    fh.write(json.dumps(failure) + "\n")
            if read_manifest(self.spec.output) is None:
                write_manifest(self.spec, self.config, {**summary, "failed": len(failures)},
                               state=self.state)
        return True

    def failure_count(self) -> int:
        """Number of failed inputs recorded by the complete store's manifest."""
        manifest = read_manifest(self.spec.output) or {}
        return int(manifest.get("summary", {}).get("failed", 0))


def _identity_of(path: Path) -> str | None:
    """The identity recorded in an existing store, or None if there is no readable store."""
    if not Path(path).exists():
        return None
    try:
        with FeatureStore.open(path) as store:
            return store.attrs.get("identity")
    except Exception:  # an unreadable leftover is treated as absent and rebuilt
        return ""
