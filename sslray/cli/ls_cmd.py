"""`sslray ls`: registered methods and built-in run configs."""

from __future__ import annotations

import argparse
from typing import Any

from sslray.cli.common import guarded


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "ls",
        help="list registered methods, built-in configs and sweep files",
        description="List the registered SSL methods and the run configs shipped with sslray.",
        epilog="example: sslray ls",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=guarded(run))


def run(args: argparse.Namespace) -> int:
    from sslray.config import builtin_configs, read_yaml
    from sslray.methods import METHODS

    print("methods:")
    for name, cls in METHODS.items():
        doc = (cls.__module__ and __import__(cls.__module__, fromlist=["x"]).__doc__ or "").strip()
        print(f"  {name:<18} {doc.splitlines()[0] if doc else ''}")
    print("configs (sslray run <name>):")
    for name, path in builtin_configs().items():
        raw = read_yaml(path)
        desc = raw.get("name", name)
        print(f"  {name:<18} method={raw.get('method', {}).get('name', 'moco')} "
              f"data={raw.get('data', {}).get('dataset', 'fashion_mnist')} ({desc})")
    from sslray.sweep.spec import SWEEPS_DIR

    sweeps = sorted(SWEEPS_DIR.glob("*.yaml"))
    if sweeps:
        print(f"sweeps (sslray sweep <name>; in {SWEEPS_DIR}):")
        for path in sweeps:
            raw = read_yaml(path)
            print(f"  {path.stem:<18} table={raw.get('table')}")
    return 0
