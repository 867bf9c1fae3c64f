"""`python -m analysis SWEEP_DIR`: a finished sweep directory -> paper-style tables and figures.

Writes all three formats (so the paper, the README and a spreadsheet read the same numbers) and
prints one of them. Bad input (no such directory, unknown spec, a spec key typo) is one line on
stderr and exit code 2, before anything is written. `sslray table` reuses `add_arguments` and
`run`, so both commands behave identically.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from analysis.figure import save_figure
from analysis.load import SweepDirError, load_sweep, load_sweep_meta
from analysis.render import RENDERERS
from analysis.spec import SpecError, list_specs, load_spec
from analysis.table import TableError, build_table
from sslray.atomic_file import atomic_write

__all__ = ["EXIT_BAD_INPUT", "add_arguments", "build_parser", "main", "run"]

EXIT_BAD_INPUT = 2
USER_ERRORS = (SweepDirError, SpecError, TableError)
EPILOG = """\
examples:
  python -m analysis results/moco_momentum
  python -m analysis results/quickstart --spec quickstart --format tex --out paper/
  aws s3 sync s3://bucket/sweeps/moco_momentum ./mm && python -m analysis ./mm

writes <out or SWEEP_DIR>/tables/<spec>.{md,tex,csv} and, when the spec draws one,
<out or SWEEP_DIR>/figures/<spec>.{png,svg}; prints the chosen format to stdout.
shipped specs: """


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of the table command (shared with `sslray table`)."""
    parser.add_argument(
        "sweep_dir", metavar="SWEEP_DIR",
        help="a finished sweep directory on local disk (sync a bucket first)",
    )
    parser.add_argument(
        "--spec", metavar="NAME|PATH", default=None,
        help="table spec: a shipped name or a YAML path (default: sweep.json's 'table')",
    )
    parser.add_argument(
        "--format", dest="fmt", choices=sorted(RENDERERS), default="md",
        help="format printed to stdout (all three are written); default md",
    )
    parser.add_argument(
        "--out", metavar="DIR", default=None,
        help="output directory for tables/ and figures/ (default: SWEEP_DIR)",
    )


def build_parser(prog: str = "python -m analysis") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Build paper-style tables (Markdown, LaTeX, CSV) and figures from a finished "
        "sslray sweep directory. Needs neither torch nor Ray.",
        epilog=EPILOG + ", ".join(list_specs()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Execute a parsed command line; returns the exit code (2 for bad input)."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            df = load_sweep(args.sweep_dir)
            meta = load_sweep_meta(args.sweep_dir)
        for w in caught:
            print(f"analysis: warning: {w.message}", file=sys.stderr)
        spec_name = args.spec or meta.get("table")
        if not spec_name:
            raise SpecError("", [f"{args.sweep_dir}/sweep.json names no 'table'; pass --spec "
                                 f"NAME|PATH (shipped specs: {', '.join(list_specs())})"])
        spec = load_spec(spec_name)
        table = build_table(df, spec, meta)
        # Render everything before writing anything: a failure leaves old outputs untouched.
        texts = {fmt: render(table) for fmt, render in RENDERERS.items()}
    except USER_ERRORS as exc:
        print(f"analysis: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT

    if table.trials.empty:
        print(f"analysis: warning: no trial of {args.sweep_dir} is aggregated (none finished); "
              "the table has empty cells", file=sys.stderr)
    out = Path(args.out) if args.out else Path(args.sweep_dir)
    try:
        written = []
        for fmt, text in texts.items():
            path = out / "tables" / f"{spec.name}.{fmt}"
            atomic_write(path, text.encode())  # an interrupted run never leaves half a table
            written.append(path)
        written += save_figure(table, out / "figures")
    except OSError as exc:
        print(f"analysis: error: cannot write under {out}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    sys.stdout.write(texts[args.fmt].rstrip("\n") + "\n")
    sys.stdout.flush()
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m analysis`; returns the exit code."""
    return run(build_parser().parse_args(argv))
