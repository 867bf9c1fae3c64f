"""Atomic file writes: a reader sees the old file or the new one, never half of either.

The data goes to a temporary file in the target's folder (same filesystem, so the rename is
atomic), is fsynced, and `os.replace()`s the target; on any failure (a full disk, a lost mount,
an interrupt) the temporary file is removed and the old target is left as it was. Standard
library only: `analysis`, which imports neither torch nor Ray, uses it too.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write", "temp_path"]


def temp_path(path: str | os.PathLike[str]) -> Path:
    """The temporary file `atomic_write` fills for `path` (per process: concurrent writers from
    several processes, such as Ray Train workers, never share one)."""
    path = Path(path)
    return path.with_name(f"{path.name}.tmp{os.getpid()}")


def atomic_write(
    path: str | os.PathLike[str], data: bytes | Callable[[BinaryIO], object]
) -> None:
    """Write `path` whole: `data` as bytes, or a function that writes to the open binary file
    (`lambda f: np.save(f, array)`). Creates missing parent folders."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(target)
    try:
        with open(tmp, "wb") as f:
            if isinstance(data, bytes | bytearray | memoryview):
                f.write(data)
            else:
                data(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (best effort: not every OS or filesystem allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
