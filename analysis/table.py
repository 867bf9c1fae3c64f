"""Trials DataFrame + spec -> a `Table`: rows x columns of (mean, std, n) cells, ready to render.

Aggregation rules (they decide what a reader may conclude, so they are fixed here, once):
- a cell pools the finished trials of its (row, column); `include_stopped: true` adds the trials
  an early-stopping scheduler cut short (their last report, fewer epochs);
- mean and SAMPLE std (ddof=1) over those trials, and n; n=1 has no std (never "± 0");
- the best mean of each column is marked (after rounding to the printed digits, so ties that look
  equal are all bold); the random-init row never competes;
- a row exists for every row value among the (filtered) trials, even when none finished: "–" then
  says "ran, but nothing to show", and the caption counts the trials by status;
- the random-init row pools the `<metric>_init` values of every aggregated trial: first the mean
  within each seed (trials of one seed share the same initial weights), then mean ± std across
  seeds, so n = number of seeds, not of trials.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from analysis.caption import build_caption
from analysis.load import FINISHED, STOPPED, grid_keys
from analysis.spec import MetricSpec, Spec
from analysis.values import fmt_value, lookup, norm_value

__all__ = ["Cell", "Row", "Table", "TableError", "build_table"]


class TableError(ValueError):
    """The spec does not fit the sweep (a rows/columns/filter column the trials do not have)."""


@dataclass(frozen=True)
class Cell:
    """Scaled mean and sample std over n trials (or seeds, in the init row); None when n=0."""

    mean: float | None
    std: float | None
    n: int
    best: bool = False


@dataclass(frozen=True)
class Row:
    key: Any  # the raw row value (e.g. 0.99); None for the init row
    label: str  # what the table prints
    cells: tuple[Cell, ...]
    paper: str | None = None
    is_init: bool = False  # a baseline row (random init, raw pixels): never bold
    suffix: str = "_init"  # a baseline row's metric suffix


@dataclass
class Table:
    """Everything the renderers need; `trials` are the aggregated trials (for figures)."""

    spec: Spec
    title: str
    caption: str
    row_header: str
    headers: tuple[str, ...]  # one per data column (the paper column is extra)
    columns: tuple[MetricSpec, ...]  # per data column: metric, scale, digits, mode
    column_keys: tuple[Any, ...]  # per data column: the metric (shape A) or raw pivot value (B)
    rows: tuple[Row, ...]
    has_paper: bool
    trials: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)


def _ordered(keys: list[Any], order: tuple[Any, ...]) -> list[Any]:
    """`order` first (absent values skipped), then the rest in natural order (numbers by value)."""
    wanted = [norm_value(v) for v in order]
    first = [k for k in dict.fromkeys(wanted) if k in keys]
    rest = sorted(k for k in keys if k not in first)
    return first + rest


def _equals(series: pd.Series, value: Any) -> pd.Series:
    """Boolean mask of `series == value` by normalised key (a plain `==` against a tuple key
    would be read by pandas as an element-wise comparison with a sequence)."""
    return _key_mask(series.map(norm_value), norm_value(value))


def _key_mask(keys: pd.Series, key: Any) -> pd.Series:
    """Boolean mask of already-normalised `keys == key` (element by element: a tuple key)."""
    return pd.Series([k == key for k in keys], index=keys.index, dtype=bool)


def _require(df: pd.DataFrame, column: str, key: str, spec: Spec) -> None:
    if column not in df.columns:
        known = [c for c in df.columns if "/" not in c and c != "trial_dir"]
        close = difflib.get_close_matches(column, known, n=3, cutoff=0.85)
        section = [c for c in known if c.split(".")[0] == column.split(".")[0]]
        hint = (
            f"did you mean {', '.join(close)}?"
            if close
            else f"its {column.split('.')[0]} columns: {', '.join(section)}"
            if section
            else f"trial columns: {', '.join(known[:20])}{', ...' if len(known) > 20 else ''}"
        )
        raise TableError(
            f"spec {spec.source}: {key}: column '{column}' is not in this sweep's trials ({hint})"
        )


def _cell(values: pd.Series, scale: float) -> Cell:
    numeric = pd.to_numeric(values, errors="coerce").dropna().astype(float)
    n = int(numeric.size)
    if n == 0:
        return Cell(None, None, 0)
    mean = float(numeric.mean()) * scale
    std = float(numeric.std(ddof=1)) * abs(scale) if n > 1 else None
    return Cell(mean, std, n)


def _mark_best(cells: list[Cell], column: MetricSpec) -> list[Cell]:
    filled = [c for c in cells if c.mean is not None]
    if len(filled) < 2:  # one value is not "the best" of anything
        return cells
    rounded = [round(c.mean, column.digits) for c in filled if c.mean is not None]
    target = max(rounded) if column.mode == "max" else min(rounded)
    return [
        Cell(c.mean, c.std, c.n, best=True)
        if c.mean is not None and round(c.mean, column.digits) == target
        else c
        for c in cells
    ]


def _key_str(value: object) -> str:
    """A config value as a group key: NaN/None (the default) as "", 48.0 (pandas) as "48"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def tile_label(probe: object, probe_grid: object) -> str:
    """"4x4 tiles" for a trunk probed on its tile grid (Jigsaw++ `method.probe: tiles`; no
    probe_grid: the 3x3 puzzle cells), "" otherwise: how its init row and its tick name it."""
    if probe != "tiles":
        return ""
    grid = _key_str(probe_grid) or "3"
    return f"{grid}x{grid} tiles"


