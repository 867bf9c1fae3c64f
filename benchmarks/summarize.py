"""benchmarks/results/*.jsonl -> benchmarks/results/SUMMARY.md: every figure, ratio and target.

Reads the JSON lines of train_throughput.py, peer_compare.py and eval_throughput.py (any file
name; lines are told apart by their "bench" field), and writes one Markdown page: the machine,
the issue's targets with reached / not reached, a table per benchmark, and the commands that
produced the figures. Imports neither torch nor ray.

  python -m benchmarks.summarize [--results benchmarks/results] [--out .../SUMMARY.md]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.train_throughput import ratios as train_ratios  # noqa: E402

HERE = Path(__file__).resolve().parent
TARGET_BACKBONE = "resnet18-small-stem"
BUSY_LIMIT = 0.25  # busy cores before a run above which a figure is flagged


def read_records(paths: Iterable[Path]) -> list[dict[str, Any]]:
    out = []
    for path in sorted(paths):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                print(f"summarize: {path}:{n}: not JSON, skipped", file=sys.stderr)
                continue
            rec["_file"] = path.name
            out.append(rec)
    return out


def fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}f}" if abs(v) < 1e5 else f"{v:.3g}"
    if isinstance(v, list | tuple):
        return ", ".join(fmt(x, 2) for x in v)
    if isinstance(v, dict):
        return ", ".join(f"{k} {fmt(x, 2)}" for k, x in v.items())
    return str(v)


def table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    if not rows:
        return ["(no figures)", ""]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return lines + [""]


def busy_flag(busy: Any) -> str:
    values = list(busy.values()) if isinstance(busy, dict) else [busy]
    values = [v for v in values if isinstance(v, int | float)]
    return " (busy!)" if any(v >= BUSY_LIMIT for v in values) else ""


def verdict(value: float | None, threshold: float) -> str:
    if value is None:
        return "not measured"
    return "**reached**" if value >= threshold else "**not reached**"


def is_target_train(r: dict[str, Any], precision: str = "fp32") -> bool:
    """The issue's workload, judged in fp32 (the peer's and the compute limit's numerics)."""
    return (r.get("backbone") == TARGET_BACKBONE and r.get("batch") == 128
            and r.get("size") == 32 and r.get("precision", "fp32") == precision)


def targets(train: list[dict[str, Any]], peer: list[dict[str, Any]],
            evals: list[dict[str, Any]]) -> list[list[Any]]:
    rows: list[list[Any]] = []
    full = [r for r in train if is_target_train(r)]
    rat = train_ratios(full)
    methods = sorted({r["method"] for r in full}) or ["(all methods)"]
    for m in methods:
        v = rat.get(m, {}).get("ray1/plain")
        rows.append([f"Ray Train 1 worker >= 0.95x plain loop: {m}", "ray1/plain", v,
                     verdict(v, 0.95)])
    for m in ("moco_sym", "byol"):
        for precision in ("fp32", "bf16"):
            ratios = [r["ratio"] for r in peer if r.get("method") == m
                      and r.get("backbone") == TARGET_BACKBONE and r.get("batch") == 128
                      and r.get("precision", "fp32") == precision]
            if precision == "bf16" and not ratios:
                continue  # bf16 is an extra reading, shown when measured
            v = statistics.median(ratios) if ratios else None
            what = "ours (ray1)" if precision == "fp32" else "ours (ray1, bf16 autocast)"
            rows.append([f"{what} >= 1.15x lightly (fp32): {m}", "ours/peer, median of pairs",
                         v, verdict(v, 1.15)])
    for m in methods:
        v = rat.get(m, {}).get("plain/compute")
        v1 = rat.get(m, {}).get("ray1/compute")
        rows.append([f"method >= 0.95 of its compute limit: {m}",
                     f"plain/compute (ray1/compute {fmt(v1)})", v, verdict(v, 0.95)])
    for part, label in (("knn", "kNN (faiss) >= 10x scikit-learn at 60k x 512"),
                        ("kmeans", "k-means (faiss) >= 10x scikit-learn at 60k x 512")):
        recs = [r for r in evals if r.get("part") == part and r.get("dim") == 512
                and (r.get("train") or r.get("rows")) == 60000]
        v = statistics.median(r["speedup"] for r in recs) if recs else None
        ceiling = [r["max_speedup"] for r in recs if r.get("max_speedup")]
        figure = "sklearn_s / ours_s"
        if ceiling:  # what an exact fp32 search could reach at this CPU's measured GEMM rate
            figure += f" (fp32 GEMM ceiling here: {fmt(statistics.median(ceiling))})"
        rows.append([label, figure, v, verdict(v, 10.0)])
    return rows


