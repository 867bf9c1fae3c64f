"""`sslray validate CONFIG`: check a run config without running it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sslray.cli.common import add_config_arguments, guarded


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "validate",
        help="check a run config or a sweep file and print what it would run",
        description="Validate a run config (YAML path or built-in name) and its --set overrides, "
        "or a sweep file (every trial expanded and validated; prints the trial count and the "
        "resources it needs). Exits 2 with the dotted key path of every problem.",
        epilog="examples:\n"
        "  sslray validate fmnist_moco_v2 --set method.queue_size=8192\n"
        "  sslray validate sweeps/moco_momentum.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(p)
    p.add_argument("--smoke", action="store_true", help="validate the shrunk smoke-test version")
    p.set_defaults(func=guarded(run))


def describe(cfg: Any) -> str:
    res = cfg.resources
    workers = f"{res.workers} Ray Train workers" if res.workers else "Ray Train local mode"
    per = f"{res.cpus_per_worker:g} CPU"
    if res.use_gpu:
        per += f" + {res.gpus_per_worker:g} GPU"
    data = cfg.data
    subset = f", train subset {data.train_subset}" if data.train_subset else ""
    return "\n".join([
        f"run:      {cfg.name} (seed {cfg.seed})",
        f"method:   {cfg.method.name}",
        f"backbone: {cfg.backbone.arch}" + (f" width {cfg.backbone.width} blocks "
                                            f"{list(cfg.backbone.blocks)}"
                                            if cfg.backbone.arch == "small_resnet" else ""),
        f"data:     {data.dataset}{subset}",
        f"train:    {cfg.train.epochs} epochs, global batch {cfg.train.batch_size}, "
        f"lr {cfg.effective_lr:g} ({cfg.optim.schedule})",
        f"workers:  {workers}, {per} each",
    ])


def _sweep_file(spec: str) -> bool:
    """A sweep file (grid/variants/seeds/base at the top level), or a name from sweeps/."""
    from sslray.config import read_yaml
    from sslray.sweep.spec import SWEEPS_DIR, is_sweep_file

    path = Path(spec)
    if path.is_file() and path.suffix in (".yaml", ".yml"):
        return is_sweep_file(read_yaml(path))
    return not path.exists() and (SWEEPS_DIR / f"{spec}.yaml").is_file()


def run(args: argparse.Namespace) -> int:
    from sslray.config import ConfigError, load_config

    if _sweep_file(args.config):
        from sslray.sweep.spec import describe_sweep, expand, load_sweep

        if args.overrides:
            raise ConfigError(args.config, ["--set applies to run configs; put sweep-wide "
                                            "overrides under `set:` in the sweep file"])
        spec = load_sweep(args.config)
        print(describe_sweep(spec, expand(spec, smoke=args.smoke)))
        print("ok")
        return 0
    cfg = load_config(args.config, args.overrides)
    if args.smoke:
        cfg = cfg.smoke()
    print(describe(cfg))
    from sslray.pipeline import is_pipeline, source_config

    if is_pipeline(cfg):
        print("source (stage 1 of the cc pipeline):")
        print("\n".join("  " + line for line in describe(source_config(cfg)).splitlines()))
    print("ok")
    return 0