def pool_label(pool_grid: object) -> str:
    """"2x2 pooled" for a backbone whose last map is averaged over a grid of regions
    (`backbone.pool_grid` > 1: g*g times the features of global pooling), "" otherwise."""
    grid = _key_str(pool_grid)
    return f"{grid}x{grid} pooled" if grid not in ("", "1") else ""


def layer_label(layer: object, grid: object = None) -> str:
    """"stage-2" for probes that read another layer than the trunk's output (`eval.layer`),
    "probed 4x4" (or "stage-2 probed 2x2") for probes that pool the map over a grid
    (`eval.pool_grid`), "" for "final" as trained (the default)."""
    name, g = _key_str(layer), _key_str(grid)
    parts = ([] if name in ("", "final") else [name]) + ([f"probed {g}x{g}"] if g else [])
    return " ".join(parts)


def init_groups(trials: pd.DataFrame, label: str) -> list[tuple[str, pd.DataFrame]]:
    """One random-init row per backbone, input size and probe: a sweep that trains different
    architectures (the cc target is an AlexNet-style tower, the others ResNets), pools them over
    different grids (`backbone.pool_grid`), probes at different image sizes, or reads a trunk
    differently (Jigsaw++ `method.probe: tiles`, another `eval.layer`) must not average their
    inits."""
    keys = [c for c in ("backbone.arch", "backbone.width", "backbone.blocks",
                        "backbone.pool_grid", "data.image_size", "method.probe",
                        "method.probe_grid", "eval.layer", "eval.pool_grid") if c in trials]
    defaults = {"method.probe": {"image": ""}, "backbone.pool_grid": {"1": ""},
                "eval.layer": {"final": ""}}
    if not keys or len(trials) == 0:
        return [(label, trials)]
    groups = [(dict(zip(keys, k if isinstance(k, tuple) else (k,), strict=True)), g)
              for k, g in trials.groupby([trials[c].map(_key_str).replace(defaults.get(c, {}))
                                          for c in keys], sort=True)]
    if len(groups) == 1:
        return [(label, trials)]

    def varies(column: str) -> bool:
        return len({key.get(column) for key, _ in groups}) > 1

    def name(key: dict[str, str]) -> str:
        arch = key.get("backbone.arch", "")
        same_arch = [k for k, _ in groups if k.get("backbone.arch") == arch]
        parts = [arch]
        if len({k.get("backbone.width") for k in same_arch}) > 1:
            parts.append(f"width {key['backbone.width']}")
        if varies("data.image_size") and key.get("data.image_size"):
            parts.append(f"{key['data.image_size']} px")
        parts.append(pool_label(key.get("backbone.pool_grid")))
        parts.append(tile_label(key.get("method.probe"), key.get("method.probe_grid")))
        parts.append(layer_label(key.get("eval.layer"), key.get("eval.pool_grid")))
        return f"{label} ({', '.join(p for p in parts if p)})"

    return [(name(key), g) for key, g in groups]


def _init_cell(trials: pd.DataFrame, metric: MetricSpec, suffix: str = "_init") -> Cell:
    column = f"{metric.metric}{suffix}"  # transfer/digits/knn_top1 -> ..._init / ..._pixels
    if column not in trials.columns:
        return Cell(None, None, 0)
    values = pd.to_numeric(trials[column], errors="coerce")
    frame = pd.DataFrame({"seed": trials["seed"].astype(str), "v": values}).dropna()
    per_seed = frame.groupby("seed")["v"].mean()
    return _cell(per_seed, metric.scale)


def _apply_filter(df: pd.DataFrame, spec: Spec) -> pd.DataFrame:
    keep = pd.Series(True, index=df.index)
    for column, wanted in spec.filter.items():
        _require(df, column, f"filter.{column}", spec)
        allowed = {norm_value(v) for v in (wanted if isinstance(wanted, list) else [wanted])}
        keep &= df[column].map(lambda v, ok=allowed: norm_value(v) in ok).astype(bool)
    return df[keep]


