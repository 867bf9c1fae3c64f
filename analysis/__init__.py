"""sslray's analysis package: finished sweep directories -> DataFrame -> paper tables and figures.

Deliberately free of torch and Ray (of `sslray` it imports only `sslray.strict` and
`sslray.atomic_file`, which need nothing but the standard library, PyYAML and pydantic): tables
build on a laptop from a synced copy of the results, with pandas, numpy and matplotlib.

    from analysis import load_sweep, load_sweep_meta, load_spec, build_table, render_markdown
    df = load_sweep("results/moco_momentum")
    table = build_table(df, load_spec("moco_momentum"), load_sweep_meta("results/moco_momentum"))
    print(render_markdown(table))

Command line: `python -m analysis SWEEP_DIR` (see `--help`).
"""

from analysis.figure import save_figure
from analysis.load import (
    ERRORED,
    FINISHED,
    NO_RESULT,
    STATUSES,
    STOPPED,
    SweepDirError,
    load_sweep,
    load_sweep_meta,
)
from analysis.render import render, render_csv, render_latex, render_markdown, tidy_frame
from analysis.spec import FigureSpec, MetricSpec, Spec, SpecError, list_specs, load_spec, parse_spec
from analysis.table import Cell, Row, Table, TableError, build_table

__all__ = [
    "ERRORED",
    "FINISHED",
    "NO_RESULT",
    "STATUSES",
    "STOPPED",
    "Cell",
    "FigureSpec",
    "MetricSpec",
    "Row",
    "Spec",
    "SpecError",
    "SweepDirError",
    "Table",
    "TableError",
    "build_table",
    "list_specs",
    "load_spec",
    "load_sweep",
    "load_sweep_meta",
    "parse_spec",
    "render",
    "render_csv",
    "render_latex",
    "render_markdown",
    "save_figure",
    "tidy_frame",
]
