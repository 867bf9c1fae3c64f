"""Paper scale on a CPU: every `imagenet_*` config rehearsed end to end on a generated folder.

What a GPU cluster runs, at a size this machine can: a generated ImageNet-layout folder of real
JPEGs (`train/<class>/*.JPEG`, `val/<class>/*.JPEG`, varied sizes around 300-500 px, a colour
and texture per class so the features have something to find), and each config as shipped
(ResNet-50 at 224 px for MoCo v1/v2 and BYOL, the AlexNet-style tower at 255 px for Jigsaw++,
the cc pipeline with its Jigsaw++ source) with only sizes overridden (`OVERRIDES`): data root,
epochs, steps per epoch, batch, the workers' devices (2 gloo workers of 1 CPU), the linear
protocol's epochs and cc's k. Each run goes through the real path: Ray Train, DDP, shuffle BN
across the 2 workers, the folder loaders (1 DataLoader process per worker), evaluation sharded
over both ranks (kNN, the fast probe and MoCo's linear protocol on the folder), and a worker
killed mid-epoch 2 (`FAULT_ENV`) so the run resumes from its epoch-1 checkpoint.

Prints one JSON line per config (appended to --out): wall_s (the whole run, from the driver),
run_wall_s (its training + evaluation), epochs, resumed_from_epoch, the eval metrics. The
generated classes are easy (kNN is near 1.0 even at random init): the folder tests the code path
at paper shape, not representation quality. `tests/rehearsal/` runs it in `make test` on a
smaller folder.

Example (about 10 minutes on 2 cores):
    python -m benchmarks.rehearsal --out benchmarks/results/rehearsal.jsonl
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

CONFIGS = ("imagenet_moco_v1", "imagenet_moco_v2", "imagenet_byol", "imagenet_jigsaw_pp",
           "imagenet_cc")

# Sizes only: everything else is the config as shipped.
OVERRIDES = {
    "train.epochs": 2, "train.max_steps_per_epoch": 2, "train.batch_size": 4,
    "resources.workers": 2, "resources.use_gpu": False, "resources.cpus_per_worker": 1,
    "resources.max_failures": 1, "data.loader_workers": 1,
    "eval.batch_size": 16, "eval.linear_paper_epochs": 1,
}
# k-means over the folder's few images (the paper: k 2000 of 1.28M; PCA to 256 needs >= 256)
CC_OVERRIDES = {"method.k": 5, "method.pca_dim": 16}


def write_image_folder(root: Path, classes: int = 10, train: int = 40, val: int = 10,
                       seed: int = 0) -> Path:
    """An ImageNet-layout folder of JPEGs: class c has its own hue and stripe orientation,
    each image a random size (300-500 px a side), position, scale and noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, per in (("train", train), ("val", val)):
        for c in range(classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            hue = np.array([np.cos(2 * np.pi * c / classes), np.sin(2 * np.pi * c / classes),
                            np.cos(4 * np.pi * c / classes)]) * 0.35 + 0.5
            angle = np.pi * c / classes
            for i in range(per):
                h, w = rng.integers(300, 501, size=2)
                yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
                freq = rng.uniform(0.03, 0.06)
                stripes = np.sin(freq * (xx * np.cos(angle) + yy * np.sin(angle))
                                 + rng.uniform(0, 2 * np.pi))
                img = hue[None, None, :] * (0.75 + 0.25 * stripes[..., None])
                img = img + rng.normal(0, 0.08, size=(h, w, 3))
                pixels = (np.clip(img, 0, 1) * 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{split}_{c}_{i}.JPEG", quality=90)
    return root


def overrides(name: str, root: Path) -> list[str]:
    sizes = {"data.root": str(root), **OVERRIDES}
    if name.endswith("_cc"):
        # the source (imagenet_jigsaw_pp) gets the same sizes; the target's resources apply
        source = {k: v for k, v in sizes.items() if not k.startswith("resources.")}
        sizes = {**sizes, **CC_OVERRIDES, "method.source_set": source}
    return [f"{key}={value}" if not isinstance(value, dict) else f"{key}={_flow(value)}"
            for key, value in sizes.items()]


def _flow(value: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).strip()


def rehearse(name: str, root: Path, runs: Path, kill: bool = True) -> dict[str, Any]:
    """Run `name` on the folder `root` (Ray must be up); returns its final metrics + wall_s."""
    from sslray.config import load_config
    from sslray.pipeline import run_any
    from sslray.storage import location
    from sslray.training.worker import FAULT_ENV

    cfg = load_config(name, overrides(name, root))
    previous = os.environ.get(FAULT_ENV)
    if kill:
        os.environ[FAULT_ENV] = "1"  # SIGKILL rank 0 mid-epoch 2, once per Train run
    start = time.perf_counter()
    try:
        metrics = run_any(cfg, location(runs / name), verbose=False)
    finally:
        if previous is None:
            os.environ.pop(FAULT_ENV, None)
        else:
            os.environ[FAULT_ENV] = previous
    # wall_s: the whole run from the driver (Ray Train start, the restart after the kill, all
    # stages); run_wall_s: the run's own training + evaluation seconds (its `wall_s` metric)
    return {"config": name, **metrics, "run_wall_s": metrics.get("wall_s"),
            "wall_s": round(time.perf_counter() - start, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="example: python -m benchmarks.rehearsal --configs "
                                       "imagenet_moco_v2",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--train", type=int, default=40, help="training images per class")
    p.add_argument("--val", type=int, default=10, help="validation images per class")
    p.add_argument("--out", type=Path, default=None, help="append the JSON lines here")
    args = p.parse_args(argv)

    import logging

    import ray

    from benchmarks.provenance import JsonLines, command_line, provenance
    from sslray.cli.ray_setup import QUIET_RAY_ENV, RAY_ENV

    for key, value in {**RAY_ENV, **QUIET_RAY_ENV}.items():
        os.environ.setdefault(key, value)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR)
    base = {"benchmark": "rehearsal", "command": command_line("benchmarks.rehearsal", argv),
            "folder": f"{args.classes} classes x {args.train} train / {args.val} val JPEGs",
            **provenance("ray")}
    with JsonLines(args.out, append=True) as out, tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        root = write_image_folder(Path(tmp) / "imagenet", args.classes, args.train, args.val)
        out.emit({**base, "config": "(folder)", "wall_s": round(time.perf_counter() - start, 1)})
        for name in args.configs.split(","):
            record = rehearse(name, root, Path(tmp) / "runs")
            keep = {k: v for k, v in record.items()
                    if k in ("config", "wall_s", "run_wall_s", "epoch",
                             "train/resumed_from_epoch", "train/loss")
                    or k.startswith(("eval/", "cluster/"))}
            out.emit({**base, **keep})
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