def machine(records: list[dict[str, Any]]) -> list[str]:
    keys = ("cpu", "cpu_isa", "cores", "python", "torch", "ray", "faiss", "sklearn", "git_rev")
    seen: dict[str, set[str]] = {k: set() for k in keys}
    for r in records:
        for k in keys:
            if r.get(k) is not None:
                seen[k].add(str(r[k]))
    for r in records:
        if r.get("lightly"):
            seen.setdefault("lightly (peer)", set()).add(str(r["lightly"]))
    lines = [f"- {k}: {', '.join(sorted(v))}" for k, v in seen.items() if v]
    stamps = sorted(r["timestamp"] for r in records if r.get("timestamp"))
    if stamps:
        lines.append(f"- measured: {stamps[0]} to {stamps[-1]}")
    return lines + [""]


def render(records: list[dict[str, Any]]) -> str:
    train = [r for r in records if r.get("bench") == "train_throughput" and "mode" in r]
    peer = [r for r in records if r.get("bench") == "peer_compare" and "ratio" in r]
    skipped = [r for r in records if r.get("skipped")]
    evals = [r for r in records if r.get("bench") == "eval_throughput"]
    out = ["# Benchmark summary", "",
           "Generated by `python -m benchmarks.summarize` from "
           f"{', '.join(sorted({r['_file'] for r in records})) or 'no files'}. "
           "Figures are images/s of source images (not views) unless said otherwise; the "
           "scripts' docstrings define every figure. A run marked (busy!) started while other "
           f"processes used >= {BUSY_LIMIT} cores: do not trust it.", "",
           "## Machine", ""]
    out += machine(records)
    out += ["## Targets (issue 7)", ""]
    out += table(["target", "figure", "value", "verdict"], targets(train, peer, evals))
    if train and not any(is_target_train(r) for r in train):
        out += ["Only smoke-size training figures (not ResNet-18 / batch 128 / 32 px): the "
                "targets above are not judged from them.", ""]

    out += ["## Training throughput (benchmarks/train_throughput.py)", ""]
    rows = [[r["method"], r["mode"], r.get("repeat"), f"{fmt(r['images_per_s'])}"
             f"{busy_flag(r.get('busy_cores_before'))}", r.get("images_per_s_mid"),
             r.get("worker_images_per_s"), r.get("epoch_intervals_s"),
             r.get("eval_s_excluded"), r.get("threads"), r.get("ray_workers"),
             r.get("backbone"), f"{r.get('batch')} / {r.get('size')} px / "
             f"{r.get('steps')} x {r.get('epochs')}", r.get("precision"),
             r.get("busy_cores_before")] for r in train]
    out += table(["method", "mode", "rep", "images/s", "img/s ep 2..E-1", "in-loop img/s",
                  "epoch intervals s", "eval s excluded", "threads", "workers", "backbone",
                  "batch / size / steps x epochs", "precision", "busy cores before"], rows)
    rows = []
    for precision in sorted({r.get("precision", "fp32") for r in train}, key=lambda p: p != "fp32"):
        same = [r for r in train if r.get("precision", "fp32") == precision]
        suffix = "" if precision == "fp32" else f" ({precision})"
        rows += [[m + suffix, d.get("ray1/plain"), d.get("ray2/plain"), d.get("plain/compute"),
                  d.get("ray1/compute")] for m, d in train_ratios(same).items()]
    out += ["Ratios (median over repeats, each from back-to-back runs):", ""]
    out += table(["method", "ray1/plain", "ray2/plain", "plain/compute", "ray1/compute"], rows)

    out += ["## Ours vs lightly (benchmarks/peer_compare.py)", ""]
    for r in skipped:
        out += [f"Skipped: {r['skipped']}", ""]
    rows = [[r["method"], r["pair"], r.get("first"),
             f"{fmt(r['ours_images_per_s'])}{busy_flag(r.get('busy_cores_before'))}",
             r["peer_images_per_s"], r["ratio"], r.get("peer_images_per_s_clean"),
             r.get("peer_other_cores"), r.get("backbone"), r.get("note")] for r in peer]
    out += table(["method", "pair", "first", "ours img/s", "lightly img/s", "ours/lightly",
                  "lightly clean-steps img/s", "lightly other cores", "our backbone", "note"],
                 rows)

    out += ["## Evaluation (benchmarks/eval_throughput.py)", ""]
    for r in evals:
        if r.get("part") == "gemm":
            out += [f"This CPU's dense product rate, measured in the same run (torch.mm, "
                    f"{r['rows']} x {r['dim']} by {r['dim']} x {r['n']}): "
                    f"{fmt(r['fp32_gflops_per_s'])} GFLOP/s fp32, "
                    f"{fmt(r['bf16_gflops_per_s'])} GFLOP/s bf16. `floor s` below is the time "
                    "the similarity products alone take at the fp32 rate; `ceiling` = sklearn s "
                    "/ floor s, the most an exact fp32 method could beat scikit-learn by here.",
                    ""]
    out += ["kNN (faiss vs scikit-learn brute force, same weighted-vote classifier):", ""]
    rows = [[f"{r['train']} x {r['dim']}", r["queries"], r["k"],
             f"{fmt(r['ours_s'])}{busy_flag(r.get('busy_cores_before'))}", r["sklearn_s"],
             r["speedup"], r.get("floor_s"), r.get("max_speedup"), r["top1_agreement"],
             r["neighbour_overlap"], r["ours_top1"], r["sklearn_top1"]]
            for r in evals if r.get("part") == "knn"]
    out += table(["train", "queries", "k", "ours s", "sklearn s", "speed-up", "floor s",
                  "ceiling", "top-1 agreement", "neighbour overlap", "ours top-1",
                  "sklearn top-1"], rows)
    out += ["k-means (faiss vs scikit-learn Lloyd, same normalised rows and iterations):", ""]
    rows = [[f"{r['rows']} x {r['dim']}", r["k"], r["iters"], r.get("sklearn_iters"),
             f"{fmt(r['ours_s'])}{busy_flag(r.get('busy_cores_before'))}",
             r["ours_all_rows_s"], r["sklearn_s"], r["speedup"], r["speedup_all_rows"],
             r.get("max_speedup"), r.get("max_speedup_all_rows"), r["objective_ratio"],
             r["objective_ratio_all_rows"], r["nmi_ours_vs_sklearn"],
             r["nmi_ours_vs_truth"], r["nmi_sklearn_vs_truth"]]
            for r in evals if r.get("part") == "kmeans"]
    out += table(["rows", "k", "iters", "sklearn iters", "ours s (256 x k rows)",
                  "ours s (all rows)", "sklearn s", "speed-up", "speed-up (all rows)",
                  "ceiling", "ceiling (all rows)", "objective ours/sklearn", "(all rows)",
                  "NMI ours vs sklearn",
                  "NMI ours vs truth", "NMI sklearn vs truth"], rows)
    out += ["Linear probe (fast L-BFGS vs the paper protocol's SGD loop, same cached features):",
            ""]
    rows = [[f"{r['train']} x {r['dim']}", r["test"], r["paper_epochs"],
             f"{fmt(r['fast_s'])}{busy_flag(r.get('busy_cores_before'))}", r["paper_s"],
             r["speedup"], r["fast_top1"], r["paper_top1"], r["fast_top5"], r["paper_top5"]]
            for r in evals if r.get("part") == "linear"]
    out += table(["train", "test", "paper epochs", "fast s", "paper s", "paper/fast time",
                  "fast top-1", "paper top-1", "fast top-5", "paper top-5"], rows)

    known = {"train_throughput", "peer_compare", "eval_throughput"}
    others = [r for r in records if r.get("bench") not in known]
    if others:
        out += ["## Other benchmark lines", ""]
        hidden = {"_file", "git_rev", "cpu", "cpu_isa", "cores", "python", "torch", "ray", "faiss",
                  "sklearn", "timestamp", "command"}
        for r in others:
            name = r.get("bench") or r.get("benchmark") or r["_file"]
            fields = ", ".join(f"{k} {fmt(v)}" for k, v in r.items() if k not in hidden)
            out.append(f"- {name}: {fields}")
        out.append("")

    out += ["## Commands", ""]
    commands = []
    for r in records:
        c = r.get("command")
        if c and c not in commands:
            commands.append(c)
    out += ["```"] + commands + ["```", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", type=Path, default=HERE / "results",
                   help="folder of *.jsonl files")
    p.add_argument("--out", type=Path, default=None, help="default: <results>/SUMMARY.md")
    args = p.parse_args(argv)
    records = read_records(args.results.glob("*.jsonl"))
    out = args.out or args.results / "SUMMARY.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(records))
    print(f"summarize: {len(records)} lines -> {out}", file=sys.stderr)
    return out


if __name__ == "__main__":
    main()
