"""Quality per CPU-minute: kNN and linear top-1 against wall minutes, per method.

Each method is a shipped config (MoCo v2, BYOL, Jigsaw++ -> CC) trained by `sslray run`, the
user's own command, timed from outside (Python start, Ray start, training, evaluation: the whole
wall a user waits). For each method a calibration run (2 epochs; cc: 2 source + 2 target epochs)
measures the seconds per epoch and the fixed cost; each budget B then gets the most epochs that
fit, `floor((60 B - fixed) / epoch_s)` (cc: the same epoch count for source and target), as a
full schedule (the cosine lr over those epochs), not a cut-short longer run. The reference lines
come from `sslray eval --init` on the calibration run with `eval.pixels`: the same probes on raw
pixels and on each backbone at random init.

One JSON line per run (--out): kind calibration | budget | reference, method, config, budget_min,
epochs, wall_s, the eval metrics (kNN on the pre-training memory and on the whole training
split, the fast linear probe); a Markdown table on stderr; the figure (--figure) with the pixel
line and each backbone's random-init line.

Example (about 25 minutes on 2 cores):
    python -m benchmarks.quality_curve --budgets 1,2,4 \\
        --out benchmarks/results/quality_curve.jsonl --figure benchmarks/results/quality_curve.png
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.provenance import JsonLines, command_line, log, provenance, wait_quiet

# method -> (config, label, backbone of the evaluated encoder)
METHODS = {
    "moco_v2": ("fmnist_moco_v2", "MoCo v2", "small_resnet"),
    "byol": ("fmnist_byol", "BYOL", "small_resnet"),
    "cc": ("fmnist_cc", "Jigsaw++ -> CC", "alexnet_small"),
}
# Every run: evaluate at the end only, both kNN memories; no random-init pass (the reference
# run measures it once).
EVAL = ["eval.every_n_epochs=0", "eval.knn_memory=train_split", "eval.at_init=false",
        "eval.linear_fast=true"]
METRICS = {"knn": "eval/knn_top1", "knn_60k": "eval/knn_train_split_top1",
           "linear": "eval/linear_fast_top1"}


def sslray(*args: str) -> list[str]:
    return [sys.executable, "-m", "sslray.cli.main", *args]


def epochs_override(method: str, epochs: int) -> list[str]:
    sets = [f"train.epochs={epochs}"]
    if method == "cc":  # the source (Jigsaw++) gets the same schedule as the target
        sets.append(f"method.source_set={{'train.epochs': {epochs}}}")
    return sets


def timed(cmd: list[str]) -> float:
    """Runs `cmd`; its wall seconds. Its output goes to stderr (progress), a failure raises."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"quality_curve: failed ({proc.returncode}): {' '.join(cmd)}")
    return time.perf_counter() - start


def final_metrics(run_dir: Path, name: str = "result.json") -> dict[str, float]:
    lines = (run_dir / name).read_text().splitlines()
    return {k: v for k, v in json.loads(lines[-1]).items() if isinstance(v, int | float)}


def epoch_seconds(run_dir: Path) -> float:
    """The run's last epoch's seconds (the first pays warm-up)."""
    return float(final_metrics(run_dir)["train/epoch_s"])


def train(method: str, epochs: int, run_dir: Path, extra: list[str]) -> tuple[float, dict]:
    config = METHODS[method][0]
    sets = [*EVAL, *epochs_override(method, epochs), *extra]
    wall = timed(sslray("run", config, "--output", str(run_dir), "--overwrite",
                        *[a for s in sets for a in ("--set", s)]))
    return wall, final_metrics(run_dir)


def calibrate(method: str, run_dir: Path, extra: list[str]) -> dict[str, Any]:
    """2 epochs: seconds per epoch (cc: source + target) and the fixed cost of a run."""
    wall, metrics = train(method, 2, run_dir, extra)
    per_epoch = epoch_seconds(run_dir)
    if method == "cc":
        per_epoch += epoch_seconds(run_dir / "source")
    return {"wall_s": round(wall, 1), "epoch_s": round(per_epoch, 2),
            "fixed_s": round(max(0.0, wall - 2 * per_epoch), 1), "epochs": 2,
            **pick(metrics)}


