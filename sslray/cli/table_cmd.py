"""`sslray table SWEEP_DIR`: the paper-style table of a finished sweep (the analysis package)."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> None:
    from analysis import cli as analysis_cli

    p = sub.add_parser(
        "table",
        help="build a finished sweep's table (Markdown, LaTeX, CSV) and figure",
        description="Read a sweep directory (local, or a synced copy of its bucket) and render "
        "the table its sweep file names. Same as `python -m analysis`, which needs neither "
        "torch nor ray.",
        epilog="examples:\n"
        "  sslray table runs/sweeps/quickstart\n"
        "  sslray table runs/sweeps/moco_momentum --format tex\n"
        "  sslray table runs/sweeps/my_sweep --spec moco_momentum --out paper/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    analysis_cli.add_arguments(p)
    p.set_defaults(func=analysis_cli.run)
