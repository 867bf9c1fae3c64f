"""Finished sweep directory -> one tidy DataFrame (one row per trial).

The sweep layer (`sslray/sweep/`) writes the directory; this module only reads it. Layout:

    <sweep_dir>/sweep.json               name, default table spec, grid, seeds, git, versions
    <sweep_dir>/experiment_state-*.json  Ray Tune's own files: ignored
    <sweep_dir>/<trial>/config.json      {"config": resolved run config, "derived": {...},
                                          "trial": {"id", "label", "grid", "seed"}}
    <sweep_dir>/<trial>/result.json      Tune's JSON lines, one per epoch report; the LAST line
                                          holds the final metrics
    <sweep_dir>/<trial>/error.txt        present iff the trial errored

A directory is a trial iff it holds `config.json`: Tune's trial-directory names change between Ray
versions, so nothing here parses them. Only local paths are read: copy a bucket first
(`aws s3 sync s3://bucket/sweeps/x ./x`, `gsutil -m rsync -r gs://...`), so tables build on a
laptop with neither cloud credentials nor Ray installed.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = [
    "ERRORED",
    "FINISHED",
    "NO_RESULT",
    "STATUSES",
    "STOPPED",
    "SweepDirError",
    "flatten",
    "grid_keys",
    "is_missing",
    "load_sweep",
    "load_sweep_meta",
    "trial_dirs",
]

FINISHED = "finished"
STOPPED = "stopped early"  # fewer epochs than configured: ASHA (or a kill) stopped it
ERRORED = "errored"
NO_RESULT = "no result"  # never reported a single epoch (result.json missing or empty)
STATUSES = (FINISHED, STOPPED, ERRORED, NO_RESULT)

# Identity columns, first in the frame so `df.head()` reads well.
ID_COLUMNS = ["trial_id", "label", "seed", "status", "trial_dir"]
# Non-"/" keys of the last result line that are kept as metrics; `wall_s` falls back to Tune's
# `time_total_s` for runs that did not report it themselves.
EXTRA_METRICS = ("epoch", "device_hours", "wall_s")

EXPECTED_LAYOUT = (
    "expected a sweep directory: sweep.json plus one subdirectory per trial holding config.json "
    "(and result.json); for a bucket, sync it to a local directory first"
)


class SweepDirError(ValueError):
    """A path that is not a readable sweep directory; the message names the path."""


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"a.b.c": value}. Lists become tuples so columns stay hashable (groupby).

    A list holding dicts (not in today's configs) becomes its JSON text: hashable and readable.
    """
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, prefix=f"{name}."))
        elif isinstance(value, list | tuple):
            if any(isinstance(v, dict | list) for v in value):
                flat[name] = json.dumps(value, sort_keys=True)
            else:
                flat[name] = tuple(value)
        else:
            flat[name] = value
    return flat


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SweepDirError(f"{path}: not valid JSON ({exc})") from exc
    except OSError as exc:
        raise SweepDirError(f"{path}: cannot read ({exc.strerror})") from exc


def _check_dir(given: str | Path) -> Path:
    text = str(given)  # before Path(): it would fold "s3://b" into "s3:/b"
    if "://" in text:
        raise SweepDirError(f"{text}: only local paths are read; {EXPECTED_LAYOUT}")
    path = Path(given)
    if not path.exists():
        raise SweepDirError(f"{path}: no such directory; {EXPECTED_LAYOUT}")
    if not path.is_dir():
        raise SweepDirError(f"{path}: not a directory; {EXPECTED_LAYOUT}")
    return path


def trial_dirs(path: str | Path) -> list[Path]:
    """The trial directories of a sweep (direct subdirectories holding config.json), sorted.

    Only direct children: a trial's own run directory may hold another config.json deeper down
    (checkpoints, the Train run), and must not count as a second trial.
    """
    root = _check_dir(path)
    return sorted(d for d in root.iterdir() if d.is_dir() and (d / "config.json").is_file())


def load_sweep_meta(path: str | Path) -> dict[str, Any]:
    """sweep.json with defaults for any missing key (and for a missing file: an old or hand-made
    sweep still gets a table; the caption then says "git unknown")."""
    root = _check_dir(path)
    meta: dict[str, Any] = {
        "name": root.resolve().name,
        "table": None,
        "grid": {},
        "seeds": [],
        "git_revision": "unknown",
        "versions": {},
        "created": None,
        "storage": None,
    }
    file = root / "sweep.json"
    if file.is_file():
        raw = _read_json(file)
        if not isinstance(raw, dict):
            raise SweepDirError(f"{file}: expected a JSON object, got {type(raw).__name__}")
        meta.update({k: v for k, v in raw.items() if v is not None})
    return meta


def _read_results(path: Path) -> list[dict[str, Any]]:
    """Tune's result.json lines. A torn last line (trial killed mid-write) is skipped with a
    warning rather than failing the whole table."""
    if not path.is_file():
        return []
    rows: list[dict[str, Any]] = []
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            warnings.warn(f"{path}:{i}: unreadable result line skipped", stacklevel=3)
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def _final_metrics(last: dict[str, Any]) -> dict[str, Any]:
    """Keep `split/name` metrics and the cost keys; drop Tune's bookkeeping (config, hostname)."""
    # "config/..." would be Tune's config flattened by some logger: settings, not metrics.
    out = {k: v for k, v in last.items() if "/" in k and not k.startswith("config/")
           and _is_scalar(v)}
    for key in EXTRA_METRICS:
        if key in last and _is_scalar(last[key]):
            out[key] = last[key]
    if "wall_s" not in out and isinstance(last.get("time_total_s"), int | float):
        out["wall_s"] = float(last["time_total_s"])
    # A pipeline (cc) reports its earlier stages' cost as source/... and cluster/...: the trial's
    # cost is the sum over its stages.
    for key in ("device_hours", "wall_s"):
        stages = [v for k, v in out.items() if k.endswith("/" + key) and isinstance(v, int | float)]
        if stages and isinstance(out.get(key), int | float):
            out[key] = float(out[key]) + float(sum(stages))
    return out


