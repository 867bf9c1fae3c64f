"""Load test: a sweep of many tiny trials through the real CLI, with its peak memory.

It writes a sweep of tiny MoCo trials on the synthetic dataset (--trials/2 temperatures x 2
seeds, 2 epochs each, 1 worker of 0.5 CPU per trial: each trial trains in its Tune trial actor,
--concurrent trials at once), runs `sslray sweep FILE --no-table` as a child process while
sampling memory every 0.25 s and keeping its stdout (the live status table), then checks that
every trial finished with its results and that the table built from the sweep has a cell for
each trial. Prints one JSON line (appended to --out):

    trials, finished, result_lines, table_rows, table_trials_counted, wall_s, s_per_trial,
    peak_driver_rss_gib  the sweep process alone (the Tune driver: trial states, results)
    peak_tree_rss_gib    the sum of RSS over the sweep process and all its descendants (the Ray
                         head processes, the trial actors); over-counts shared pages
    peak_system_used_gib system-wide MemTotal - MemAvailable at its peak, minus before the start
    mem_total_gib        the machine's memory
    status_reports, status_max_lines, stdout_lines   the live status table: how many times it
                         was printed and the longest print (in lines), and all of stdout

Examples (50 trials: about 2 minutes on 2 cores; 1,000: about 25):
    python benchmarks/load_sweep.py --trials 50 --out benchmarks/results/load_sweep.jsonl
    python benchmarks/load_sweep.py --trials 1000 --keep /tmp/load1000 \
        --out benchmarks/results/load_sweep.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.provenance import provenance  # noqa: E402

GIB = 1024**3


def tiny_base() -> dict[str, Any]:
    return {
        "name": "load", "seed": 0,
        "data": {"dataset": "synthetic", "synthetic_size": 128, "image_size": 16},
        "backbone": {"arch": "small_resnet", "width": 8, "blocks": [1, 1]},
        "method": {"name": "moco", "queue_size": 64, "dim": 16},
        "optim": {"lr": 0.05},
        "train": {"epochs": 2, "batch_size": 32},
        "eval": {"knn_k": 10, "at_init": False},
    }


def sweep_file(folder: Path, trials: int, concurrent: int) -> Path:
    if trials % 2:
        raise SystemExit("--trials must be even (half the grid points x 2 seeds)")
    points = trials // 2
    temps = [round(0.05 + 0.01 * i, 4) for i in range(points)]
    raw = {
        "name": "load", "base": tiny_base(), "grid": {"method.temperature": temps},
        "seeds": [0, 1], "storage": str(folder / "sweeps"), "aim": False,
        "resources": {"workers": 1, "cpus_per_worker": 0.5, "max_concurrent_trials": concurrent},
    }
    path = folder / "load.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


class MemorySampler(threading.Thread):
    def __init__(self, root_pid: int, period: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.root, self.period = psutil.Process(root_pid), period
        self.base_used = self._system_used()
        self.peak_tree = 0
        self.peak_driver = 0
        self.peak_used = 0
        self.stop = threading.Event()

    @staticmethod
    def _system_used() -> int:
        vm = psutil.virtual_memory()
        return vm.total - vm.available

    def _tree_rss(self) -> int:
        total = 0
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return total

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak_tree = max(self.peak_tree, self._tree_rss())
            try:
                self.peak_driver = max(self.peak_driver, self.root.memory_info().rss)
            except psutil.NoSuchProcess:
                pass
            self.peak_used = max(self.peak_used, self._system_used() - self.base_used)
            time.sleep(self.period)


def status_figures(stdout: str) -> dict[str, int]:
    """How often the status table was printed and its longest print, from the sweep's stdout."""
    lines = stdout.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("== Status ==")]
    ends = starts[1:] + [len(lines)]
    return {"status_reports": len(starts), "stdout_lines": len(lines),
            "status_max_lines": max((e - s for s, e in zip(starts, ends)), default=0)}


def check_sweep(sweep_dir: Path, trials: int) -> dict[str, Any]:
    from analysis import FINISHED, build_table, load_sweep, parse_spec

    frame = load_sweep(sweep_dir)
    finished = int((frame["status"] == FINISHED).sum())
    lines = sum(len((Path(d) / "result.json").read_text().splitlines())
                for d in frame["trial_dir"])
    spec = parse_spec({"title": "load", "rows": "method.temperature",
                       "metrics": [{"metric": "eval/knn_top1"}]}, name="load")
    table = build_table(frame, spec)
    body = [r for r in table.rows if not r.is_init]
    counted = sum(r.cells[0].n for r in body)
    return {"trials_found": len(frame), "finished": finished, "result_lines": lines,
            "table_rows": len(body), "table_trials_counted": counted,
            "ok": len(frame) == trials == finished == counted}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="example: python benchmarks/load_sweep.py --trials 50",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=50)
    p.add_argument("--concurrent", type=int, default=4, help="trials at once (0.5 CPU each)")
    p.add_argument("--out", type=Path, default=None, help="append the JSON line here")
    p.add_argument("--keep", type=Path, default=None, help="keep the sweep in this folder")
    args = p.parse_args(argv)

    folder = args.keep or Path(tempfile.mkdtemp(prefix="sslray-load-"))
    folder.mkdir(parents=True, exist_ok=True)
    path = sweep_file(folder, args.trials, args.concurrent)
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}
    start = time.perf_counter()
    log = folder / "stdout.log"
    with log.open("w") as stdout:
        proc = subprocess.Popen([sys.executable, "-m", "sslray.cli.main", "sweep", str(path),
                                 "--no-table"], env=env, stdout=stdout,
                                stderr=subprocess.PIPE, text=True)
        sampler = MemorySampler(proc.pid)
        sampler.start()
        _, err = proc.communicate()
    wall = time.perf_counter() - start
    sampler.stop.set()
    sampler.join()
    record: dict[str, Any] = {
        "benchmark": "load_sweep", "trials": args.trials, "max_concurrent": args.concurrent,
        "returncode": proc.returncode, "wall_s": round(wall, 1),
        "s_per_trial": round(wall / args.trials, 3),
        "peak_driver_rss_gib": round(sampler.peak_driver / GIB, 3),
        "peak_tree_rss_gib": round(sampler.peak_tree / GIB, 2),
        "peak_system_used_gib": round(sampler.peak_used / GIB, 2),
        "mem_total_gib": round(psutil.virtual_memory().total / GIB, 1),
        **status_figures(log.read_text()),
        **provenance(),
    }
    if proc.returncode == 0:
        record.update(check_sweep(folder / "sweeps" / "load", args.trials))
    else:
        record["stderr_tail"] = err[-2000:]
        record["ok"] = False
    line = json.dumps(record, sort_keys=True)
    print(line, flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as f:
            f.write(line + "\n")
    return 0 if record["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
