"""`sslray eval RUN_DIR`: evaluate a finished run's encoder again (other probes or datasets)."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from sslray.cli.common import guarded


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a finished run's encoder (kNN, linear probes, transfer, fine-tuning, "
        "detection)",
        description="Rebuild the model of RUN_DIR from its config.json, load its final.pt (or "
        "its latest checkpoint), and evaluate the frozen encoder as the run's eval section says, "
        "changed by --set eval.*=... (and Jigsaw++'s method.probe, method.probe_grid: what the "
        "probes read); prints the metrics and appends them to RUN_DIR/eval.json.",
        epilog="examples:\n"
        "  sslray eval runs/fmnist_moco_v2\n"
        "  sslray eval runs/fmnist_moco_v2 --set eval.linear_paper_epochs=100 --init\n"
        "  sslray eval runs/sweeps/quickstart/<trial dir> --set 'eval.transfer=[digits]'\n"
        "  sslray eval runs/fmnist_moco_v2 --set eval.finetune.epochs=5 --init\n"
        "  sslray eval runs/fmnist_moco_v2 --set eval.detection.n_train=1000 "
        "--set eval.detection.epochs=3\n"
        "  sslray eval runs/fmnist_jigsaw_pp --set method.probe=image --init\n"
        "  sslray eval runs/fmnist_jigsaw_pp --set eval.layer=stage-2 --init   "
        "# the probes read an earlier layer",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", help="a run directory (sslray run --output, or a sweep trial's "
                   "train-<id>/), local or a URI")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="change an eval.* value, e.g. eval.knn_k=20, or method.probe / "
                   "method.probe_grid (repeatable)")
    p.add_argument("--init", action="store_true",
                   help="also evaluate the same architecture at random init (suffix _init)")
    p.set_defaults(func=guarded(run))


# Method keys that change what the probes read, never the trained weights (Jigsaw++'s tile grid)
PROBE_KEYS = ("method.probe", "method.probe_grid")


def run(args: argparse.Namespace) -> int:
    import pyarrow.fs as pafs

    from sslray.config import ConfigError, apply_overrides, validate_raw
    from sslray.storage import location
    from sslray.training.checkpoint import CheckpointError

    loc = cfg_loc = location(args.run_dir)
    runs = [i.base_name for i in loc.fs.get_file_info(pafs.FileSelector(loc.path))
            if i.base_name.startswith("train-")] if loc.exists() else []
    if not loc.exists("final.pt") and len(runs) == 1:
        loc = loc.child(runs[0])  # a sweep trial directory: its Train run
        cfg_loc = loc if loc.exists("config.json") else cfg_loc
    if not cfg_loc.exists("config.json"):
        raise CheckpointError(f"{args.run_dir}: no config.json here: not an sslray run directory")
    bad = [o for o in args.overrides if not o.strip().startswith("eval.")
           and o.split("=", 1)[0].strip() not in PROBE_KEYS]
    if bad:
        raise ConfigError("--set", [f"{o}: only eval.* keys (and {', '.join(PROBE_KEYS)}) can "
                                    "change for a trained model" for o in bad])
    overrides = list(args.overrides)
    given = {k.strip(): v.strip() for k, _, v in (o.partition("=") for o in overrides)}
    if given.get("method.probe") == "image" and "method.probe_grid" not in given:
        overrides.append("method.probe_grid=null")  # the grid belongs to the tile probe
    raw = json.loads(cfg_loc.read_text("config.json"))["config"]
    cfg = validate_raw(apply_overrides(raw, overrides), source=f"{cfg_loc.uri}/config.json")
    from sslray.training.evaluate import evaluate_run

    start = time.perf_counter()
    metrics = evaluate_run(cfg, loc, at_init=args.init)
    wall = time.perf_counter() - start
    e = cfg.eval
    print(f"{cfg.name} ({cfg.method.name}), epoch {metrics['epoch']:.0f}; kNN k={e.knn_k} "
          f"T={e.knn_temperature}; {wall:.0f} s")
    for key in sorted(metrics):
        if key != "epoch":
            print(f"  {key:<40} {metrics[key]:.4f}")
    loc.append_line(json.dumps({"eval": json.loads(e.model_dump_json()), "set": overrides,
                                **metrics},
                               sort_keys=True), "eval.json")
    return 0
