"""`sslray` command line: thin; one file per command."""

from __future__ import annotations

import argparse
import sys

from sslray.cli import eval_cmd, ls_cmd, run_cmd, sweep_cmd, table_cmd, validate_cmd

COMMANDS = {
    "ls": ls_cmd, "validate": validate_cmd, "run": run_cmd, "eval": eval_cmd,
    "sweep": sweep_cmd, "table": table_cmd,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sslray",
        description="Self-supervised pre-training on Ray Train.",
        epilog="example: sslray run fmnist_moco_v2 --workers 2",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS.values():
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
