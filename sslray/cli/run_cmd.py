"""`sslray run CONFIG`: one pre-training run on Ray Train workers."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sslray.cli.common import add_config_arguments, add_ray_arguments, guarded
from sslray.cli.ray_setup import check_fits_locally, start_ray
from sslray.cli.validate_cmd import describe

if TYPE_CHECKING:
    from sslray.config import RunConfig


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "run",
        help="pre-train one model on Ray Train workers",
        description="Pre-train as CONFIG says on Ray Train workers, evaluate with kNN, and write "
        "config.json, checkpoints and result.json into the run directory.",
        epilog="examples:\n"
        "  sslray run fmnist_moco_v2 --workers 2\n"
        "  sslray run fmnist_moco_v2 --smoke\n"
        "  sslray run my.yaml --set train.epochs=50 --set method.temperature=0.1 --output runs/x",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(p)
    p.add_argument("--workers", type=int, default=None,
                   help="Ray Train workers (overrides resources.workers; 0 = local mode)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny subset, 1 epoch: checks the whole path in seconds "
                   "(writes runs/<name>-smoke, replaced on every smoke run)")
    p.add_argument("--output", default=None, help="run directory (default: runs/<config name>)")
    add_ray_arguments(p, resume_help="continue the run in --output from its latest checkpoint",
                      overwrite_help="delete an existing run directory and start again")
    p.set_defaults(func=guarded(run))


def prepare_run_dir(run_dir: Path, cfg: RunConfig, resume: bool, overwrite: bool) -> None:
    """Create the run directory; never overwrite a run without --resume or --overwrite."""
    cfg_file = run_dir / "config.json"
    if run_dir.exists() and any(run_dir.iterdir()):
        if overwrite:
            shutil.rmtree(run_dir)
        elif resume:
            if cfg_file.is_file():
                old = json.loads(cfg_file.read_text()).get("config", {})
                new = json.loads(cfg.to_json())
                changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
                if changed:
                    raise FileExistsError(
                        f"{run_dir}: --resume with a different config (sections differ: "
                        f"{', '.join(changed)}); use the original config or a new --output"
                    )
        else:
            raise FileExistsError(
                f"{run_dir} already holds a run. Use --resume to continue it, --overwrite to "
                f"replace it, or --output to pick another directory."
            )
    elif resume:
        raise FileExistsError(f"{run_dir}: nothing to resume (no such run directory)")
    run_dir.mkdir(parents=True, exist_ok=True)
    from sslray.pipeline import write_config
    from sslray.storage import location

    write_config(cfg, location(run_dir))  # the same writer every run directory gets


def run(args: argparse.Namespace) -> int:
    from sslray.config import load_config

    overrides = list(args.overrides)
    if args.workers is not None:
        overrides.append(f"resources.workers={args.workers}")
    cfg = load_config(args.config, overrides)
    if args.smoke:
        cfg = cfg.smoke()
    run_dir = Path(args.output or Path("runs") / (cfg.name + ("-smoke" if args.smoke else "")))
    res = cfg.resources
    if res.workers > 0:
        check_fits_locally(
            args.address, res.workers * res.cpus_per_worker,
            res.workers * res.gpus_per_worker if res.use_gpu else 0.0,
            f"resources.workers={res.workers} x (cpus_per_worker={res.cpus_per_worker:g}"
            + (f", gpus_per_worker={res.gpus_per_worker:g})" if res.use_gpu else ")"),
            "lower resources.workers / cpus_per_worker (--workers N), or 0 for local mode")
    prepare_run_dir(run_dir, cfg, args.resume, args.overwrite or args.smoke)
    print(describe(cfg))
    print(f"run dir:  {run_dir}", flush=True)
    start = time.perf_counter()
    start_ray(args.address, cfg.resources.workers)
    from sslray.pipeline import run_any
    from sslray.storage import location

    metrics = run_any(cfg, location(run_dir))
    wall = time.perf_counter() - start
    print(summary(cfg, metrics, wall))
    return 0 if metrics else 1


def summary(cfg: RunConfig, metrics: dict[str, float], wall_s: float) -> str:
    lines = [f"done in {wall_s / 60:.1f} min ({wall_s:.0f} s wall)"]
    columns = [(k, title) for k, title in (("eval/knn_top1", "kNN top-1"),
                                           ("eval/linear_fast_top1", "linear (fast) top-1"),
                                           ("eval/linear_paper_top1", "linear (paper) top-1"))
               if k in metrics]
    if not columns:
        return lines[0]
    e = cfg.eval
    lines.append(f"{cfg.data.dataset} test split; kNN k={e.knn_k} T={e.knn_temperature}")
    lines.append(f"  {'':<12}" + "".join(f"{title:>22}" for _, title in columns))
    rows: list[tuple[str, str]] = [(cfg.method.name, "")]
    if "eval/knn_top1_init" in metrics:
        rows.append(("random init", "_init"))
    for label, suffix in rows:
        cells = "".join(f"{metrics[k + suffix]:>22.4f}" if k + suffix in metrics else f"{'-':>22}"
                        for k, _ in columns)
        lines.append(f"  {label:<12}{cells}")
    if len(rows) == 2 and "eval/knn_top1" in metrics:
        gain = metrics["eval/knn_top1"] - metrics["eval/knn_top1_init"]
        lines.append(f"  pre-training adds {gain * 100:+.1f} kNN points over random init")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(1)
