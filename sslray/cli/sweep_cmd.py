"""`sslray sweep SWEEP.yaml`: every trial of a sweep file on Ray Tune, then its table."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sslray.cli.common import add_ray_arguments, guarded
from sslray.cli.ray_setup import check_fits_locally, start_ray


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "sweep",
        help="run a sweep file's trials on Ray Tune and print its table",
        description="Expand and validate every trial of SWEEP (a YAML path, or the name of a "
        "file in sweeps/), run them as Ray Tune trials (each a Ray Train job), then build the "
        "analysis table the sweep names into <storage>/<name>/tables/.",
        epilog="examples:\n"
        "  sslray sweep quickstart       # sweeps/quickstart.yaml: 10 trials on 2 CPUs\n"
        "  sslray sweep sweeps/moco_momentum.yaml --smoke   # every trial shrunk to seconds\n"
        "  sslray sweep sweeps/moco_momentum.yaml --address auto   # on a running Ray cluster\n"
        "  sslray sweep sweeps/moco_momentum.yaml --resume         # finish a killed sweep",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("sweep", help="a sweep YAML file, or a name from sweeps/ (e.g. quickstart)")
    p.add_argument("--smoke", action="store_true",
                   help="shrink every trial (tiny subset, 1 epoch; stored as <name>-smoke)")
    add_ray_arguments(
        p, resume_help="restore the sweep from its storage and finish unfinished trials",
        overwrite_help="delete the sweep's directory and start again")
    p.add_argument("--no-table", action="store_true", help="do not build the table at the end")
    p.set_defaults(func=guarded(run))


def run(args: argparse.Namespace) -> int:
    from sslray.sweep.spec import describe_sweep, expand, load_sweep, trial_needs

    spec = load_sweep(args.sweep)
    trials = expand(spec, smoke=args.smoke)
    print(describe_sweep(spec, trials), flush=True)
    res, needs = spec.resources, trial_needs(spec, trials)
    check_fits_locally(args.address, needs.cpus, needs.gpus,
                       f"{args.sweep}: one trial (resources.workers={res.workers})",
                       "lower resources.workers / cpus_per_worker / driver_cpus in the sweep")
    start_ray(args.address, spec.resources.workers)
    from sslray.sweep.runner import run_sweep, sweep_location

    results = run_sweep(spec, trials, smoke=args.smoke, resume=args.resume,
                        overwrite=args.overwrite or args.smoke)
    errors = [r for r in results if r.error is not None]
    for r in errors:
        print(f"sslray: trial {r.path} failed: {type(r.error).__name__}: {r.error}",
              file=sys.stderr)
    loc = sweep_location(spec, args.smoke)
    table_rc = 0
    if spec.table and not args.no_table and loc.is_local:
        from analysis.cli import main as table_main

        table_rc = table_main([loc.path, "--spec", spec.table])
    elif spec.table and not loc.is_local:
        print(f"table: sync {loc.uri} to a local folder, then `sslray table FOLDER`")
    return 1 if errors else table_rc
