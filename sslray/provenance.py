"""Where a result comes from: the git revision of the code and the versions of its libraries.

Written into every sweep.json (and so into every table caption) and every benchmark line.
Standard library only; nothing here imports the libraries it reports on.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

__all__ = ["LIBRARIES", "git_revision", "versions"]

# The libraries a sweep's numbers depend on, by import name.
LIBRARIES = ("sslray", "torch", "torchvision", "ray", "faiss", "pandas")

# Import name -> the distributions that provide it (the first one installed wins).
_DISTRIBUTIONS = {
    "faiss": ("faiss-cpu", "faiss-gpu-cu12", "faiss-gpu"),
    "sklearn": ("scikit-learn",),
}


def git_revision(cwd: str | Path | None = None, timeout: float = 5.0) -> str:
    """The short commit hash of the checkout holding `cwd` (default: this package), with
    `-dirty` when tracked files have uncommitted changes; 'unknown' outside a checkout, without
    git, or when git takes longer than `timeout` seconds."""
    where = Path(cwd) if cwd is not None else Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=where, text=True,
                             capture_output=True, timeout=timeout)
        if rev.returncode != 0 or not rev.stdout.strip():
            return "unknown"
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                cwd=where, text=True, capture_output=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    dirty = status.returncode == 0 and bool(status.stdout.strip())
    return rev.stdout.strip() + ("-dirty" if dirty else "")


def versions(names: Iterable[str] = LIBRARIES) -> dict[str, str]:
    """Installed versions of the named libraries (import names; `faiss` is faiss-cpu or
    faiss-gpu); libraries that are not installed are left out. Reads package metadata only."""
    out = {}
    for name in names:
        for dist in _DISTRIBUTIONS.get(name, (name,)):
            try:
                out[name] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return out


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask on Linux, else the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
