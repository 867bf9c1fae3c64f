"""How every command reports bad input: one clear message on stderr, exit code 2."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from sslray.config import ConfigError
from sslray.data.datasets import DatasetError
from sslray.training.checkpoint import CheckpointError

EXIT_BAD_INPUT = 2
USER_ERRORS = (ConfigError, DatasetError, CheckpointError, FileExistsError)


def guarded(fn: Callable[[Any], int]) -> Callable[[Any], int]:
    def run(args: Any) -> int:
        try:
            return fn(args)
        except USER_ERRORS as exc:
            print(f"sslray: error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT

    return run
