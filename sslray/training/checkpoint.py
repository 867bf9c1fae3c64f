"""Checkpoint files: written atomically, loaded with weights_only=True, checked before use."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import torch

from sslray.storage import Location

FORMAT_VERSION = 1
STATE_FILE = "state.pt"  # one Ray Train checkpoint: the whole training state
FINAL_FILE = "final.pt"  # a run directory's trained model, written after the last epoch


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the fix."""


def save_state(state: dict[str, Any], path: Path) -> None:
    """Write to a temporary name, then rename: a crash mid-write never corrupts the last file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format_version": FORMAT_VERSION, **state}, tmp)
    os.replace(tmp, path)


def load_state(path: Path, method: str | None = None) -> dict[str, Any]:
    """Load a training state; `method` (if given) must match the method that wrote it."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated / foreign files
        raise CheckpointError(
            f"{path}: not a readable sslray checkpoint ({type(exc).__name__}: {exc}). "
            f"It may be truncated; resume from an earlier checkpoint or start with --overwrite."
        ) from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: not an sslray checkpoint (format {FORMAT_VERSION} expected)"
        )
    if method is not None and state.get("method") != method:
        raise CheckpointError(
            f"{path}: written by method {state.get('method')!r}, but the config trains {method!r}. "
            f"Resume with the config that wrote it, or start a new run directory."
        )
    return state


def load_trained_state(run: Location, method: str | None = None) -> dict[str, Any]:
    """A run directory's trained model: its final.pt, else its latest Ray Train checkpoint."""
    if not run.exists():
        raise CheckpointError(f"{run.uri}: no such run directory")
    if run.exists(FINAL_FILE):
        data = run.read_bytes(FINAL_FILE)
    else:
        infos = run.fs.get_file_info(pafs.FileSelector(run.path))
        ckpts = sorted(i.base_name for i in infos if i.base_name.startswith("checkpoint_"))
        if not ckpts:
            raise CheckpointError(f"{run.uri}: neither {FINAL_FILE} nor a checkpoint_* "
                                  f"directory: the run did not finish an epoch")
        data = run.read_bytes(ckpts[-1], STATE_FILE)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / STATE_FILE).write_bytes(data)
        return load_state(Path(tmp) / STATE_FILE, method)
