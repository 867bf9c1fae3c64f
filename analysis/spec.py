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

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, PrivateAttr, ValidationInfo, field_validator, model_validator

from sslray.strict import ConfigError, FieldError, StrictModel, read_yaml, validate

__all__ = [
    "FigureSpec",
    "MetricSpec",
    "Spec",
    "SpecError",
    "list_specs",
    "load_spec",
    "parse_spec",
]

MODES = ("max", "min")


class SpecError(ConfigError):
    """A spec that cannot be used; one line that names the spec file and the key."""

    def describe(self) -> str:
        prefix = f"spec {self.source}: " if self.source else ""
        return prefix + "; ".join(self.problems)


def _must_be(ok: Callable[[Any], bool], what: str, empty: Any = None) -> BeforeValidator:
    """A check in the spec's own words ('must be max or min'); YAML null reads as `empty`."""

    def check(value: Any) -> Any:
        if value is None and empty is not None:
            return empty
        if not ok(value):
            raise ValueError(f"must be {what}")
        return value

    return BeforeValidator(check)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


Text = Annotated[str, _must_be(lambda v: isinstance(v, str) and v != "", "a non-empty string")]
Flag = Annotated[bool, _must_be(lambda v: isinstance(v, bool), "true or false")]
Mode = Annotated[Literal["max", "min"], _must_be(lambda v: v in MODES, "max or min")]
Scale = Annotated[float, _must_be(lambda v: _is_number(v) and v != 0, "a non-zero number")]
Digits = Annotated[int, _must_be(lambda v: isinstance(v, int) and not isinstance(v, bool)
                                 and 0 <= v <= 6, "an integer in [0, 6]")]
Label = Annotated[str, BeforeValidator(lambda v: str(v) if isinstance(v, int | float) else v)]
Names = Annotated[dict[Any, Label], _must_be(lambda v: isinstance(v, dict), "a mapping", {})]
Order = Annotated[tuple[Any, ...], _must_be(lambda v: isinstance(v, list | tuple), "a list", ())]


class MetricSpec(StrictModel):
    """One metric column (shape A) or the pivot's metric (shape B)."""

    metric: Text
    header: Text  # default: the metric's name
    mode: Mode = "max"
    scale: Scale = 100.0
    digits: Digits = 1


class FigureSpec(StrictModel):
    """A line plot: y (mean, error bar = std over seeds) against x, one line per series value."""

    x: Text
    y: Text
    series: Text | None = None
    logx: Flag = False
    xcategorical: Flag = False  # evenly spaced x ticks (0.9, 0.99, 0.999 crowd on a linear axis)
    xlabel: Text | None = None
    ylabel: Text | None = None

    @model_validator(mode="after")
    def _one_axis(self) -> FigureSpec:
        if self.logx and self.xcategorical:
            raise FieldError("logx", "logx and xcategorical exclude each other")
        return self


