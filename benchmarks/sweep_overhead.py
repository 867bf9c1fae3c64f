"""Per-trial orchestration cost of a sweep: raw Ray Tune vs sslray's 1-worker and 2-worker trials.

One local Ray (--cpus CPUs), three sweeps of tiny trials that do almost no training (synthetic
data, a width-4 backbone, 1 epoch of 1 step, no evaluation), so the wall time is what running a
trial costs, not what it computes:

    raw       a plain Tune function trainable (1 CPU) that imports torch, runs one training step
              of a small conv net and reports once: Ray Tune's own floor, with Tune's defaults
              (a new actor process per trial); the reference of the ratios
    raw_reuse the same with TuneConfig(reuse_actors=True): what a Tune expert gets
    sslray1   `sslray sweep`'s trials with resources.workers 1: fit() inside the trial actor
              (sslray.sweep.trial; actors reused across trials), trial directory, config.json,
              final.pt, result.json, a Tune checkpoint per epoch
    sslray2   resources.workers 2: each trial a Ray Train run of 2 gloo workers

raw and sslray1 run at the same concurrency (--concurrent); sslray2 runs as many 2-worker trials
at once as the CPUs allow. Prints one JSON line per mode and a summary line with the ratios
(sslray1 / raw is the figure the <= 1.5x target is about), appended to --out.

Example (about 4 minutes on 2 cores):
    python -m benchmarks.sweep_overhead --trials 40 --trials2 6 \
        --out benchmarks/results/sweep_overhead.jsonl
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks.provenance import JsonLines, command_line, provenance


def tiny_base() -> dict[str, Any]:
    return {
        "name": "overhead", "seed": 0,
        "data": {"dataset": "synthetic", "synthetic_size": 32, "image_size": 8},
        "backbone": {"arch": "small_resnet", "width": 4, "blocks": [1]},
        "method": {"name": "moco", "queue_size": 32, "dim": 8},
        "optim": {"lr": 0.05},
        "train": {"epochs": 1, "batch_size": 16},
        "eval": {"knn_k": 5, "at_init": False, "linear_fast": False},
    }


def raw_trial(config: dict[str, Any]) -> None:
    """What a minimal Tune user writes: a function that trains a little and reports."""
    import ray.tune
    import torch

    torch.manual_seed(config["i"])
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.LazyLinear(2))
    x = torch.randn(16, 3, 8, 8)
    loss = net(x).square().mean()
    loss.backward()
    ray.tune.report({"train/loss": float(loss)})


def run_raw(trials: int, concurrent: int, storage: Path, reuse: bool = False) -> float:
    import ray.tune

    start = time.perf_counter()
    tuner = ray.tune.Tuner(
        ray.tune.with_resources(raw_trial, {"cpu": 1}),
        param_space={"i": ray.tune.grid_search(list(range(trials)))},
        tune_config=ray.tune.TuneConfig(max_concurrent_trials=concurrent, reuse_actors=reuse),
        run_config=ray.tune.RunConfig(name="raw", storage_path=str(storage), verbose=0),
    )
    results = tuner.fit()
    wall = time.perf_counter() - start
    if results.num_errors:
        raise SystemExit(f"raw Tune: {results.num_errors} of {trials} trials failed")
    return wall


def run_sslray(trials: int, workers: int, concurrent: int, storage: Path) -> float:
    from sslray.sweep.runner import run_sweep
    from sslray.sweep.spec import expand, load_sweep

    raw = {
        "name": f"sslray{workers}", "base": tiny_base(),
        "grid": {"method.temperature": [round(0.05 + 0.001 * i, 4) for i in range(trials)]},
        "seeds": [0], "storage": str(storage), "aim": False,
        "resources": {"workers": workers, "cpus_per_worker": 1.0 if workers == 1 else 0.5,
                      "max_concurrent_trials": concurrent},
    }
    path = storage / f"sslray{workers}.yaml"
    path.write_text(yaml.safe_dump(raw))
    spec = load_sweep(path)
    start = time.perf_counter()
    results = run_sweep(spec, expand(spec), quiet=True)
    wall = time.perf_counter() - start
    if results.num_errors:
        raise SystemExit(f"sslray{workers}: {results.num_errors} of {trials} trials failed")
    return wall


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="example: python -m benchmarks.sweep_overhead --trials 40",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=40, help="trials of raw and sslray1")
    p.add_argument("--trials2", type=int, default=6, help="trials of sslray2 (2 workers each)")
    p.add_argument("--concurrent", type=int, default=2, help="trials at once (raw, sslray1)")
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray")
    p.add_argument("--modes", default="raw,raw_reuse,sslray1,sslray2")
    p.add_argument("--out", type=Path, default=None, help="append the JSON lines here")
    args = p.parse_args(argv)

    import ray

    from sslray.cli.ray_setup import QUIET_RAY_ENV, RAY_ENV

    for key, value in {**RAY_ENV, **QUIET_RAY_ENV}.items():
        os.environ.setdefault(key, value)
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR)
    base = {"benchmark": "sweep_overhead", "cpus": args.cpus,
            "command": command_line("benchmarks.sweep_overhead", argv), **provenance("ray")}
    per: dict[str, float] = {}
    with JsonLines(args.out, append=True) as out, tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes.split(","):
            storage = Path(tmp) / mode
            storage.mkdir()
            if mode in ("raw", "raw_reuse"):
                n, conc = args.trials, args.concurrent
                wall = run_raw(n, conc, storage, reuse=mode == "raw_reuse")
            elif mode == "sslray1":
                n, conc = args.trials, args.concurrent
                wall = run_sslray(n, 1, conc, storage)
            elif mode == "sslray2":
                n, conc = args.trials2, max(1, args.cpus // 2)
                wall = run_sslray(n, 2, conc, storage)
            else:
                raise SystemExit(f"--modes: unknown mode {mode!r} "
                                 f"(raw, raw_reuse, sslray1, sslray2)")
            per[mode] = wall / n
            out.emit({**base, "mode": mode, "trials": n, "concurrent": conc,
                      "wall_s": round(wall, 2), "s_per_trial": round(wall / n, 3)})
        if "raw" in per:
            out.emit({**base, "mode": "summary", "s_per_trial": {k: round(v, 3)
                                                                 for k, v in per.items()},
                      "ratio_vs_raw": {k: round(v / per["raw"], 2) for k, v in per.items()
                                       if k != "raw"}})
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
