"""Run a sweep on the Ray cluster this machine is the head of: the script for `ray submit`.

    ray submit cluster/aws.yaml cluster/run_sweep.py sweeps/x.yaml [--smoke] [--resume]

`ray submit` copies this ONE file to the head and runs it there with `python`; the project is on
the head already (file_mounts put the repository at ~/sslray, setup_commands `pip install -e` it).
This script finds that directory, works from it (so `sweeps/x.yaml` and relative config paths
mean the same as on your laptop) and runs `sslray sweep SWEEP --address auto`: the sweep attaches
to the running cluster, and its results go to the sweep file's `storage:` (a bucket on a cloud).
Other flags (--smoke, --resume, --overwrite, --no-table) are passed on to `sslray sweep`.

Only the standard library is imported before sslray, so a head without the project says so.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent


def project_candidates(explicit: str | None) -> list[Path]:
    """Where the repository may be: --project, $SSLRAY_PROJECT, next to this file, ~/sslray, cwd."""
    raw = [explicit, os.environ.get("SSLRAY_PROJECT"), str(HERE.parent), "~/sslray", "."]
    out: list[Path] = []
    for r in raw:
        if r:
            p = Path(r).expanduser().resolve()
            if p not in out:
                out.append(p)
    return out


def find_project(explicit: str | None) -> Path:
    """The first candidate that is an sslray checkout (it has sweeps/ and sslray/)."""
    for p in project_candidates(explicit):
        if (p / "sweeps").is_dir() and (p / "sslray" / "__init__.py").is_file():
            return p
    tried = ", ".join(str(p) for p in project_candidates(explicit))
    raise SystemExit(f"run_sweep: no sslray checkout found (tried {tried}); the cluster YAML's "
                     f"file_mounts put it at ~/sslray: run `ray up` from the repository root, or "
                     f"pass --project DIR")


def import_cli(project: Path) -> Callable[[list[str] | None], int]:
    try:
        # The CLI imports its dependencies when a command runs (a fast --help), so import what
        # every sweep runs on here: the config models (torch, torchvision) and the table (pandas).
        import analysis.cli  # noqa: F401
        import sslray.config  # noqa: F401
        from sslray.cli.main import main
    except ImportError as exc:
        raise SystemExit(
            f"run_sweep: sslray is not installed in this Python ({sys.executable}): {exc}.\n"
            f"The cluster's setup_commands install it (`cd ~/sslray && pip install -c "
            f"constraints.txt -e .`); run `ray up` again, or install it by hand in {project}."
        ) from None
    return main


def resolve_sweep(sweep: str, project: Path, cwd: Path) -> str:
    """A path as given (relative to where the script was started or to the project), else a
    sweep name that sslray looks up in sweeps/."""
    for base in (cwd, project):
        candidate = (base / sweep).expanduser()
        if candidate.is_file():
            return str(candidate.resolve())
    return sweep


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="run_sweep.py",
        description="Run a sweep file on this Ray cluster (the script for `ray submit`).",
        epilog="example: ray submit cluster/aws.yaml cluster/run_sweep.py "
        "sweeps/methods_imagenet.yaml --smoke\nother flags go to `sslray sweep` "
        "(--smoke, --resume, --overwrite, --no-table)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("sweep", help="sweep YAML (relative to the project) or a name in sweeps/")
    parser.add_argument("--address", default="auto",
                        help="Ray address (default: auto, the cluster this head runs)")
    parser.add_argument("--project", default=None,
                        help="the sslray checkout (default: ~/sslray, where file_mounts put it)")
    args, rest = parser.parse_known_args(argv)
    cwd = Path.cwd()
    project = find_project(args.project)
    sslray_main = import_cli(project)
    sweep = resolve_sweep(args.sweep, project, cwd)
    os.chdir(project)  # relative base configs, runs/aim: as on the laptop
    cmd = ["sweep", sweep, "--address", args.address, *rest]
    print(f"run_sweep: sslray {' '.join(cmd)}  (in {project})", flush=True)
    return int(sslray_main(cmd))


if __name__ == "__main__":
    sys.exit(main())