class Spec(StrictModel):
    """A validated table spec. `metrics` holds one entry for shape B too (the pivot metric).

    The fields are the YAML keys; `name` (output file names) and `source` (messages) come from
    `parse_spec`.
    """

    title: Text  # default: the spec's name
    caption: Annotated[str, _must_be(lambda v: isinstance(v, str), "text", "")] = ""
    rows: Text  # the trial column whose values are the table rows (e.g. label, method.ema_decay)
    row_header: Text | None = None  # default: the rows column name
    mode: Mode = "max"  # which mean is best (bold)
    scale: Scale = 100.0  # multiply values before printing (100: accuracies as percent)
    digits: Digits = 1  # decimals printed
    # Shape A: one column per metric, [{metric, header, mode, scale, digits}] (mode, scale and
    # digits default to the spec's). Shape B: `columns` + `metric` (a pivot of one metric).
    metrics: tuple[MetricSpec, ...] = ()
    columns: Text | None = None  # shape B: the trial column whose values are the table columns
    metric: Text | None = None  # shape B: the metric shown in every cell
    column_order: Order = ()  # shape B: order of the column values
    column_names: Names = {}  # shape B: {raw value: display name} for the column headers
    row_order: Order = ()  # order of the row values; values absent from the data are skipped
    row_names: Names = {}  # {raw value: display name} for the rows
    filter: Annotated[dict[str, Any], _must_be(lambda v: isinstance(v, dict), "a mapping", {})] = {}
    include_stopped: Flag = False  # also aggregate trials stopped early (ASHA)
    init_row: Text | None = None  # shape A: a row of the <metric>_init (random-init) values
    pixels_row: Text | None = None  # shape A: a row of the <metric>_pixels (raw-pixel) values
    figure: FigureSpec | None = None
    paper: Names = {}  # {row value: what the paper reports}: an extra last column 'paper'
    _name: str = PrivateAttr("spec")
    _source: str = PrivateAttr("<dict>")

    def model_post_init(self, context: Any, /) -> None:
        if isinstance(context, dict):
            self._name = context.get("name", self._name)
            self._source = context.get("source", self._source)

    @model_validator(mode="before")
    @classmethod
    def _shape(cls, raw: Any, info: ValidationInfo) -> Any:
        if not isinstance(raw, dict):
            return raw
        raw = dict(raw)
        if raw.get("title") is None:
            raw["title"] = (info.context or {}).get("name", "spec")
        if "columns" in raw or "metric" in raw:
            if "metrics" in raw:
                raise FieldError("metrics", "give either metrics (shape A) or columns + metric "
                                 "(shape B)")
            if isinstance(raw.get("metric"), str):
                raw["metrics"] = [raw["metric"]]
        return raw

    @field_validator("metrics", mode="before")
    @classmethod
    def _entries(cls, entries: Any, info: ValidationInfo) -> Any:
        """`metric` alone means {metric, header: metric}; mode, scale, digits: the spec's."""
        if not isinstance(entries, list):
            return entries
        shared = {k: info.data[k] for k in ("mode", "scale", "digits") if k in info.data}
        out = []
        for entry in entries:
            entry = {"metric": entry} if isinstance(entry, str) else entry
            if isinstance(entry, dict) and entry.get("header") is None and "metric" in entry:
                entry = {**entry, "header": entry["metric"]}
            out.append({**shared, **entry} if isinstance(entry, dict) else entry)
        return out

    @model_validator(mode="after")
    def _one_shape(self) -> Spec:
        if self.columns is not None or self.metric is not None:
            for key in ("columns", "metric"):
                if getattr(self, key) is None:
                    raise FieldError(key, "required")
            for key in ("init_row", "pixels_row"):
                if getattr(self, key) is not None:
                    raise FieldError(key, "only for shape A (metrics:), not for a pivot")
        else:
            for key in ("column_order", "column_names"):
                if key in self.model_fields_set:
                    raise FieldError(key, "only for shape B (columns: + metric:)")
            if not self.metrics:
                raise FieldError("metrics", "required: a non-empty list of {metric, header}")
        return self

    @property
    def name(self) -> str:
        return self._name

    @property
    def source(self) -> str:
        return self._source

    @property
    def is_pivot(self) -> bool:
        return self.columns is not None

    def metric_spec(self, metric: str) -> MetricSpec:
        """The column spec of a metric, or the spec-wide defaults for one not in the table."""
        for m in self.metrics:
            if m.metric == metric:
                return m
        return MetricSpec(metric=metric, header=metric, mode=self.mode, scale=self.scale,
                          digits=self.digits)


def _specs_dir() -> Path:
    # Beside this file (package data in a wheel too); importlib.resources misreads the package
    # as a namespace under some editable installs.
    return Path(__file__).resolve().parent / "specs"


def list_specs() -> list[str]:
    """Names of the shipped specs (analysis/specs/*.yaml)."""
    return sorted(
        p.name[: -len(".yaml")] for p in _specs_dir().iterdir() if p.name.endswith(".yaml")
    )


def parse_spec(raw: Any, name: str, source: str = "<dict>") -> Spec:
    """Validate a spec mapping (as read from YAML). Raises SpecError naming the key."""
    return validate(Spec, raw, source, error=SpecError, context={"name": name, "source": source})


def load_spec(name_or_path: str | Path) -> Spec:
    """A shipped spec by name (`moco_momentum`) or any spec YAML by path.

    The spec's name (used for output file names) is the file's stem.
    """
    text = str(name_or_path)
    path = Path(text)
    looks_like_path = text.endswith((".yaml", ".yml")) or "/" in text or path.is_file()
    if looks_like_path:
        if not path.is_file():
            raise SpecError(f"file {path}", ["not found"])
        source, name = str(path), path.stem
    else:
        path = _specs_dir().joinpath(f"{text}.yaml")
        if not path.is_file():
            known = ", ".join(list_specs())
            raise SpecError("", [f"unknown spec '{text}'; shipped specs: {known} (or pass a path "
                                 f"to a YAML file)"])
        source, name = f"analysis/specs/{text}.yaml", text
    try:
        raw = read_yaml(path)
    except ConfigError as exc:
        raise SpecError(source, exc.problems) from None
    return parse_spec(raw, name=name, source=source)
