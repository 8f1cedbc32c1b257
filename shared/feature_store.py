"""Row-chunked feature caches in Zarr v3 (default) or HDF5, with a crash-safe commit log.

A store holds per-row arrays `[N, ...]` (features of one image per row) and whole arrays
(e.g. a projection matrix). Rows are written one chunk (`rows_per_chunk` rows) at a time;
after a chunk's data is on disk, a marker file is written atomically into `<store>.progress/`.
Only chunks with a marker count as done, so a run killed at any point (even `kill -9`) resumes
by recomputing exactly the chunks without a marker. Concurrent writers (shards) claim a chunk
with a flock on `<store>.progress/claim-<chunk>.lock` first (see `shared.chunked_stage`).

Everything structural is created up front: Zarr writes one file per chunk, and HDF5 datasets
are allocated at creation (contiguous, early allocation), so later writes never touch the
HDF5 metadata and a killed writer cannot corrupt the file.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import zarr

from shared.atomic_files import write_json_atomic

FORMAT_SUFFIX = {"zarr": ".zarr", "hdf5": ".h5"}


class StoreError(RuntimeError):
    """A store that is missing, incomplete or does not match what the config asks for."""


@dataclass(frozen=True)
class ArraySpec:
    """One array of a store: per-row (`[n_rows, *shape]`) or whole (`shape`)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    per_row: bool = True


def store_path(base: Path, fmt: str) -> Path:
    """`base` with the suffix of the store format (`.zarr` or `.h5`)."""
    return Path(base).with_suffix(FORMAT_SUFFIX[fmt])


def format_of(path: Path) -> str:
    """Store format from the path suffix."""
    for fmt, suffix in FORMAT_SUFFIX.items():
        if Path(path).suffix == suffix:
            return fmt
    raise StoreError(f"{path}: unknown store suffix (expected .zarr or .h5)")


