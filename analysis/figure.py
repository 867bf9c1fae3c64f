"""Figures for the tables whose paper draws one (MoCo Fig. 3: accuracy vs. dictionary size).

Mean over seeds per (series, x), error bars = sample std over seeds, one line per series value;
the random-init level as a dashed line when the spec has an init row. matplotlib is imported
here, lazily and with the Agg backend, so `import analysis` stays light and works headless.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.table import Table, init_groups, layer_label, pool_label, tile_label
from analysis.values import fmt_value, lookup, norm_value
from sslray.atomic_file import atomic_write

__all__ = ["save_figure"]

FORMATS = ("png", "svg")


def _series_points(trials: pd.DataFrame, x: str, y: str, scale: float) -> list[tuple[Any, float,
                                                                                     float]]:
    """[(x raw, mean, std)] sorted by x; std 0 where a point has a single trial."""
    values = pd.to_numeric(trials[y], errors="coerce") * scale
    frame = pd.DataFrame({"k": trials[x].map(lambda v: repr(norm_value(v))), "x": trials[x],
                          "y": values}).dropna(subset=["y"])
    points = []
    for _, group in frame.groupby("k"):
        ys = group["y"]
        std = float(ys.std(ddof=1)) if len(ys) > 1 else 0.0
        points.append((group["x"].iloc[0], float(ys.mean()), std))
    return sorted(points, key=lambda p: norm_value(p[0]))


def _wrap(text: str, width: int = 18) -> str:
    """A tick's backbone description broken after commas into lines of about `width`."""
    lines: list[str] = []
    for part in text.split(", "):
        if lines and len(lines[-1]) + len(part) + 2 <= width:
            lines[-1] += f", {part}"
        else:
            lines.append(part)
    return ",\n".join(lines)


