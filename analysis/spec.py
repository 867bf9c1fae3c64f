"""Table specs: a small YAML file says which paper table a sweep feeds and how to draw it.

Two shapes:

    # A: one column per metric             # B: a pivot of one metric
    rows: method.ema_decay                 rows: method.dictionary
    metrics:                               columns: method.queue_size
      - {metric: eval/knn_top1,            metric: eval/knn_top1
         header: kNN top-1}

Shipped specs live in `analysis/specs/<name>.yaml`; `load_spec` takes a shipped name or a path.
Validation is strict like the run configs (house rule 8): an unknown key is an error that names
it (with a "did you mean"), because a misspelt `row_oder` would otherwise silently do nothing.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "FigureSpec",
    "MetricSpec",
    "Spec",
    "SpecError",
    "list_specs",
    "load_spec",
    "parse_spec",
]

TOP_KEYS = {
    "title": "table title, first words of the caption",
    "caption": "free text put before the automatic caption",
    "rows": "the trial column whose values are the table rows (e.g. label, method.ema_decay)",
    "row_header": "header of the row column (default: the rows column name)",
    "metrics": "shape A: list of {metric, header, mode, scale, digits}",
    "columns": "shape B: the trial column whose values are the table columns",
    "column_order": "shape B: order of the column values",
    "column_names": "shape B: {raw value: display name} for the column headers",
    "metric": "shape B: the metric shown in every cell",
    "row_order": "order of the row values; values absent from the data are skipped",
    "row_names": "{raw value: display name} for the rows",
    "filter": "{column: value or [values]}: keep only matching trials",
    "mode": "max | min: which mean is best (bold); default max",
    "scale": "multiply values before printing (default 100: accuracies as percent)",
    "digits": "decimals printed (default 1)",
    "include_stopped": "also aggregate trials stopped early (ASHA); default false",
    "init_row": "shape A: name of a row of the <metric>_init (random-init) values",
    "pixels_row": "shape A: name of a row of the <metric>_pixels (raw-pixel) values",
    "figure": "{x, y, series, logx, xcategorical, xlabel, ylabel}",
    "paper": "{row value: what the paper reports}: an extra last column 'paper'",
}
METRIC_KEYS = {"metric", "header", "mode", "scale", "digits"}
FIGURE_KEYS = {"x", "y", "series", "logx", "xcategorical", "xlabel", "ylabel"}
MODES = ("max", "min")


class SpecError(ValueError):
    """A spec that cannot be used; the message names the spec file and the key."""


@dataclass(frozen=True)
class MetricSpec:
    """One metric column (shape A) or the pivot's metric (shape B)."""

    metric: str
    header: str
    mode: str = "max"
    scale: float = 100.0
    digits: int = 1


@dataclass(frozen=True)
class FigureSpec:
    """A line plot: y (mean, error bar = std over seeds) against x, one line per series value."""

    x: str
    y: str
    series: str | None = None
    logx: bool = False
    xcategorical: bool = False  # evenly spaced x ticks (0.9, 0.99, 0.999 crowd on a linear axis)
    xlabel: str | None = None
    ylabel: str | None = None


@dataclass(frozen=True)
class Spec:
    """A validated table spec. `metrics` holds one entry for shape B too (the pivot metric)."""

    name: str
    title: str
    rows: str
    metrics: tuple[MetricSpec, ...]
    source: str = "<dict>"
    caption: str = ""
    row_header: str | None = None
    columns: str | None = None  # set: shape B (pivot)
    column_order: tuple[Any, ...] = ()
    column_names: dict[Any, str] = field(default_factory=dict)
    row_order: tuple[Any, ...] = ()
    row_names: dict[Any, str] = field(default_factory=dict)
    filter: dict[str, Any] = field(default_factory=dict)
    mode: str = "max"
    scale: float = 100.0
    digits: int = 1
    include_stopped: bool = False
    init_row: str | None = None
    pixels_row: str | None = None
    figure: FigureSpec | None = None
    paper: dict[Any, str] = field(default_factory=dict)

    @property
    def is_pivot(self) -> bool:
        return self.columns is not None

    def metric_spec(self, metric: str) -> MetricSpec:
        """The column spec of a metric, or the spec-wide defaults for one not in the table."""
        for m in self.metrics:
            if m.metric == metric:
                return m
        return MetricSpec(metric, metric, self.mode, self.scale, self.digits)