def pick(metrics: dict[str, float], suffix: str = "") -> dict[str, float]:
    out = {k: round(metrics[m + suffix], 4) for k, m in METRICS.items() if m + suffix in metrics}
    if "source/eval/knn_top1" in metrics:  # cc: the Jigsaw++ source it learned from
        out["source_knn"] = round(metrics["source/eval/knn_top1"], 4)
    return out


def reference(run_dir: Path, extra: list[str]) -> dict[str, dict[str, float]]:
    """Raw pixels and the evaluated backbone at random init, by `sslray eval` of a run (with
    the eval.* keys of `extra`)."""
    before = len((run_dir / "eval.json").read_text().splitlines()) if (
        run_dir / "eval.json").exists() else 0
    sets = ["eval.pixels=true", "eval.knn_memory=train_split",
            *[x for x in extra if x.startswith("eval.")]]
    timed(sslray("eval", str(run_dir), "--init", *[a for x in sets for a in ("--set", x)]))
    lines = (run_dir / "eval.json").read_text().splitlines()[before:]
    metrics = {k: v for line in lines for k, v in json.loads(line).items()
               if isinstance(v, int | float)}
    return {"pixels": pick(metrics, "_pixels"), "init": pick(metrics, "_init")}


def budget_epochs(budget_min: float, cal: dict[str, Any]) -> int:
    return math.floor((60 * budget_min - cal["fixed_s"]) / cal["epoch_s"])


def markdown(rows: list[dict[str, Any]], refs: dict[str, dict[str, Any]]) -> str:
    head = ("| method | budget (min) | epochs | wall (min) | kNN (10k) | kNN (60k) | linear |\n"
            "|---|---:|---:|---:|---:|---:|---:|")
    cell = lambda r, k: f"{100 * r[k]:.1f}" if k in r else "-"  # noqa: E731
    lines = [head]
    for r in rows:
        lines.append(f"| {r['label']} | {r['budget_min']:g} | {r['epochs']} | "
                     f"{r['wall_s'] / 60:.2f} | {cell(r, 'knn')} | {cell(r, 'knn_60k')} | "
                     f"{cell(r, 'linear')} |")
    for name, ref in refs.items():
        lines.append(f"| {name} | - | - | - | {cell(ref, 'knn')} | {cell(ref, 'knn_60k')} | "
                     f"{cell(ref, 'linear')} |")
    return "\n".join(lines)


def draw(rows: list[dict[str, Any]], refs: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("knn", "kNN top-1 (10k memory)"), ("knn_60k", "kNN top-1 (60k memory)"),
              ("linear", "linear top-1 (fast probe)")]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4), sharex=True)
    colours = {"moco_v2": "tab:blue", "byol": "tab:orange", "cc": "tab:green"}
    init_style = {"small_resnet": ":", "alexnet_small": "-."}
    for ax, (key, title) in zip(axes, panels, strict=True):
        for method, (_, label, backbone) in METHODS.items():
            pts = sorted((r["wall_s"] / 60, r[key]) for r in rows
                         if r["method"] == method and key in r)
            if pts:
                ax.plot(*zip(*pts, strict=True), "o-", color=colours[method],
                        label=f"{label} ({backbone})")
        for name, ref in refs.items():
            if key not in ref:
                continue
            if name == "raw pixels":
                ax.axhline(ref[key], color="black", ls="--", lw=1, label="raw pixels")
            else:  # "random init (<backbone>)"
                backbone = name[name.index("(") + 1:-1]
                ax.axhline(ref[key], color="grey", ls=init_style.get(backbone, ":"), lw=1,
                           label=name)
        ax.set_title(title)
        ax.set_xlabel("wall minutes (2-core CPU, whole run)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def newest(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]],
                                                   dict[str, dict[str, Any]]]:
    """Budget rows and reference lines from recorded JSON lines: the newest run of each
    (method, budget) and each method's newest reference (`--plot`: a curve measured in parts)."""
    runs: dict[tuple[str, float], dict[str, Any]] = {}
    refs_of: dict[str, dict[str, Any]] = {}
    for r in sorted(records, key=lambda r: str(r.get("timestamp", ""))):
        if r.get("kind") == "budget":
            runs[(r["method"], float(r["budget_min"]))] = r
        elif r.get("kind") == "reference" and "init" in r:
            refs_of[r["method"]] = r
    order = list(METHODS)
    rows = sorted(runs.values(), key=lambda r: (order.index(r["method"]) if r["method"] in order
                                                else len(order), r["budget_min"]))
    refs: dict[str, dict[str, Any]] = {}
    latest = max(refs_of.values(), key=lambda r: str(r.get("timestamp", "")), default=None)
    if latest is not None:
        refs["raw pixels"] = latest["pixels"]
    for r in refs_of.values():
        refs[f"random init ({r['backbone']})"] = r["init"]
    return rows, refs