def _cluster_scores(trial: Path) -> dict[str, float]:
    """NMI/purity of a cc trial's k-means, as "cluster/nmi" and "cluster/purity".

    The cc pipeline writes them to `<run>/clusters/clusters.json` (sslray/pipeline.py) and the
    trial's run directory sits inside the trial directory, so this reads them when the epoch
    reports did not carry them. A reported "cluster/..." metric always wins (setdefault above).
    """
    for file in sorted(trial.glob("*/clusters/clusters.json")) + [trial / "clusters/clusters.json"]:
        if not file.is_file():
            continue
        try:
            stats = json.loads(file.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(stats, dict):
            return {f"cluster/{k}": float(stats[k]) for k in ("nmi", "purity")
                    if isinstance(stats.get(k), int | float)}
    return {}


def _status(trial: Path, results: list[dict[str, Any]], epochs: Any) -> str:
    last = results[-1] if results else {}
    epoch = last.get("epoch")
    reached = (isinstance(epochs, int | float) and isinstance(epoch, int | float)
               and epoch >= epochs)
    if reached:  # all epochs reported: finished, even when an earlier attempt left error.txt
        return FINISHED  # (a trial retried by `sslray sweep --resume` keeps the old error.txt)
    if (trial / "error.txt").exists():
        return ERRORED
    if not results:
        return NO_RESULT
    if isinstance(epochs, int | float) and isinstance(epoch, int | float):
        return STOPPED
    # No configured epoch count to compare with: trust Tune's own flag.
    return FINISHED if last.get("done") else STOPPED


def _load_trial(trial: Path) -> dict[str, Any]:
    file = trial / "config.json"
    raw = _read_json(file)
    if not isinstance(raw, dict) or not isinstance(raw.get("config"), dict):
        raise SweepDirError(f"{file}: expected an object with a 'config' object")
    config = raw["config"]
    info: dict[str, Any] = raw["trial"] if isinstance(raw.get("trial"), dict) else {}
    row: dict[str, Any] = flatten(config)
    if isinstance(raw.get("derived"), dict):
        row.update(flatten(raw["derived"], prefix="derived."))
    results = _read_results(trial / "result.json")
    train = config.get("train")
    epochs = train.get("epochs") if isinstance(train, dict) else None
    row.update(
        trial_id=str(info.get("id", trial.name)),
        label=info.get("label", config.get("name", trial.name)),
        seed=info.get("seed", config.get("seed")),
        status=_status(trial, results, epochs),
        trial_dir=str(trial),
    )
    if results:
        row.update(_final_metrics(results[-1]))
    for key, value in _cluster_scores(trial).items():
        row.setdefault(key, value)
    grid: dict[str, Any] = info["grid"] if isinstance(info.get("grid"), dict) else {}
    row["_grid_keys"] = grid_keys(grid)
    return row


def grid_keys(grid: dict[str, Any]) -> list[str]:
    """Dotted keys of a sweep grid; a zipped key "train.batch_size,method.queue_size" is two."""
    return [k.strip() for key in grid for k in str(key).split(",") if k.strip()]


def load_sweep(path: str | Path) -> pd.DataFrame:
    """One row per trial: flattened config ("method.ema_decay"), "derived.*", the identity columns
    (trial_id, label, seed, status, trial_dir) and the final metrics ("eval/knn_top1", "epoch",
    "device_hours", "wall_s").

    `path` is a LOCAL directory (a synced copy of an s3:// or gs:// sweep works). Raises
    SweepDirError when it does not exist, is not a directory, or holds no trial directories.
    Metrics a trial never reported are NaN.
    """
    trials = trial_dirs(path)
    root = Path(path)
    if not trials:
        # A common slip: passing Tune's storage root instead of the experiment directory in it.
        inner = [d for d in sorted(root.iterdir()) if d.is_dir() and trial_dirs(d)]
        hint = f" (did you mean {inner[0]}?)" if inner else ""
        raise SweepDirError(f"{root}: holds no trial directories{hint}; {EXPECTED_LAYOUT}")
    rows = [_load_trial(t) for t in trials]
    keys = sorted({k for row in rows for k in row.pop("_grid_keys")})
    df = pd.DataFrame(rows)
    metrics = sorted(c for c in df.columns if "/" in c or c in EXTRA_METRICS)
    config_cols = sorted(c for c in df.columns if c not in metrics and c not in ID_COLUMNS)
    df = df[ID_COLUMNS + config_cols + metrics].reset_index(drop=True)
    # The dotted keys any trial's grid varies (variants may each have their own grid); the caption
    # warns when one of them varies inside a table cell.
    df.attrs["grid_keys"] = keys
    return df


def is_missing(value: Any) -> bool:
    """None or NaN (pandas fills absent keys with NaN)."""
    return value is None or (isinstance(value, float) and math.isnan(value))
