"""`shared.atomic_files`: a write replaces the file whole or leaves it as it was."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

import shared.atomic_files as atomic_files
from shared.atomic_files import (atomic_path, temp_path, write_bytes_atomic, write_json_atomic,
                                 write_text_atomic)


def test_success_replaces_the_file(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    path.write_text("old")
    with atomic_path(path) as tmp:
        assert tmp.parent == tmp_path and tmp != path
        tmp.write_text("new")
        assert path.read_text() == "old"  # nothing visible before the block ends
    assert path.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


@pytest.mark.parametrize("error", [ValueError, KeyboardInterrupt])
def test_failure_leaves_the_old_file_and_no_temp(tmp_path: Path, error: type) -> None:
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(error):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise error
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_failure_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "new.bin"):
            raise RuntimeError
    assert list(tmp_path.iterdir()) == []


def test_temp_name_keeps_the_suffix(tmp_path: Path) -> None:
    path = tmp_path / "concepts.npz"
    assert temp_path(path).name == f".concepts.tmp{os.getpid()}.npz"
    assert temp_path(tmp_path / "plain").name == f".plain.tmp{os.getpid()}"
    with atomic_path(path) as tmp:
        assert tmp.suffix == ".npz" and tmp.name.startswith(".")
        np.savez(tmp, x=np.arange(3))  # numpy adds no second ".npz"
    with np.load(path) as data:
        assert data["x"].tolist() == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["concepts.npz"]


def test_a_fixed_temp_name(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    with atomic_path(path, tmp_name="last.pt.tmp") as tmp:
        assert tmp == tmp_path / "last.pt.tmp"
        tmp.write_bytes(b"x")
    assert path.read_bytes() == b"x" and not tmp.exists()


def count_fsyncs(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = os.fsync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(atomic_files.os, "fsync", counting)
    return calls


def test_durable_fsyncs_the_file_and_the_folder(tmp_path: Path, monkeypatch) -> None:
    calls = count_fsyncs(monkeypatch)
    with atomic_path(tmp_path / "a.txt") as tmp:
        tmp.write_text("a")
    assert calls == []
    with atomic_path(tmp_path / "b.txt", durable=True) as tmp:
        tmp.write_text("b")
        assert calls == []
    assert len(calls) == 2  # the file before the rename, the folder after it
    assert (tmp_path / "b.txt").read_text() == "b"


def test_durable_failure_fsyncs_nothing(tmp_path: Path, monkeypatch) -> None:
    calls = count_fsyncs(monkeypatch)
    with pytest.raises(OSError):
        with atomic_path(tmp_path / "b.txt", durable=True) as tmp:
            tmp.write_text("b")
            raise OSError("disk gone")
    assert calls == [] and list(tmp_path.iterdir()) == []


def test_whole_file_writers(tmp_path: Path, monkeypatch) -> None:
    write_text_atomic(tmp_path / "sub" / "t.txt", "héllo\n")
    assert (tmp_path / "sub" / "t.txt").read_bytes() == "héllo\n".encode()
    write_bytes_atomic(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    calls = count_fsyncs(monkeypatch)
    write_json_atomic(tmp_path / "deep" / "m.json", {"b": 1, "a": [1, 2]})
    assert len(calls) == 2  # JSON is durable by default, as shared.manifest's was
    text = (tmp_path / "deep" / "m.json").read_text()
    assert text == json.dumps({"b": 1, "a": [1, 2]}, indent=2, sort_keys=True)
    assert sorted(p.name for p in (tmp_path / "deep").iterdir()) == ["m.json"]


def test_unserialisable_json_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text("{}")
    with pytest.raises(TypeError):
        write_json_atomic(path, {"x": object()})
    assert path.read_text() == "{}" and sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]