def plot(path: Path, figure: str | None) -> list[dict[str, Any]]:
    """`--plot FILE`: the table (stderr) and figure of every curve point recorded in FILE."""
    if not path.is_file():
        raise SystemExit(f"--plot: {path} is not a file of quality_curve JSON lines")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows, refs = newest([r for r in records if r.get("benchmark") == "quality_curve"])
    if not rows:
        raise SystemExit(f"--plot: {path} holds no quality_curve budget runs")
    log(markdown(rows, refs))
    if figure:
        draw(rows, refs, Path(figure))
        log(f"figure: {figure}")
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="examples:\n  python -m benchmarks.quality_curve --budgets 1,2,4 --methods moco_v2\n"
        "  python -m benchmarks.quality_curve --plot benchmarks/results/quality_curve.jsonl "
        "--figure curve.png",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"comma-separated, of {', '.join(METHODS)}")
    p.add_argument("--budgets", default="1,2,4", help="wall minutes per run, e.g. 1,2,4,8,15")
    p.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for every run (e.g. seed=1)")
    p.add_argument("--workdir", default=None, help="where the runs go (default: a temp dir)")
    p.add_argument("--out", default=None, help="append JSON lines here")
    p.add_argument("--figure", default=None, help="write the figure here (png/svg)")
    p.add_argument("--wait-quiet", type=float, default=60.0,
                   help="seconds to wait for a quiet machine before each run")
    p.add_argument("--plot", default=None, metavar="JSONL",
                   help="train nothing: table and --figure from the runs recorded in JSONL "
                   "(the newest per method and budget)")
    args = p.parse_args(argv)
    if args.plot:
        return plot(Path(args.plot), args.figure)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        p.error(f"--methods: unknown {unknown}; choose from {', '.join(METHODS)}")
    budgets = [float(b) for b in args.budgets.split(",")]
    base = {"benchmark": "quality_curve",
            "command": command_line("benchmarks.quality_curve", argv), **provenance("ray")}
    work = Path(args.workdir or tempfile.mkdtemp(prefix="sslray-quality-"))
    rows: list[dict[str, Any]] = []
    refs: dict[str, dict[str, Any]] = {}
    records: list[dict[str, Any]] = []
    with JsonLines(args.out, append=True) as out:
        for method in methods:
            config, label, backbone = METHODS[method]
            common = {**base, "method": method, "label": label, "config": config,
                      "backbone": backbone, "overrides": args.extra}
            busy = wait_quiet(args.wait_quiet)
            cal = calibrate(method, work / f"{method}-calibration", args.extra)
            records.append(out.emit({**common, "kind": "calibration", "busy_cores": busy, **cal}))
            ref = reference(work / f"{method}-calibration", args.extra)
            refs.setdefault("raw pixels", ref["pixels"])
            refs[f"random init ({backbone})"] = ref["init"]
            records.append(out.emit({**common, "kind": "reference", **ref}))
            for budget in budgets:
                epochs = budget_epochs(budget, cal)
                if epochs < 1:
                    log(f"{method}: {budget:g} min is below one epoch + the fixed "
                        f"{cal['fixed_s']:.0f} s; skipped")
                    continue
                busy = wait_quiet(args.wait_quiet)
                wall, metrics = train(method, epochs, work / f"{method}-{budget:g}min", args.extra)
                row = {**common, "kind": "budget", "budget_min": budget, "epochs": epochs,
                       "wall_s": round(wall, 1), "busy_cores": busy, **pick(metrics)}
                rows.append(out.emit(row))
                records.append(row)
    log(markdown(rows, refs))
    if args.figure:
        draw(rows, refs, Path(args.figure))
        log(f"figure: {args.figure}")
    return records


if __name__ == "__main__":
    main()
