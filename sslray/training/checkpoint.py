"""Checkpoint files: written atomically, loaded with weights_only=True, checked before use."""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import torch

from sslray.atomic_file import atomic_write
from sslray.storage import Location

FORMAT_VERSION = 1
STATE_FILE = "state.pt"  # one Ray Train checkpoint: the whole training state
FINAL_FILE = "final.pt"  # a run directory's trained model, written after the last epoch
SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"  # Ray Train's list of complete checkpoints


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the fix."""


def save_state(state: dict[str, Any], path: Path) -> None:
    """Written atomically: a crash or a full disk mid-write never corrupts the last file."""
    atomic_write(path, lambda f: torch.save({"format_version": FORMAT_VERSION, **state}, f))


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


def _checkpoint_dirs(run: Location) -> list[str]:
    """The run's Ray Train checkpoint directories, the one to use first.

    Ray registers a checkpoint in checkpoint_manager_snapshot.json only once it is complete in
    storage, so the snapshot's latest comes first; the other directories follow, newest first
    (a directory that a dying upload left half-written is tried last and skipped if unreadable).
    """
    infos = run.fs.get_file_info(pafs.FileSelector(run.path))
    names = sorted((i.base_name for i in infos if i.base_name.startswith("checkpoint_")
                    and i.type == pafs.FileType.Directory), reverse=True)
    if run.exists(SNAPSHOT_FILE):
        try:
            snap = json.loads(run.read_text(SNAPSHOT_FILE))
            latest = (snap.get("latest_checkpoint_result") or {}).get("checkpoint_dir_name")
        except (ValueError, AttributeError):
            latest = None
        if latest in names:
            names.remove(latest)
            names.insert(0, latest)
    return names


def load_trained_state(run: Location, method: str | None = None) -> dict[str, Any]:
    """A run directory's trained model: its final.pt, else its latest complete Ray Train
    checkpoint (an unreadable newer one, e.g. a half-written upload, is skipped with a warning)."""
    if not run.exists():
        raise CheckpointError(f"{run.uri}: no such run directory")
    if run.exists(FINAL_FILE):
        return _load_bytes(run.read_bytes(FINAL_FILE), run.child(FINAL_FILE).uri, method)
    names = _checkpoint_dirs(run)
    if not names:
        raise CheckpointError(f"{run.uri}: neither {FINAL_FILE} nor a checkpoint_* "
                              f"directory: the run did not finish an epoch")
    errors: list[str] = []
    for name in names:
        uri = run.child(name, STATE_FILE).uri
        try:
            state = _load_bytes(run.read_bytes(name, STATE_FILE), uri, method)
        except (CheckpointError, OSError) as exc:
            errors.append(str(exc))
            continue
        if errors:
            warnings.warn(f"skipped {len(errors)} unreadable checkpoint(s); using {uri}. "
                          f"First problem: {errors[0]}", RuntimeWarning, stacklevel=2)
        return state
    raise CheckpointError(f"{run.uri}: no readable checkpoint among {len(names)}: "
                          + " | ".join(errors))


def _load_bytes(data: bytes, uri: str, method: str | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / STATE_FILE
        path.write_bytes(data)
        try:
            return load_state(path, method)
        except CheckpointError as exc:  # name the real file, not the temporary copy
            raise CheckpointError(str(exc).replace(str(path), uri)) from None