def _specs_dir() -> Path:
    # Beside this file (package data in a wheel too); importlib.resources misreads the package
    # as a namespace under some editable installs.
    return Path(__file__).resolve().parent / "specs"


def list_specs() -> list[str]:
    """Names of the shipped specs (analysis/specs/*.yaml)."""
    return sorted(
        p.name[: -len(".yaml")] for p in _specs_dir().iterdir() if p.name.endswith(".yaml")
    )


class _Checker:
    """Type checks that name the spec file and the dotted key."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, key: str, problem: str) -> SpecError:
        return SpecError(f"spec {self.source}: {key}: {problem}")

    def unknown(self, raw: dict[str, Any], known: Any, where: str = "") -> None:
        for key in raw:
            if key not in known:
                close = difflib.get_close_matches(str(key), list(known), n=1)
                hint = (
                    f"did you mean '{close[0]}'?"
                    if close
                    else f"known keys: {', '.join(sorted(known))}"
                )
                raise self.fail(f"{where}{key}", f"unknown key ({hint})")

    def string(self, raw: dict[str, Any], key: str, where: str = "", required: bool = False) -> Any:
        value = raw.get(key)
        if value is None:
            if required:
                raise self.fail(f"{where}{key}", "required")
            return None
        if not isinstance(value, str) or not value:
            raise self.fail(f"{where}{key}", f"must be a non-empty string, got {value!r}")
        return value

    def boolean(self, raw: dict[str, Any], key: str, where: str = "") -> bool:
        value = raw.get(key, False)
        if not isinstance(value, bool):
            raise self.fail(f"{where}{key}", f"must be true or false, got {value!r}")
        return value

    def number(self, raw: dict[str, Any], key: str, default: float, where: str = "") -> float:
        value = raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value == 0:
            raise self.fail(f"{where}{key}", f"must be a non-zero number, got {value!r}")
        return float(value)

    def digits(self, raw: dict[str, Any], default: int, where: str = "") -> int:
        value = raw.get("digits", default)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 6:
            raise self.fail(f"{where}digits", f"must be an integer in [0, 6], got {value!r}")
        return value

    def mode(self, raw: dict[str, Any], default: str, where: str = "") -> str:
        value = raw.get("mode", default)
        if value not in MODES:
            raise self.fail(f"{where}mode", f"must be max or min, got {value!r}")
        return str(value)

    def mapping(self, raw: dict[str, Any], key: str) -> dict[Any, Any]:
        value = raw.get(key) or {}
        if not isinstance(value, dict):
            raise self.fail(key, f"must be a mapping, got {type(value).__name__}")
        return dict(value)

    def sequence(self, raw: dict[str, Any], key: str) -> tuple[Any, ...]:
        value = raw.get(key) or []
        if not isinstance(value, list):
            raise self.fail(key, f"must be a list, got {type(value).__name__}")
        return tuple(value)


def parse_spec(raw: Any, name: str, source: str = "<dict>") -> Spec:
    """Validate a spec mapping (as read from YAML). Raises SpecError naming the key."""
    check = _Checker(source)
    if not isinstance(raw, dict):
        raise SpecError(f"spec {source}: expected a mapping at the top level")
    check.unknown(raw, TOP_KEYS)
    rows = check.string(raw, "rows", required=True)
    mode = check.mode(raw, "max")
    scale = check.number(raw, "scale", 100.0)
    digits = check.digits(raw, 1)

    pivot = "columns" in raw or "metric" in raw
    if pivot and "metrics" in raw:
        raise check.fail("metrics", "give either metrics (shape A) or columns + metric (shape B)")
    if pivot:
        columns = check.string(raw, "columns", required=True)
        metric = check.string(raw, "metric", required=True)
        metrics: tuple[MetricSpec, ...] = (MetricSpec(metric, metric, mode, scale, digits),)
        for key in ("init_row", "pixels_row"):
            if raw.get(key) is not None:
                raise check.fail(key, "only for shape A (metrics:), not for a pivot")
    else:
        columns = None
        for key in ("column_order", "column_names"):
            if key in raw:
                raise check.fail(key, "only for shape B (columns: + metric:)")
        entries = raw.get("metrics")
        if not isinstance(entries, list) or not entries:
            raise check.fail("metrics", "required: a non-empty list of {metric, header}")
        parsed = []
        for i, entry in enumerate(entries):
            where = f"metrics[{i}]."
            if isinstance(entry, str):
                entry = {"metric": entry}
            if not isinstance(entry, dict):
                raise check.fail(f"metrics[{i}]", "must be a mapping {metric, header}")
            check.unknown(entry, METRIC_KEYS, where)
            metric = check.string(entry, "metric", where, required=True)
            parsed.append(
                MetricSpec(
                    metric=metric,
                    header=check.string(entry, "header", where) or metric,
                    mode=check.mode(entry, mode, where),
                    scale=check.number(entry, "scale", scale, where),
                    digits=check.digits(entry, digits, where),
                )
            )
        metrics = tuple(parsed)

    figure = None
    if raw.get("figure") is not None:
        fig = raw["figure"]
        if not isinstance(fig, dict):
            raise check.fail("figure", "must be a mapping {x, y, series, logx, ...}")
        check.unknown(fig, FIGURE_KEYS, "figure.")
        figure = FigureSpec(
            x=check.string(fig, "x", "figure.", required=True),
            y=check.string(fig, "y", "figure.", required=True),
            series=check.string(fig, "series", "figure."),
            logx=check.boolean(fig, "logx", "figure."),
            xcategorical=check.boolean(fig, "xcategorical", "figure."),
            xlabel=check.string(fig, "xlabel", "figure."),
            ylabel=check.string(fig, "ylabel", "figure."),
        )
        if figure.logx and figure.xcategorical:
            raise check.fail("figure.logx", "logx and xcategorical exclude each other")

    for key in ("row_names", "column_names", "paper"):
        for k, v in check.mapping(raw, key).items():
            if not isinstance(v, str | int | float):
                raise check.fail(f"{key}.{k}", f"must be text, got {v!r}")
    return Spec(
        name=name,
        title=check.string(raw, "title") or name,
        rows=rows,
        metrics=metrics,
        source=source,
        caption=check.string(raw, "caption") or "",
        row_header=check.string(raw, "row_header"),
        columns=columns,
        column_order=check.sequence(raw, "column_order"),
        column_names={k: str(v) for k, v in check.mapping(raw, "column_names").items()},
        row_order=check.sequence(raw, "row_order"),
        row_names={k: str(v) for k, v in check.mapping(raw, "row_names").items()},
        filter=check.mapping(raw, "filter"),
        mode=mode,
        scale=scale,
        digits=digits,
        include_stopped=check.boolean(raw, "include_stopped"),
        init_row=check.string(raw, "init_row"),
        pixels_row=check.string(raw, "pixels_row"),
        figure=figure,
        paper={k: str(v) for k, v in check.mapping(raw, "paper").items()},
    )


def load_spec(name_or_path: str | Path) -> Spec:
    """A shipped spec by name (`moco_momentum`) or any spec YAML by path.

    The spec's name (used for output file names) is the file's stem.
    """
    text = str(name_or_path)
    path = Path(text)
    looks_like_path = text.endswith((".yaml", ".yml")) or "/" in text or path.is_file()
    if looks_like_path:
        if not path.is_file():
            raise SpecError(f"spec file {path}: not found")
        source, body, name = str(path), path.read_text(), path.stem
    else:
        shipped = _specs_dir().joinpath(f"{text}.yaml")
        if not shipped.is_file():
            known = ", ".join(list_specs())
            raise SpecError(
                f"unknown spec '{text}'; shipped specs: {known} (or pass a path to a YAML file)"
            )
        source, body, name = f"analysis/specs/{text}.yaml", shipped.read_text(), text
    try:
        raw = yaml.safe_load(body)
    except yaml.YAMLError as exc:
        raise SpecError(f"spec {source}: not valid YAML ({exc})") from exc
    return parse_spec(raw, name=name, source=source)