def save_figure(table: Table, directory: str | Path) -> list[Path]:
    """Draw the spec's figure into `directory/<spec>.png` and `.svg`; [] when the spec has none.

    Each file is written to a temporary name and renamed, so an interrupted run never leaves a
    truncated figure behind.
    """
    fig_spec = table.spec.figure
    if fig_spec is None:
        return []
    import matplotlib

    matplotlib.use("Agg")  # no display on a cluster head node or in CI
    import matplotlib.pyplot as plt

    spec = table.spec
    trials = table.trials
    metric = spec.metric_spec(fig_spec.y)
    categories = trials[fig_spec.x].nunique() if fig_spec.x in trials.columns else 0
    width = max(5.0, 1.4 * categories) if fig_spec.xcategorical else 5.0  # room for the ticks
    fig, ax = plt.subplots(figsize=(width, 3.8))
    if fig_spec.x in trials.columns and fig_spec.y in trials.columns:
        if fig_spec.series and fig_spec.series in trials.columns:
            keys = {repr(norm_value(v)): v for v in trials[fig_spec.series].dropna()}
            groups = [
                (v, trials[trials[fig_spec.series].map(lambda s, k=k: repr(norm_value(s)) == k)])
                for k, v in sorted(keys.items(), key=lambda kv: norm_value(kv[1]))
            ]
        else:
            groups = [(None, trials)]
        all_x = sorted({norm_value(v) for v in trials[fig_spec.x].dropna()})
        if fig_spec.x == spec.rows and spec.row_order:  # categories in the table's row order
            order = [norm_value(v) for v in spec.row_order]
            all_x.sort(key=lambda v: order.index(v) if v in order else len(order))
        for value, group in groups:
            points = _series_points(group, fig_spec.x, fig_spec.y, metric.scale)
            if not points:
                continue
            if fig_spec.xcategorical:
                xs: list[Any] = [all_x.index(norm_value(p[0])) for p in points]
            else:
                xs = [float(p[0]) for p in points]
            label = None
            if value is not None:
                names = spec.row_names if fig_spec.series == spec.rows else {}
                label = lookup(names, value) or fmt_value(value)
            # Categories (methods) are not a continuum: points with error bars, no line.
            style = "none" if fig_spec.xcategorical else "-"
            ax.errorbar(xs, [p[1] for p in points], yerr=[p[2] for p in points], marker="o",
                        capsize=3, label=label, linestyle=style)
        if fig_spec.xcategorical:
            names = spec.row_names if fig_spec.x == spec.rows else {}
            arch = _archs(trials, fig_spec.x)
            ax.set_xticks(range(len(all_x)))
            ax.set_xticklabels([(lookup(names, k[1]) or fmt_value(k[1]))
                                + (f"\n[{_wrap(arch[k])}]" if k in arch else "") for k in all_x],
                               fontsize=8)
        init_col = f"{fig_spec.y}_init"
        if spec.init_row and init_col in trials.columns:
            # one level per backbone, each its own dash and shade (raw pixels: black "--")
            styles = iter(zip([":", "-.", (0, (5, 2, 1, 2, 1, 2)), (0, (1, 1)), (0, (8, 3))],
                              ["tab:gray", "tab:brown", "tab:olive", "tab:purple", "tab:cyan"],
                              strict=True))
            for label, group in init_groups(trials, spec.init_row):
                frame = pd.DataFrame({"seed": group["seed"].astype(str),
                                      "v": pd.to_numeric(group[init_col], errors="coerce")})
                frame = frame.dropna()
                if not frame.empty:
                    level = float(frame.groupby("seed")["v"].mean().mean()) * metric.scale
                    dash, color = next(styles, (":", "gray"))
                    ax.axhline(level, color=color, linestyle=dash, linewidth=1, label=label)
        pixels_col = f"{fig_spec.y}_pixels"
        if spec.pixels_row and pixels_col in trials.columns:
            frame = pd.DataFrame({"seed": trials["seed"].astype(str),
                                  "v": pd.to_numeric(trials[pixels_col], errors="coerce")})
            frame = frame.dropna()
            if not frame.empty:  # pixels do not depend on the backbone: one line
                level = float(frame.groupby("seed")["v"].mean().mean()) * metric.scale
                ax.axhline(level, color="black", linestyle="--", linewidth=1.2,
                           label=spec.pixels_row)
    if fig_spec.logx:
        ax.set_xscale("log")
        # Label the swept values themselves (256, 4096, ...) rather than powers of ten.
        ticks = sorted({float(v) for v in trials.get(fig_spec.x, pd.Series()).dropna()
                        if isinstance(v, int | float) and v > 0})
        if ticks:
            ax.set_xticks(ticks, [fmt_value(t) for t in ticks])
            ax.minorticks_off()
    ax.set_xlabel(fig_spec.xlabel or fig_spec.x)
    ylabel = fig_spec.ylabel or metric.header + (" (%)" if metric.scale == 100 else "")
    ax.set_ylabel(ylabel)
    ax.set_title(spec.title, fontsize=10)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[1]:
        ax.legend(fontsize=7, title=fig_spec.series if fig_spec.series else None)
    fig.tight_layout()

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in FORMATS:
        path = out / f"{spec.name}.{fmt}"
        # No timestamps in the files: the same sweep gives byte-identical figures.
        metadata = {"Date": None} if fmt == "svg" else {"Software": None}
        atomic_write(path, partial(fig.savefig, format=fmt, dpi=150, metadata=metadata))
        written.append(path)
    plt.close(fig)
    return written


def _archs(trials: pd.DataFrame, x: str) -> dict[Any, str]:
    """Each category's backbone (`[small_resnet]` under its tick), so a reader can match a method
    to its random-init line; {} when the sweep trains one backbone only."""
    if "backbone.arch" not in trials.columns:
        return {}
    out = {}
    for _key, group in trials.groupby(trials[x].map(lambda v: repr(norm_value(v)))):
        archs = sorted({str(a) for a in group["backbone.arch"].dropna()})
        first = group.iloc[0]  # a grid-pooled or tile-probed trunk, as its init row names it
        extra = [pool_label(first.get("backbone.pool_grid")),
                 tile_label(first.get("method.probe"), first.get("method.probe_grid")),
                 layer_label(first.get("eval.layer"), first.get("eval.pool_grid"))]
        archs = [", ".join([a, *(e for e in extra if e)]) for a in archs]
        key = norm_value(group[x].iloc[0])
        out[key] = ", ".join(archs)
    return out if len(set(out.values())) > 1 else {}