class FeatureStore:
    """A Zarr group or HDF5 file of arrays, plus attributes; see the module docstring."""

    def __init__(self, path: Path, handle: Any, fmt: str) -> None:
        self.path = Path(path)
        self.format = fmt
        self._handle = handle
        self.attrs: dict[str, Any] = json.loads(handle.attrs["meta"])
        self.n_rows: int = self.attrs["n_rows"]
        self.rows_per_chunk: int = self.attrs["rows_per_chunk"]

    # ---------------------------------------------------------------- creation / opening
    @classmethod
    def create(cls, path: Path, arrays: list[ArraySpec], n_rows: int, rows_per_chunk: int,
               attrs: dict[str, Any]) -> FeatureStore:
        """Create an empty store with every array allocated; `attrs` must be JSON-able."""
        path, fmt = Path(path), format_of(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = json.dumps({**attrs, "n_rows": n_rows, "rows_per_chunk": rows_per_chunk,
                           "arrays": [a.name for a in arrays]})
        if fmt == "zarr":
            group = zarr.open_group(str(path), mode="w")
            for spec in arrays:
                shape = (n_rows, *spec.shape) if spec.per_row else spec.shape
                chunks = (rows_per_chunk, *spec.shape) if spec.per_row else spec.shape
                group.create_array(spec.name, shape=shape, chunks=chunks, dtype=spec.dtype,
                                   fill_value=0, compressors=None)
            group.attrs["meta"] = meta
            return cls(path, group, fmt)
        handle = h5py.File(path, "w")
        for spec in arrays:
            shape = (n_rows, *spec.shape) if spec.per_row else spec.shape
            _create_h5_allocated(handle, spec.name, shape, np.dtype(spec.dtype))
        handle.attrs["meta"] = meta
        handle.flush()
        return cls(path, handle, fmt)

    @classmethod
    def open(cls, path: Path, writable: bool = False) -> FeatureStore:
        """Open an existing store for reading (or for writing rows)."""
        path, fmt = Path(path), format_of(path)
        if not path.exists():
            raise StoreError(f"feature store not found: {path}")
        try:
            if fmt == "zarr":
                handle = zarr.open_group(str(path), mode="r+" if writable else "r")
            else:
                handle = h5py.File(path, "r+" if writable else "r")
            return cls(path, handle, fmt)
        except (OSError, KeyError, ValueError) as err:
            raise StoreError(f"{path}: not a readable feature store ({err})") from None

    def close(self) -> None:
        if self.format == "hdf5":
            self._handle.close()

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- access
    @property
    def n_chunks(self) -> int:
        return -(-self.n_rows // self.rows_per_chunk)

    def chunk_rows(self, chunk: int) -> tuple[int, int]:
        """Row range `[start, stop)` of a chunk."""
        start = chunk * self.rows_per_chunk
        return start, min(start + self.rows_per_chunk, self.n_rows)

    def array(self, name: str) -> Any:
        """The named array (Zarr array or HDF5 dataset), sliceable like numpy."""
        if name not in self.attrs["arrays"]:
            raise StoreError(f"{self.path}: no array '{name}' (has {self.attrs['arrays']})")
        return self._handle[name]

    def read(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows `[start, stop)` of a per-row array (or a whole array) as numpy."""
        return np.asarray(self.array(name)[start:stop])

    def read_rows(self, name: str, rows: np.ndarray | list[int]) -> np.ndarray:
        """Values of a per-row array at `rows` (any order, repeats allowed), read chunk by
        chunk so that only the chunks holding those rows are decoded."""
        rows = np.asarray(rows, dtype=np.int64)
        out = None
        for chunk in np.unique(rows // self.rows_per_chunk).tolist():
            start, stop = self.chunk_rows(chunk)
            values = self.read(name, start, stop)
            if out is None:
                out = np.empty((len(rows), *values.shape[1:]), values.dtype)
            picked = (rows >= start) & (rows < stop)
            out[picked] = values[rows[picked] - start]
        if out is None:
            out = np.empty((0, *self.array(name).shape[1:]), self.array(name).dtype)
        return out

    def write_rows(self, start: int, values: dict[str, np.ndarray]) -> None:
        """Write rows starting at `start` for each named array and flush them to disk."""
        for name, value in values.items():
            self.array(name)[start:start + len(value)] = value
        if self.format == "hdf5":
            self._handle.flush()

    def write_row_list(self, rows: list[int], values: dict[str, np.ndarray]) -> None:
        """Write the given rows (ascending; value `i` goes to `rows[i]`), one contiguous run
        at a time, leaving every other row as it is."""
        runs, begin = [], 0
        for i in range(1, len(rows) + 1):
            if i == len(rows) or rows[i] != rows[i - 1] + 1:
                runs.append((begin, i))
                begin = i
        for begin, end in runs:
            for name, value in values.items():
                self.array(name)[rows[begin]:rows[begin] + end - begin] = value[begin:end]
        if self.format == "hdf5":
            self._handle.flush()

    def write_whole(self, name: str, value: np.ndarray) -> None:
        """Write a whole (not per-row) array."""
        self.array(name)[...] = value
        if self.format == "hdf5":
            self._handle.flush()


def _create_h5_allocated(handle: h5py.File, name: str, shape: tuple[int, ...],
                         dtype: np.dtype) -> None:
    """Contiguous dataset with all storage allocated now, so writes never change metadata."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_ALLOC)
    dcpl.set_fill_value(np.zeros((), dtype=dtype))
    space = h5py.h5s.create_simple(shape)
    h5py.h5d.create(handle.id, name.encode(), h5py.h5t.py_create(dtype), space, dcpl=dcpl)


class CommitLog:
    """Atomic per-chunk markers in `<store>.progress/`; a chunk is done iff its marker exists."""

    def __init__(self, store_file: Path) -> None:
        self.dir = Path(store_file).with_name(Path(store_file).name + ".progress")

    def commit(self, chunk: int, record: dict[str, Any]) -> None:
        write_json_atomic(self.dir / f"chunk-{chunk:07d}.json", record)

    def record(self, chunk: int) -> dict[str, Any] | None:
        """The commit record of one chunk, or None when it is not committed."""
        try:
            return json.loads((self.dir / f"chunk-{chunk:07d}.json").read_text())
        except FileNotFoundError:
            return None

    def claim_path(self, chunk: int) -> Path:
        """The file a process flocks while it computes `chunk` (see `shared.chunked_stage`)."""
        return self.dir / f"claim-{chunk:07d}.lock"

    def committed(self) -> dict[int, dict[str, Any]]:
        """Records of every committed chunk, by chunk index."""
        out = {}
        if self.dir.is_dir():
            for marker in self.dir.glob("chunk-*.json"):
                out[int(marker.stem.split("-")[1])] = json.loads(marker.read_text())
        return out

    def reset(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def store_lock(store_file: Path) -> Iterator[None]:
    """Short exclusive lock every process (shard) of one store takes to create, reopen or
    finish it (`<store>.commit.lock`; `<store>.lock` is the writers' `output_lock`)."""
    lock = Path(store_file).with_name(Path(store_file).name + ".commit.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def remove_store(path: Path) -> None:
    """Delete a store and its commit log."""
    path = Path(path)
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        os.remove(path)
    CommitLog(path).reset()
