"""Shared CLI pieces: the config arguments, and how bad input is reported (stderr, exit 2).

The command modules import torch, Ray and the config models inside their `run`, never at the
top: `sslray --help` and `sslray COMMAND --help` build the parser without them (measured on the
AVX2 host: 1.9 s instead of 7.2 s; tests/cli/test_cli.py pins that torch and Ray stay out)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

EXIT_BAD_INPUT = 2


def user_errors() -> tuple[type[Exception], ...]:
    """The errors that mean bad input (exit 2 with the message), not a bug (a traceback)."""
    from sslray.config import ConfigError
    from sslray.data.datasets import DatasetError
    from sslray.training.checkpoint import CheckpointError

    return (ConfigError, DatasetError, CheckpointError, FileExistsError)


def guarded(fn: Callable[[Any], int]) -> Callable[[Any], int]:
    def run(args: Any) -> int:
        errors = user_errors()
        try:
            return fn(args)
        except errors as exc:
            print(f"sslray: error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT

    return run


def add_ray_arguments(parser: Any, resume_help: str, overwrite_help: str) -> None:
    """--address and the exclusive --resume / --overwrite of the commands that start work."""
    parser.add_argument("--address", default=None,
                        help="Ray cluster address, e.g. auto (default: start a local Ray)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help=resume_help)
    mode.add_argument("--overwrite", action="store_true", help=overwrite_help)


def add_config_arguments(parser: Any) -> None:
    """CONFIG and --set, the same for every command that reads a run config."""
    parser.add_argument(
        "config", help="a run config YAML file or a built-in config name (see `sslray ls`)"
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value by dotted key, e.g. train.epochs=10 (repeatable)",
    )
