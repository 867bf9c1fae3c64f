"""The GPU path in one short run, for the day a GPU is lent: throughput, bf16, faiss-gpu, SyncBN.

On one GPU (`--device cuda`), in this process, each on a generated ImageNet-layout JPEG folder
(benchmarks/rehearsal.py's generator) and the shipped configs with sizes overridden only:

    train    images/s of MoCo v2 (imagenet_moco_v2) and BYOL (imagenet_byol), ResNet-50 at 224 px,
             with views made in the DataLoader (`data.augment_on: loader`) and on the GPU
             (`device`), in fp32 and bf16; next to a supervised ResNet-50 (the same backbone,
             folder, batch and loader) in the same run: `ratio_vs_supervised` (the goal: >= 0.65
             for MoCo v2). images/s is fit()'s own `train/images_per_s` of the last epoch (the
             first is warm-up), `--steps` steps of `--batch` images.
    knn      weighted kNN through the evaluator's path (a faiss GPU index when faiss sees a GPU,
             `faiss_gpus` says which) on random features: seconds
    kmeans   faiss k-means (sslray.eval.kmeans): GPU vs CPU seconds
    syncbn   BYOL with `bn: sync` for one step on one GPU: SyncBatchNorm converts and runs (one
             process, so no cross-GPU reduction: NCCL refuses two ranks on one GPU)
    shuffle  MoCo's shuffle BN path (`bn: shuffle`) for one step on the GPU

Prints one JSON line per measurement naming the device (appended to --out). Under 8 minutes on
one H100-class GPU with the defaults. `--device cpu --tiny` checks the wiring on a CPU (tests).

Example (on a GPU machine):
    python -m benchmarks.gpu_check --out benchmarks/results/gpu_check.jsonl
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.provenance import JsonLines, command_line, provenance
from benchmarks.rehearsal import write_image_folder


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return platform.processor() or "cpu"


def train_config(name: str, root: Path, args: argparse.Namespace, **sizes: Any) -> Any:
    from sslray.config import load_config

    sets = {"data.root": str(root), "data.loader_workers": args.loader_workers,
            "train.epochs": 2, "train.max_steps_per_epoch": args.steps,
            "train.batch_size": args.batch, "resources.workers": 1,
            "resources.use_gpu": args.device == "cuda", "eval.at_init": False,
            "eval.linear_fast": False, "eval.knn_k": 10, **sizes}
    if args.tiny:
        sets.update({"data.image_size": 64})
    return load_config(name, [f"{k}={v}" for k, v in sets.items()])


def measure_train(name: str, root: Path, args: argparse.Namespace, **sizes: Any
                  ) -> dict[str, Any]:
    from sslray.training.loop import fit

    cfg = train_config(name, root, args, **sizes)
    start = time.perf_counter()
    metrics = fit(cfg, device=args.device, verbose=False)
    return {"images_per_s": round(metrics["train/images_per_s"], 1),
            "bf16": bool(metrics["train/bf16"]), "wall_s": round(time.perf_counter() - start, 1)}


def supervised_on_folder(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """A supervised ResNet-50 with imagenet_moco_v2's data, backbone and batch."""
    return measure_train("imagenet_moco_v2", root, args, **{"method": "{name: supervised}",
                                                           "train.precision": "fp32"})


def bench_knn(n: int, dim: int) -> dict[str, Any]:
    import faiss

    from sslray.eval import knn

    rng = np.random.default_rng(0)
    train = torch.from_numpy(rng.standard_normal((n, dim), dtype=np.float32))
    labels = torch.from_numpy(rng.integers(0, 1000, n))
    test = train[: n // 10] + 0.1
    out: dict[str, Any] = {"n": n, "dim": dim, "faiss_gpus": faiss.get_num_gpus()
                           if hasattr(faiss, "get_num_gpus") else 0}
    start = time.perf_counter()
    knn.knn_top1(train, labels, test, labels[: n // 10], k=200, num_classes=1000)
    out["seconds"] = round(time.perf_counter() - start, 2)  # the evaluator's path (GPU if any)
    return out


def bench_kmeans(n: int, dim: int, k: int) -> dict[str, Any]:
    from sslray.eval.kmeans import kmeans

    x = np.random.default_rng(0).standard_normal((n, dim), dtype=np.float32)
    out: dict[str, Any] = {"n": n, "dim": dim, "k": k}
    for where, use_gpu in (("cpu", False), ("gpu", True)):
        start = time.perf_counter()
        try:
            kmeans(x, k, seed=0, iters=20, use_gpu=use_gpu)
        except ValueError as exc:  # faiss-cpu: no GPU index
            out[f"{where}_error"] = str(exc)[:200]
            continue
        out[f"{where}_s"] = round(time.perf_counter() - start, 2)
    if "cpu_s" in out and "gpu_s" in out:
        out["speedup"] = round(out["cpu_s"] / out["gpu_s"], 1)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="example: python -m benchmarks.gpu_check --out "
                                       "benchmarks/results/gpu_check.jsonl",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--batch", type=int, default=128, help="images per step (one GPU)")
    p.add_argument("--steps", type=int, default=12, help="steps per epoch (2 epochs)")
    p.add_argument("--loader-workers", type=int, default=8)
    p.add_argument("--images", type=int, default=1536, help="training JPEGs generated")
    p.add_argument("--tiny", action="store_true", help="wiring check: 64 px, small sizes")
    p.add_argument("--out", type=Path, default=None, help="append the JSON lines here")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device here (use --device cpu --tiny to check the "
                         "wiring)")
    device = torch.device(args.device)
    base = {"benchmark": "gpu_check", "device": device_name(device),
            "command": command_line("benchmarks.gpu_check", argv), **provenance()}
    per_class = max(2, args.images // 10)
    with JsonLines(args.out, append=True) as out, tempfile.TemporaryDirectory() as tmp:
        root = write_image_folder(Path(tmp) / "imagenet", classes=10, train=per_class, val=2)
        supervised = supervised_on_folder(root, args)
        out.emit({**base, "check": "train", "method": "supervised", "augment_on": "loader",
                  "precision": "fp32", **supervised})
        for name, method in (("imagenet_moco_v2", "moco_v2"), ("imagenet_byol", "byol")):
            for augment_on in ("loader", "device"):
                for precision in ("fp32", "bf16"):
                    sizes: dict[str, Any] = {"data.augment_on": augment_on,
                                             "train.precision": precision}
                    record = measure_train(name, root, args, **sizes)
                    record["ratio_vs_supervised"] = round(
                        record["images_per_s"] / supervised["images_per_s"], 3)
                    out.emit({**base, "check": "train", "method": method,
                              "augment_on": augment_on, "precision": precision, **record})
        n, dim = (2000, 64) if args.tiny else (200_000, 2048)
        out.emit({**base, "check": "knn", **bench_knn(n, dim)})
        out.emit({**base, "check": "kmeans",
                  **bench_kmeans(n, dim if args.tiny else 256, 10 if args.tiny else 2000)})
        if args.device == "cuda":
            syncbn = measure_train("imagenet_byol", root, args,
                                   **{"method.bn": "sync", "train.max_steps_per_epoch": 1})
            out.emit({**base, "check": "syncbn", **syncbn})
        shuffle = measure_train("imagenet_moco_v2", root, args,
                                **{"method.bn": "shuffle", "train.max_steps_per_epoch": 1})
        out.emit({**base, "check": "shuffle", **shuffle})
    return 0


if __name__ == "__main__":
    sys.exit(main())
