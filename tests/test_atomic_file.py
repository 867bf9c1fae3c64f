"""atomic_write: whole files or none (the full-disk cases are in tests/training/test_faults.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sslray.atomic_file import atomic_write, temp_path


def test_bytes_and_writer_functions(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "a.bin"
    atomic_write(path, b"one")
    assert path.read_bytes() == b"one"
    atomic_write(str(path), lambda f: f.write(b"two"))
    assert path.read_bytes() == b"two"
    assert [p.name for p in path.parent.iterdir()] == ["a.bin"]


def test_a_failing_writer_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    atomic_write(path, b"old")

    def fail(f):
        f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, fail)
    assert path.read_bytes() == b"old" and not temp_path(path).exists()
    assert temp_path(path).parent == tmp_path
