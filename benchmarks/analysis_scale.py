"""How long `python -m analysis` takes on sweeps of 10, 1,000 and 10,000 trials.

The sweeps are grown from a real finished sweep directory (--source, e.g. the one
`benchmarks/load_sweep.py --keep DIR` leaves in DIR/sweeps/load): its sweep.json is copied, and
each grown trial directory is a copy of one real trial's config.json and result.json (cycling
through the real trials) under a new trial id, its seed shifted by a multiple of the source's seed
count so the cells hold more seeds, as a longer sweep of the same grid would. Each size is then
rendered through the real command line, `python -m analysis DIR --spec SPEC` in a child process
(the import floor included, as a user pays it), and the caption's trial count is checked against
the size. Prints one JSON line per size (appended to --out):

    trials, wall_s (the command), load_s / table_s (load_sweep and build_table in this process),
    caption_trials (the count the caption states), ok

Example (about 1 minute on 2 cores, after the 1,000-trial load sweep):
    python -m benchmarks.analysis_scale --source /tmp/load1000/sweeps/load \\
        --sizes 10,1000,10000 --out benchmarks/results/analysis_scale.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks.provenance import JsonLines, command_line, provenance

REPO = Path(__file__).resolve().parents[1]
SPEC = {"title": "analysis scale", "rows": "method.temperature", "init_row": None,
        "metrics": [{"metric": "eval/knn_top1", "header": "kNN top-1"},
                    {"metric": "train/loss", "header": "loss"}]}


def grow(source: Path, size: int, dest: Path) -> None:
    """`dest`: a sweep of `size` trials made of copies of `source`'s real trials."""
    trials = sorted(d for d in source.iterdir() if (d / "config.json").is_file())
    if not trials:
        raise SystemExit(f"--source {source}: no trial directories (config.json) in it")
    dest.mkdir(parents=True)
    meta = json.loads((source / "sweep.json").read_text())
    seeds = len({json.loads((t / "config.json").read_text())["trial"]["seed"] for t in trials})
    meta.update(trials=size, seeds=list(range(seeds * -(-size // len(trials)))))
    (dest / "sweep.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    for i in range(size):
        real = trials[i % len(trials)]
        raw = json.loads((real / "config.json").read_text())
        copy = i // len(trials)
        seed = raw["trial"]["seed"] + copy * seeds
        raw["trial"].update(id=f"grown{i:05d}", seed=seed)
        raw["config"]["seed"] = seed
        trial = dest / f"grown{i:05d}_{raw['trial']['label']}_s{seed}"
        trial.mkdir()
        (trial / "config.json").write_text(json.dumps(raw, sort_keys=True))
        shutil.copyfile(real / "result.json", trial / "result.json")


def measure(sweep: Path, spec_file: Path, size: int) -> dict[str, Any]:
    from analysis import build_table, load_spec
    from analysis import load_sweep as load

    start = time.perf_counter()
    frame = load(sweep)
    load_s = time.perf_counter() - start
    build_table(frame, load_spec(str(spec_file)))
    table_s = time.perf_counter() - start - load_s
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "analysis", str(sweep), "--spec",
                           str(spec_file), "--out", str(sweep.parent / f"out{size}")],
                          env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"python -m analysis failed on {size} trials:\n{proc.stderr[-2000:]}")
    found = re.search(r"Trials: ([\d,]+) finished", proc.stdout)
    counted = int(found.group(1).replace(",", "")) if found else None
    return {"trials": size, "wall_s": round(wall, 2), "load_s": round(load_s, 2),
            "table_s": round(table_s, 2), "caption_trials": counted,
            "ok": counted == size and wall < 10}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="example: python -m benchmarks.analysis_scale --source "
                                       "/tmp/load1000/sweeps/load",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", type=Path, required=True, help="a finished sweep directory")
    p.add_argument("--sizes", default="10,1000,10000", help="trial counts, comma-separated")
    p.add_argument("--out", type=Path, default=None, help="append the JSON lines here")
    args = p.parse_args(argv)
    if not (args.source / "sweep.json").is_file():
        raise SystemExit(f"--source {args.source}: not a sweep directory (no sweep.json)")

    base = {"benchmark": "analysis_scale", "source": str(args.source),
            "command": command_line("benchmarks.analysis_scale", argv), **provenance()}
    ok = True
    with JsonLines(args.out, append=True) as out, tempfile.TemporaryDirectory() as tmp:
        spec_file = Path(tmp) / "scale.yaml"
        spec_file.write_text(yaml.safe_dump(SPEC))
        for size in (int(s) for s in args.sizes.split(",")):
            sweep = Path(tmp) / f"sweep{size}"
            grow(args.source, size, sweep)
            record = measure(sweep, spec_file, size)
            ok &= record["ok"]
            out.emit({**base, **record})
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
