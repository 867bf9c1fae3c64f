"""Our training speed against lightly's (the peer baseline), back to back on the same machine.

The peer is ../shared/bench/peer_baseline.py (lightly's own CIFAR-10 recipe for MoCo v2 and BYOL;
its figures: benchmarks/results/MEASUREMENTS.md#peer-baseline), run in its own virtual environment
(`make peer-venv`: .peer-venv with torch 2.14.1, torchvision 0.29.1 and lightly). Ours is `ray1` of
benchmarks/train_throughput.py: `run_training` with one Ray Train worker of --threads CPUs,
images/s over epochs 2..E including the per-epoch report and checkpoint (see that script's
docstring). For each pair and method, the two runs follow each other (the peer first in even pairs,
ours first in odd ones, so a slow drift of the machine does not favour one side), and the pair's
ratio ours/peer is printed. When the peer's python or `import lightly` is missing, one JSON line
{"skipped": reason} is printed and the exit status is 0.

Same workload on both sides: ResNet-18 with the small-image stem (torchvision resnet18, 3x3
stride-1 conv1, no max-pool), 32x32 images, batch 128, 2 torch threads, fp32, SGD lr 0.06
momentum 0.9 wd 5e-4, no blur.
  moco_sym  symmetric MoCo (each view once query, once key): head 512-512-128, T 0.1, 4096
            negatives, momentum 0.99, shuffle BN (lightly: batch_shuffle; ours: bn shuffle).
  byol      projector 512-4096-256 and predictor 256-4096-256 with BN in the hidden layer,
            momentum 0.99 -> 1 cosine, online and target nets on both views.
Differences that remain (they do not change the FLOPs of a step):
  * augmentation: lightly runs its PIL transforms per image in 2 DataLoader worker processes
    (`--peer-workers`); ours runs the batched tensor pipeline on the training process.
    Colour jitter, grayscale, crop scale (MoCo 0.2-1, BYOL 0.08-1) and BYOL's solarize match.
  * losses: lightly averages the two symmetric terms, ours sums them (the same work).
  * memory format: ours trains channels-last (the project default), lightly contiguous NCHW.
  * data: lightly draws random-noise RGB images from a 4096-image pool; ours the project's
    `synthetic` set of steps x batch images (grayscale, replicated to 3 channels by the views).
  * per-epoch costs: ours reports and checkpoints every epoch (Ray Train) and the window includes
    that; lightly's timing (peer_baseline.py) has no epochs and times steps only.
  * MoCo's queue: ours a FIFO of keys (MoCo); lightly NTXentLoss's memory bank (the same size).
  * timing: the peer times `--peer-warmup` untimed + (E - 1) x N timed steps (perf_counter
    around the steps); ours E epochs of N steps, epochs 2..E timed by end-of-epoch stamps.

Example (smoke size):
  python -m benchmarks.peer_compare --pairs 1 --batch 16 --steps 1 --epochs 2 --width 4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.provenance import (  # noqa: E402
    ROOT,
    JsonLines,
    command_line,
    log,
    provenance,
    wait_quiet,
)

BENCH = "peer_compare"
METHODS = ("moco_sym", "byol")
PEER_METHOD = {"moco_sym": "moco", "byol": "byol"}
DEFAULT_PEER_SCRIPT = ROOT.parent / "shared" / "bench" / "peer_baseline.py"
DEFAULT_PEER_PYTHON = ROOT / ".peer-venv" / "bin" / "python"
PEER_ENV = "SSLRAY_PEER_PYTHON"


def peer_problem(python: Path, script: Path) -> str | None:
    """Why the peer cannot run here, or None when it can."""
    if not script.is_file():
        return f"peer script {script} not found (--peer-script)"
    if not (python.is_file() and os.access(python, os.X_OK)):
        return (f"peer python {python} not found (make peer-venv, or --peer-python / "
                f"${PEER_ENV})")
    try:
        probe = subprocess.run([str(python), "-c", "import lightly, torch, torchvision"],
                               capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"peer python {python} does not run: {exc}"
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        return f"peer python {python} cannot import lightly/torch/torchvision: {last}"
    return None


def run_peer(method: str, args: argparse.Namespace) -> dict[str, Any]:
    """One peer_baseline.py run; its JSON line (the last line of its stdout)."""
    cmd = [
        str(args.peer_python), str(args.peer_script), "--method", PEER_METHOD[method],
        "--steps", str((args.epochs - 1) * args.steps), "--warmup", str(args.peer_warmup),
        "--batch", str(args.batch), "--size", str(args.size), "--threads", str(args.threads),
        "--workers", str(args.peer_workers), "--moco-variant", "symmetric",
        "--moco-bank", "4096", "--byol-hidden", "4096",
    ]
    log(f"[{BENCH}] peer: {' '.join(cmd)}")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=args.peer_script.parent)
    if proc.returncode != 0:
        raise RuntimeError(f"peer_baseline.py failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    lines = [x for x in proc.stdout.splitlines() if x.strip().startswith("{")]
    if not lines:
        raise RuntimeError(f"peer_baseline.py printed no JSON line:\n{proc.stderr[-3000:]}")
    out = json.loads(lines[-1])
    out["run_wall_s"] = round(time.perf_counter() - t0, 1)
    out["command"] = " ".join(cmd)
    return out


def run_ours(method: str, args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks import train_throughput as tt

    ours_args = tt.parse_args([
        "--methods", method, "--modes", "ray1", "--steps", str(args.steps),
        "--epochs", str(args.epochs), "--batch", str(args.batch), "--size", str(args.size),
        "--width", str(args.width), "--precision", args.precision,
        "--threads", str(args.threads),
    ])
    return tt.measure(method, "ray1", ours_args)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated: moco_sym,byol")
    p.add_argument("--pairs", type=int, default=1, help="peer/ours pairs per method")
    p.add_argument("--steps", type=int, default=3, help="our steps per epoch")
    p.add_argument("--epochs", type=int, default=3, help="our epochs (>= 2); the peer times "
                   "(epochs - 1) x steps steps")
    p.add_argument("--peer-warmup", type=int, default=None,
                   help="the peer's untimed warm-up steps (default: --steps, our epoch 1)")
    p.add_argument("--peer-workers", type=int, default=2, help="the peer's DataLoader workers")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--width", type=int, default=0, help="our backbone (0: ResNet-18; W > 0: "
                   "small_resnet, smoke runs only: the peer always trains ResNet-18)")
    p.add_argument("--precision", choices=["fp32", "bf16", "auto"], default="fp32")
    p.add_argument("--peer-python", type=Path,
                   default=Path(os.environ.get(PEER_ENV) or DEFAULT_PEER_PYTHON),
                   help=f"python of the peer's venv (default: ${PEER_ENV} or .peer-venv)")
    p.add_argument("--peer-script", type=Path, default=DEFAULT_PEER_SCRIPT)
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                   help="before each run wait up to S s for < 0.25 busy cores")
    p.add_argument("--out", default=None)
    p.add_argument("--append", action="store_true")
    args = p.parse_args(argv)
    args.methods = [m for m in args.methods.split(",") if m]
    bad = set(args.methods) - set(METHODS)
    if bad:
        p.error(f"unknown method(s) {sorted(bad)}; known: {', '.join(METHODS)}")
    if args.epochs < 2:
        p.error("--epochs must be >= 2")
    # absolute() (not resolve(): a venv's python is a symlink that must stay one); the peer runs
    # with its script's folder as working directory.
    args.peer_python, args.peer_script = args.peer_python.absolute(), args.peer_script.absolute()
    if args.peer_warmup is None:
        args.peer_warmup = args.steps
    args.command = command_line("benchmarks.peer_compare", argv)
    return args


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    records: list[dict[str, Any]] = []
    with JsonLines(args.out, args.append) as out:
        problem = peer_problem(args.peer_python, args.peer_script)
        if problem:
            log(f"[{BENCH}] skipped: {problem}")
            out.emit({"bench": BENCH, "skipped": problem, "command": args.command,
                      **provenance()})
            return records
        for pair in range(args.pairs):
            for method in args.methods:
                runs: dict[str, dict[str, Any]] = {}
                busy: dict[str, float | None] = {}
                order = ("peer", "ours") if pair % 2 == 0 else ("ours", "peer")
                for side in order:
                    busy[side] = wait_quiet(args.wait_quiet)
                    runs[side] = (run_peer(method, args) if side == "peer"
                                  else run_ours(method, args))
                peer, ours = runs["peer"], runs["ours"]
                record = {
                    "bench": BENCH, "method": method, "pair": pair, "first": order[0],
                    "ours_images_per_s": ours["images_per_s"],
                    "peer_images_per_s": peer["images_per_s"],
                    "ratio": round(ours["images_per_s"] / peer["images_per_s"], 4),
                    "batch": args.batch, "size": args.size, "threads": args.threads,
                    "steps": args.steps, "epochs": args.epochs, "precision": args.precision,
                    "backbone": ours["backbone"],
                    "note": ("smoke: our backbone is not ResNet-18, the ratio means nothing"
                             if args.width > 0 else None),
                    "busy_cores_before": busy,
                    "peer_other_cores": peer.get("other_cores"),
                    "peer_images_per_s_clean": peer.get("images_per_s_clean"),
                    "lightly": peer.get("lightly"), "peer_torch": peer.get("torch"),
                    "ours": {k: ours.get(k) for k in (
                        "images_per_s_mid", "worker_images_per_s", "epoch_intervals_s",
                        "eval_s_excluded", "worker_threads")},
                    "peer": {k: peer.get(k) for k in (
                        "step_s_median", "step_s_min", "step_s_max", "elapsed_s", "workers",
                        "variant", "backbone", "data_wait_frac", "command")},
                    **provenance("ray", "faiss"),
                    "command": args.command,
                }
                records.append(out.emit(record))
        if records:
            by: dict[str, list[float]] = {}
            for r in records:
                by.setdefault(r["method"], []).append(r["ratio"])
            out.emit({"bench": BENCH, "summary": True,
                      "ratios": {m: round(statistics.median(v), 4) for m, v in by.items()},
                      "pairs": args.pairs, "command": args.command, **provenance()})
    return records


if __name__ == "__main__":
    main()