def _pooled_notes(trials: pd.DataFrame, spec: Spec, meta: dict[str, Any]) -> list[str]:
    """Grid keys that vary inside a cell: the cell then mixes settings, and the reader must know."""
    grid: dict[str, Any] = meta["grid"] if isinstance(meta.get("grid"), dict) else {}
    keys = sorted(set(grid_keys(grid)) | set(trials.attrs.get("grid_keys", [])))
    fixed = {spec.rows, spec.columns, *spec.filter}
    notes = []
    for key in keys:
        if key in fixed or key not in trials.columns or trials.empty:
            continue
        groups = [spec.rows] + ([spec.columns] if spec.columns else [])
        # repr of the normalised key: hashable, and groupby never unpacks it as a tuple key.
        keyed = trials.assign(
            **{f"_g{i}": trials[g].map(lambda v: repr(norm_value(v))) for i, g in enumerate(groups)}
        )
        varying = keyed.groupby([f"_g{i}" for i in range(len(groups))], dropna=False)[key].agg(
            lambda s: len({norm_value(v) for v in s})
        )
        if (varying > 1).any():
            distinct = sorted(set(trials[key].dropna()), key=norm_value)
            values = ", ".join(fmt_value(v) for v in distinct)
            notes.append(f"cells pool trials that differ in {key} ({values})")
    return notes


def build_table(df: pd.DataFrame, spec: Spec, meta: dict[str, Any] | None = None) -> Table:
    """Aggregate the trials (from `load_sweep`) as the spec says. `meta` is `load_sweep_meta`'s
    dict (sweep name, git revision, versions, grid) and only feeds the caption."""
    meta = dict(meta or {})
    _require(df, spec.rows, "rows", spec)
    if spec.columns is not None:
        _require(df, spec.columns, "columns", spec)
    filtered = _apply_filter(df, spec)
    statuses = {FINISHED, STOPPED} if spec.include_stopped else {FINISHED}
    trials = filtered[filtered["status"].isin(statuses)]
    trials.attrs["grid_keys"] = list(df.attrs.get("grid_keys", []))

    row_of = filtered[spec.rows].map(norm_value)
    row_keys = _ordered([k for k in row_of.dropna().unique()], spec.row_order)
    raw_of = {norm_value(v): v for v in filtered[spec.rows] if norm_value(v) is not None}

    if spec.columns is not None:
        col_of = filtered[spec.columns].map(norm_value)
        col_keys = _ordered([k for k in col_of.dropna().unique()], spec.column_order)
        col_raw = {norm_value(v): v for v in filtered[spec.columns] if norm_value(v) is not None}
        metric = spec.metrics[0]
        columns = tuple(metric for _ in col_keys)
        column_keys: tuple[Any, ...] = tuple(col_raw[k] for k in col_keys)
        headers = tuple(
            lookup(spec.column_names, col_raw[k]) or fmt_value(col_raw[k]) for k in col_keys
        )
    else:
        columns = spec.metrics
        column_keys = tuple(m.metric for m in spec.metrics)
        headers = tuple(m.header for m in spec.metrics)

    # grid[column][row] -> Cell, then the best mark per column. Each trial's row key is
    # normalised once (not once per row: 10,000 trials x 500 rows took 17 s).
    in_row_keys = trials[spec.rows].map(norm_value)
    row_masks = {key: _key_mask(in_row_keys, key) for key in row_keys}
    grid: list[list[Cell]] = []
    for j, column in enumerate(columns):
        mask_col = (
            _equals(trials[spec.columns], column_keys[j])
            if spec.columns is not None
            else pd.Series(True, index=trials.index)
        )
        values = (
            trials[column.metric]
            if column.metric in trials.columns
            else pd.Series(np.nan, index=trials.index)
        )
        cells = [_cell(values[mask_col & row_masks[key]], column.scale) for key in row_keys]
        grid.append(_mark_best(cells, column))

    rows = [
        Row(
            key=raw_of[key],
            label=lookup(spec.row_names, raw_of[key]) or fmt_value(raw_of[key]),
            cells=tuple(grid[j][i] for j in range(len(columns))),
            paper=lookup(spec.paper, raw_of[key]),
        )
        for i, key in enumerate(row_keys)
    ]
    if spec.init_row and not spec.is_pivot:
        for label, group in init_groups(trials, spec.init_row):
            rows.append(
                Row(
                    key=None,
                    label=label,
                    cells=tuple(_init_cell(group, m) for m in columns),
                    paper=spec.paper.get(spec.init_row),
                    is_init=True,
                )
            )
    if spec.pixels_row and not spec.is_pivot:  # pixels do not depend on the backbone
        pixel_cells = tuple(_init_cell(trials, m, "_pixels") for m in columns)
        if any(c.n for c in pixel_cells):
            rows.append(Row(key=None, label=spec.pixels_row, cells=pixel_cells,
                            paper=spec.paper.get(spec.pixels_row), is_init=True,
                            suffix="_pixels"))

    caption = build_caption(
        spec,
        meta,
        filtered=filtered,
        trials=trials,
        notes=_pooled_notes(trials, spec, meta),
    )
    return Table(
        spec=spec,
        title=spec.title,
        caption=caption,
        row_header=spec.row_header or spec.rows,
        headers=headers,
        columns=tuple(columns),
        column_keys=column_keys,
        rows=tuple(rows),
        has_paper=bool(spec.paper),
        trials=trials,
        meta=meta,
    )
