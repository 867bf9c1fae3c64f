"""Training throughput (images/s) of moco, byol and jigsaw_pp: plain loop, Ray Train, compute limit.

Workload (fixed unless a flag changes it): torchvision ResNet-18 with the small-image stem (3x3
stride-1 conv1, no max-pool; `backbone.arch: resnet18, small_stem: true`), 32x32 images, global
batch 128, fp32, channels-last (the project default). Data: the project's `synthetic` dataset
(seeded uint8 images, made in memory, replicated to 3 channels by the view pipeline), exactly
`steps x batch` images, so one epoch is `--steps` steps. Every step goes through the real
augmentation pipeline (`BatchedViews`, on the training process) and the method's real
`training_step`, optimiser step and EMA/queue updates.

Methods (hyperparameters: lightly's / the MoCo CIFAR demo's small-image recipe, as
`benchmarks/peer_compare.py` needs them; they do not change the cost of a step):
  moco_asym  MoCo v2 as in the paper: one query pass with gradient on view 1, one key pass without
             on view 2 (shuffle BN), InfoNCE against a 4096-key queue; MLP head 512-512-128,
             T 0.1, m 0.99, SGD lr 0.06 momentum 0.9 wd 5e-4 (no lr scaling), no blur.
  moco_sym   the same with `method.symmetric: true` (lightly's CIFAR-10 recipe): each view is once
             query, once key: 2 passes with gradient + 2 without.
  byol       projector 512-4096-256, predictor 256-4096-256 (BN in the hidden layer, per worker),
             tau 0.99 cosine, online and target nets on both views; SGD as above, no blur.
  jigsaw_pp  3x3 puzzles of 12 px tiles cut from a 48 px crop (the project's small-image geometry,
             `fmnist_jigsaw_pp`), 100 permutations, 0-2 foreign tiles; tile features 512 ->
             fc6 512 per tile -> fc7 2048 -> 100 logits; SGD as above.

Modes (each measurement is one images/s figure):
  compute  the COMPUTE LIMIT: only the method's own network passes on pre-made tensors, plus the
           optimiser step. Two fixed `randn(batch, 3, size, size)` views (channels-last, like the
           loop's) are made once; then every step is:
             moco_asym: encoder_q (backbone + head) forward+backward on view 1, and encoder_k
                        forward under no_grad on view 2;
             moco_sym:  both: encoder_q fwd+bwd on views 1 and 2, encoder_k fwd no-grad on 2, 1;
             byol:      online network (backbone + projector + predictor) fwd+bwd on both views,
                        target network (backbone + projector) fwd no-grad on both views;
             jigsaw_pp: the tile network (backbone on the 9 x batch tiles, fc6, fc7, classifier)
                        fwd+bwd on a fixed randn(batch, 9, 3, 12, 12) tile tensor;
           with a trivial loss (negative cosine, BYOL's loss, cross-entropy to fixed labels),
           `zero_grad`, `backward`, and the run's own optimiser `step()` (the same optimiser and
           parameter groups as training), under the same autocast setting. NOT included: view
           making / puzzle cutting, the queue (logits against it, enqueue), shuffle BN, the EMA
           update of the momentum encoder, lr scheduling, metrics. 2 warm-up steps
           (`--compute-warmup`), then (epochs - 1) x steps timed steps (the same number of images
           as the other modes' measured window); images/s = batch x timed steps / elapsed.
  plain    `sslray.training.loop.fit` in this process, no Ray (torch.set_num_threads(--threads)).
  ray1     `sslray.training.worker.run_training`, Ray Train, 1 worker with --threads CPUs.
  ray2     the same with 2 workers of 1 CPU each (the batch split between them, DDP over gloo).

Measurement of plain / ray1 / ray2 (includes Ray's per-epoch costs, excludes one-time start-up):
run `--epochs` E epochs of `--steps` N steps. The stamp of each epoch is the worker's own
`train/elapsed_s` metric (seconds since it entered `fit`, taken after the epoch's training and
evaluation, before its report and checkpoint), so the checkpoint save, upload and report of
epochs 1..E-1 are inside the window and the stamps do not depend on when the Train controller
polled (in the plain loop the metrics come from fit's `on_epoch_end`; under Ray from a
`ray.train.UserCallback` on the controller that writes every report's metrics to a file).
images/s = (E - 1) x N x batch / (stamp_E - stamp_1 - eval_E): epoch 1 (start-up, worker
start, first-step allocations) is outside the window. eval_E is the final kNN evaluation that
`fit` always runs after the last epoch on rank 0 (cheap here: `at_init: false`,
`every_n_epochs: 0`, no linear probe, no transfer, 64 test images); it is taken out of the window
as (wall_s_E - wall_s_{E-1} - epoch_s_E) - (wall_s_{E-1} - wall_s_{E-2} - epoch_s_{E-1}), from
the run's own per-epoch `wall_s` (train + eval) and `train/epoch_s` (train only) metrics. The last
epoch's report, checkpoint and one-time `final.pt` write are outside the window (once per run).
`images_per_s_mid` is the same over epochs 2..E-1 only (E >= 3), untouched by the last epoch;
`worker_images_per_s` is the loop's own in-worker figure (training only, no report/checkpoint).

Threads: plain and compute call torch.set_num_threads(--threads). Ray sets OMP_NUM_THREADS to the
worker's CPU count when the variable is unset (ray/_private/utils.py
`set_omp_num_threads_if_unset`); to be sure, the Ray modes run `run_training` with its train
function wrapped (`pinned_train_loop`, patched in for the call) so that each worker first calls
torch.set_num_threads(its assigned CPUs) and records what torch had chosen by itself
(`worker_threads` in the output); `--no-pin-threads` leaves it to Ray. Ray is started once,
`ray.init(num_cpus=max(2, threads), include_dashboard=False)`, before the first measurement when
any Ray mode is asked for (so compute and plain run beside the same idle Ray daemons as ray1 and
ray2), with the Ray settings `sslray run` uses (sslray.cli.ray_setup.RAY_ENV: the Train
controller polls every 0.5 s) plus quiet start-up settings (QUIET_RAY_ENV; a variable already set in
the environment wins). Seen in smoke runs (Ray 2.60, torch 2.14): the workers get
OMP_NUM_THREADS 2 (ray1) and 1 (ray2) and torch already uses that many, so the pin changes nothing.

Contention: the machine's busy cores are sampled for 1 s before each measurement
(`busy_cores_before`; about 0.05 when only Ray's idle daemons run); `--wait-quiet S` waits up to S
seconds for fewer than 0.25 busy cores first. Figures taken on a busy machine are not comparable.

Order: for each repeat, for each method: compute, plain, ray1, ray2 back to back, so the ratios
(ray1/plain, ray2/plain, plain/compute, ray1/compute) compare neighbouring runs. The last line is a
summary with those ratios (median over repeats).

Example (smoke size, seconds):
  python -m benchmarks.train_throughput --methods moco_asym --modes compute,plain \\
      --batch 16 --steps 1 --epochs 2 --size 16 --width 4
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.provenance import (  # noqa: E402
    JsonLines,
    command_line,
    log,
    provenance,
    wait_quiet,
)

METHODS = ("moco_asym", "moco_sym", "byol", "jigsaw_pp")
MODES = ("compute", "plain", "ray1", "ray2")
BENCH = "train_throughput"

MIN_SYNTHETIC = 20  # DataConfig.synthetic_size >= 20


# ------------------------------------------------------------------------------------- configs
def backbone_section(width: int) -> dict[str, Any]:
    """width 0: the real ResNet-18 (small-image stem); width > 0: a small_resnet of that width
    (4 stages, one BasicBlock each; for smoke runs)."""
    if width <= 0:
        return {"arch": "resnet18", "small_stem": True}
    return {"arch": "small_resnet", "width": width, "blocks": [1, 1, 1, 1]}


def feature_dim(width: int) -> int:
    return 512 if width <= 0 else width * 8


def method_section(method: str, batch: int, width: int) -> dict[str, Any]:
    from sslray.methods.byol import BYOL_VIEW_1, BYOL_VIEW_2

    if method in ("moco_asym", "moco_sym"):
        queue = 4096 if 4096 % batch == 0 else batch * max(1, 4096 // batch)  # whole batches
        return {
            "name": "moco", "symmetric": method == "moco_sym", "queue_size": queue,
            "ema_decay": 0.99, "temperature": 0.1, "dim": 128, "mlp": True, "bn": "shuffle",
            "bn_splits": 1, "augment": {"blur_p": 0.0},
        }
    if method == "byol":
        return {
            "name": "byol", "hidden_dim": 4096, "proj_dim": 256, "tau_base": 0.99,
            "tau_schedule": "cosine", "bn": "local",
            "augment_1": BYOL_VIEW_1.model_copy(update={"blur_p": 0.0}).model_dump(),
            "augment_2": BYOL_VIEW_2.model_copy(update={"blur_p": 0.0}).model_dump(),
        }
    if method == "jigsaw_pp":
        d = feature_dim(width)
        return {
            "name": "jigsaw_pp", "num_permutations": 100, "grid": 3, "crop_size": 48,
            "tile_size": 12, "jitter": 4, "channel_shift_px": 0, "tile_dim": d,
            "hidden_dim": 4 * d, "dropout": 0.0,
        }
    raise ValueError(f"unknown method {method!r} (known: {', '.join(METHODS)})")


def build_config(method: str, mode: str, *, batch: int, steps: int, epochs: int, size: int,
                 width: int, precision: str, threads: int) -> Any:
    """The RunConfig of one measurement (validated like any user config)."""
    from sslray.config import validate_raw

    n = max(steps * batch, MIN_SYNTHETIC)
    workers = 2 if mode == "ray2" else 1
    raw = {
        "name": f"bench-{method}-{mode}",
        "seed": 0,
        "data": {"dataset": "synthetic", "synthetic_size": n, "image_size": size,
                 "test_subset": min(64, n)},
        "backbone": backbone_section(width),
        "method": method_section(method, batch, width),
        "optim": {"name": "sgd", "lr": 0.06, "lr_scaling": "none", "momentum": 0.9,
                  "weight_decay": 5e-4, "schedule": "cosine"},
        "train": {"epochs": epochs, "batch_size": batch, "precision": precision},
        "eval": {"knn_k": 20, "every_n_epochs": 0, "at_init": False, "linear_fast": False,
                 "pixels": False, "transfer": [], "linear_paper_epochs": 0},
        "resources": {"workers": workers, "cpus_per_worker": 1.0 if mode == "ray2" else threads,
                      "max_failures": 0},
    }
    return validate_raw(raw, source=f"benchmark {method}/{mode}")


# ------------------------------------------------------------------------------- measurement
def epoch_window(stamps: list[float], metrics: list[dict[str, float]], images_per_epoch: int
                 ) -> dict[str, Any]:
    """images/s over epochs 2..E from end-of-epoch stamps, less the final evaluation.

    The stamps are the worker's own `train/elapsed_s` at each epoch end (after its evaluation,
    before its report and checkpoint) when the metrics carry it, so they do not depend on when
    the Train controller polled; `stamps` (wall-clock at the callback) is the fallback."""
    if metrics and all("train/elapsed_s" in m for m in metrics):
        stamps = [float(m["train/elapsed_s"]) for m in metrics]
    e = len(stamps)
    if e < 2 or len(metrics) != e:
        raise RuntimeError(f"expected one stamp and one metrics dict per epoch, got {e} stamps "
                           f"and {len(metrics)} metrics dicts")
    wall = [0.0] + [float(m.get("wall_s", 0.0)) for m in metrics]
    train_s = [float(m.get("train/epoch_s", 0.0)) for m in metrics]
    extra = [wall[i + 1] - wall[i] - train_s[i] for i in range(e)]  # eval + bookkeeping per epoch
    eval_last = max(0.0, extra[-1] - extra[-2])
    elapsed = stamps[-1] - stamps[0] - eval_last
    out: dict[str, Any] = {
        "images_per_s": round((e - 1) * images_per_epoch / elapsed, 3),
        "elapsed_s": round(elapsed, 3),
        "eval_s_excluded": round(eval_last, 3),
        "epoch_intervals_s": [round(b - a, 3) for a, b in zip(stamps, stamps[1:])],
        "epoch_train_s": [round(t, 3) for t in train_s],
        "worker_images_per_s": round(
            statistics.mean(float(m["train/images_per_s"]) for m in metrics[1:]), 3),
        "images_per_s_mid": None,
    }
    if e >= 3:
        out["images_per_s_mid"] = round((e - 2) * images_per_epoch / (stamps[-2] - stamps[0]), 3)
    return out


def _compute_step(method: str, trainer: Any, batch: int, size: int) -> Any:
    """One compute-limit step (see the module docstring) on tensors made here, once."""
    import torch
    import torch.nn.functional as F

    from sslray.methods.byol import byol_loss

    m, opt = trainer.method, trainer.optimizer
    cl = trainer.channels_last  # train.channels_last, unless the backbone declines it
    g = torch.Generator().manual_seed(0)

    def tensor(*shape: int) -> torch.Tensor:
        x = torch.randn(*shape, generator=g)
        return x.contiguous(memory_format=torch.channels_last) if cl and x.ndim == 4 else x

    def neg_cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return -(F.normalize(a.float(), dim=1) * F.normalize(b.float(), dim=1)).sum(1).mean()

    if method == "jigsaw_pp":
        c = trainer.cfg.method
        k = c.grid * c.grid
        tiles = tensor(batch, k, 3, c.tile_size, c.tile_size)
        labels = torch.randint(0, c.num_permutations, (batch,), generator=g)
    else:
        v1, v2 = tensor(batch, 3, size, size), tensor(batch, 3, size, size)

    def loss_fn() -> torch.Tensor:
        if method in ("moco_asym", "moco_sym"):
            pairs = [(v1, v2)] + ([(v2, v1)] if method == "moco_sym" else [])
            loss = torch.zeros(())
            for xq, xk in pairs:
                q = m.encoder_q(xq)
                with torch.no_grad():
                    k_ = m.encoder_k(xk)
                loss = loss + neg_cos(q, k_)
            return loss
        if method == "byol":
            z1, z2 = m.online(v1), m.online(v2)
            p1, p2 = m.predictor(z1), m.predictor(z2)
            with torch.no_grad():
                t1, t2 = m.target(v1), m.target(v2)
            return byol_loss(p1, t2) + byol_loss(p2, t1)
        logits, _ = m.logits(tiles)
        return F.cross_entropy(logits.float(), labels)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=trainer.bf16):
            loss = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def measure_compute(method: str, cfg: Any, steps: int, warmup: int, threads: int
                    ) -> dict[str, Any]:
    import torch

    from sslray.training.loop import Trainer

    torch.set_num_threads(threads)
    trainer = Trainer(cfg, steps_per_epoch=1)
    trainer.module.train()
    step = _compute_step(method, trainer, cfg.train.batch_size, cfg.data.image_size)
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    elapsed = time.perf_counter() - start
    return {"images_per_s": round(cfg.train.batch_size * steps / elapsed, 3),
            "elapsed_s": round(elapsed, 3), "timed_steps": steps, "warmup_steps": warmup,
            "bf16": trainer.bf16}


def measure_plain(cfg: Any, images_per_epoch: int, threads: int) -> dict[str, Any]:
    import torch

    from sslray.training.loop import fit

    torch.set_num_threads(threads)
    stamps: list[float] = []
    metrics: list[dict[str, float]] = []

    def on_epoch_end(m: dict[str, float], trainer: Any) -> None:
        stamps.append(time.time())
        metrics.append(dict(m))

    fit(cfg, on_epoch_end=on_epoch_end, verbose=False)
    out = epoch_window(stamps, metrics, images_per_epoch)
    out["bf16"] = bool(metrics[-1].get("train/bf16", 0.0))
    return out


# ------------------------------------------------------------------------------ Ray Train parts
def _report_stamps_callback(path: str) -> Any:
    """A ray.train.UserCallback that appends (time, every worker's metrics) per report to `path`.

    It runs on the Train controller (another process), hence the file."""
    from ray.train import UserCallback

    class ReportStamps(UserCallback):
        def __init__(self, out: str) -> None:
            self.out = out

        def after_report(self, run_context: Any, metrics: list[dict[str, Any]],
                         checkpoint: Any) -> None:
            line = {"time": time.time(), "metrics": metrics}
            with open(self.out, "a") as f:
                f.write(json.dumps(line, default=float) + "\n")

    return ReportStamps(path)


def pinned_train_loop(config: dict[str, Any]) -> Any:
    """sslray's Ray Train worker function, after torch.set_num_threads(assigned CPUs).

    Writes what torch had chosen by itself, and what it uses, to <run_dir>/threads_rank<r>.json.
    """
    import importlib

    import ray
    import ray.train
    import torch

    info = {"omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
            "torch_threads_default": torch.get_num_threads()}
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    torch.set_num_threads(max(1, int(cpus)))
    info.update(assigned_cpus=cpus, torch_threads=torch.get_num_threads())
    rank = ray.train.get_context().get_world_rank()
    run_dir = Path(str(config["run_dir"]).removeprefix("file://"))
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / f"threads_rank{rank}.json").write_text(json.dumps(info))
    # Looked up here, in the worker process, where sslray's module is the unpatched original.
    original = importlib.import_module("sslray.training.worker").train_loop_per_worker
    if original is pinned_train_loop:
        raise RuntimeError("pinned_train_loop must run in a Ray worker process")
    return original(config)


def start_ray(cpus: int) -> None:
    import logging

    import ray

    if ray.is_initialized():
        return
    from sslray.cli.ray_setup import QUIET_RAY_ENV, RAY_ENV

    # The figures are those of `sslray run` (its RAY_ENV), started quietly.
    for key, value in {**RAY_ENV, **QUIET_RAY_ENV}.items():
        os.environ.setdefault(key, value)
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING, object_store_memory=256 * 1024**2)


def measure_ray(cfg: Any, images_per_epoch: int, pin_threads: bool = True) -> dict[str, Any]:
    from unittest import mock

    import ray.cloudpickle

    from sslray.training import worker

    module = sys.modules[__name__]
    if __name__ != "__main__":  # let Ray's workers unpickle our functions without importing us
        ray.cloudpickle.register_pickle_by_value(module)
    tmp = Path(tempfile.mkdtemp(prefix="sslray-bench-"))
    stamps_file = tmp / "reports.jsonl"
    run_dir = tmp / "run"
    try:
        callback = _report_stamps_callback(str(stamps_file))
        if pin_threads:
            with mock.patch.object(worker, "train_loop_per_worker", pinned_train_loop):
                worker.run_training(cfg, str(run_dir), callbacks=[callback], verbose=False)
        else:
            worker.run_training(cfg, str(run_dir), callbacks=[callback], verbose=False)
        lines = [json.loads(x) for x in stamps_file.read_text().splitlines() if x.strip()]
        stamps = [float(x["time"]) for x in lines]
        # rank 0 runs the final evaluation: the worker whose last report holds eval/* metrics.
        last = lines[-1]["metrics"]
        r0 = next((i for i, m in enumerate(last) if "eval/knn_top1" in m), 0)
        rank0 = [x["metrics"][r0] for x in lines]
        out = epoch_window(stamps, rank0, images_per_epoch)
        out["bf16"] = bool(rank0[-1].get("train/bf16", 0.0))
        out["worker_threads"] = [
            json.loads(p.read_text()) for p in sorted(run_dir.glob("threads_rank*.json"))
        ]
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------------- driver
def measure(method: str, mode: str, args: argparse.Namespace, repeat: int = 0
            ) -> dict[str, Any]:
    """One measurement as a JSON-ready record."""
    cfg = build_config(method, mode, batch=args.batch, steps=args.steps, epochs=args.epochs,
                       size=args.size, width=args.width, precision=args.precision,
                       threads=args.threads)
    steps = cfg.data.synthetic_size // args.batch  # == --steps unless batch * steps < 20
    images_per_epoch = steps * args.batch
    busy = wait_quiet(args.wait_quiet)
    log(f"[{BENCH}] {method} {mode} (repeat {repeat}) ...")
    t0 = time.perf_counter()
    if mode == "compute":
        result = measure_compute(method, cfg, (args.epochs - 1) * steps, args.compute_warmup,
                                 args.threads)
    elif mode == "plain":
        result = measure_plain(cfg, images_per_epoch, args.threads)
    elif mode in ("ray1", "ray2"):
        start_ray(max(2, args.threads))
        result = measure_ray(cfg, images_per_epoch, pin_threads=not args.no_pin_threads)
    else:
        raise ValueError(f"unknown mode {mode!r} (known: {', '.join(MODES)})")
    workers = {"ray1": 1, "ray2": 2}.get(mode, 0)
    record = {
        "bench": BENCH, "method": method, "mode": mode, "repeat": repeat,
        "images_per_s": result.pop("images_per_s"),
        "steps": steps, "epochs": args.epochs, "batch": args.batch, "size": args.size,
        "backbone": "resnet18-small-stem" if args.width <= 0 else f"small_resnet-w{args.width}",
        "threads": 1 if mode == "ray2" else args.threads,
        "ray_workers": workers, "precision": args.precision,
        "health_check_s": (float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "2.0"))
                           if workers else None),
        **result,
        "run_wall_s": round(time.perf_counter() - t0, 1),
        "busy_cores_before": busy,
        **provenance("ray", "faiss"),
        "command": args.command,
    }
    return record


def ratios(records: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per method: ray1/plain, ray2/plain, plain/compute, ray1/compute (median over repeats)."""
    by: dict[tuple[str, str, int], dict[str, float]] = {}
    for r in records:  # a repeat is one run of the script: its file (when summarising) and index
        key = (r["method"], r.get("_file", ""), r["repeat"])
        by.setdefault(key, {})[r["mode"]] = r["images_per_s"]
    pairs = (("ray1", "plain"), ("ray2", "plain"), ("plain", "compute"), ("ray1", "compute"))
    collected: dict[str, dict[str, list[float]]] = {}
    for (method, _, _), modes in by.items():
        for a, b in pairs:
            if a in modes and b in modes and modes[b] > 0:
                collected.setdefault(method, {}).setdefault(f"{a}/{b}", []).append(
                    modes[a] / modes[b])
    return {m: {k: round(statistics.median(v), 4) for k, v in d.items()}
            for m, d in collected.items()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="See the module docstring (python -m pydoc "
                                       "benchmarks.train_throughput) for what is measured.")
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"comma-separated, from {','.join(METHODS)}")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, from "
                   f"{','.join(MODES)}; always run in this order per method")
    p.add_argument("--steps", type=int, default=3, help="steps per epoch")
    p.add_argument("--epochs", type=int, default=3, help="epochs per run (>= 2; epoch 1 is "
                   "start-up, outside the window)")
    p.add_argument("--batch", type=int, default=128, help="global batch")
    p.add_argument("--size", type=int, default=32, help="image side in pixels")
    p.add_argument("--width", type=int, default=0, help="0: ResNet-18 (small-image stem); "
                   "W > 0: small_resnet of width W (smoke runs)")
    p.add_argument("--precision", choices=["fp32", "bf16", "auto"], default="fp32")
    p.add_argument("--threads", type=int, default=2, help="torch threads (plain, compute) and "
                   "CPUs of the single Ray worker (ray1); ray2 uses 2 workers x 1")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--compute-warmup", type=int, default=2, help="untimed compute-mode steps")
    p.add_argument("--no-pin-threads", action="store_true",
                   help="leave the Ray workers' torch threads to Ray's OMP_NUM_THREADS")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                   help="before each measurement wait up to S seconds until other processes use "
                   "< 0.25 cores (the busy cores seen are recorded either way)")
    p.add_argument("--out", default=None, help="JSON-lines file (overwritten unless --append)")
    p.add_argument("--append", action="store_true")
    args = p.parse_args(argv)
    args.methods = [m for m in args.methods.split(",") if m]
    args.modes = [m for m in MODES if m in set(args.modes.split(","))]
    unknown = (set(args.methods) - set(METHODS))
    if unknown:
        p.error(f"unknown method(s) {sorted(unknown)}; known: {', '.join(METHODS)}")
    if not args.modes:
        p.error(f"--modes: none of {', '.join(MODES)}")
    if args.epochs < 2:
        p.error("--epochs must be >= 2 (epoch 1 is start-up and is not measured)")
    if "ray2" in args.modes and args.batch % 2:
        p.error("--batch must be even for ray2 (2 workers)")
    args.command = command_line("benchmarks.train_throughput", argv)
    return args


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    records: list[dict[str, Any]] = []
    if {"ray1", "ray2"} & set(args.modes):
        start_ray(max(2, args.threads))  # first: every mode then runs beside Ray's idle daemons
    with JsonLines(args.out, args.append) as out:
        for repeat in range(args.repeats):
            for method in args.methods:
                for mode in args.modes:
                    records.append(out.emit(measure(method, mode, args, repeat)))
        out.emit({"bench": BENCH, "summary": True, "ratios": ratios(records),
                  "command": args.command, **provenance("ray", "faiss")})
    return records


if __name__ == "__main__":
    main()
