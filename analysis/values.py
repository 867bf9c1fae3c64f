"""Config values as comparable keys and as table labels.

YAML gives `0.99`, `true` or `4096`; the trials frame holds float64 0.99, numpy bools, or 4096.0
once a column has a gap. Comparing through `norm_value` makes a spec's `row_order`, `row_names`,
`filter` and `paper` match regardless of those type differences.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

__all__ = ["fmt_value", "lookup", "norm_value"]


def norm_value(value: Any) -> Any:
    """A comparable, sortable key: ("b", bool) < ("n", float) < ("s", str); None for missing."""
    if value is None:
        return None
    if isinstance(value, bool | np.bool_):
        return ("b", bool(value))
    if isinstance(value, numbers.Number):
        number = float(value)  # type: ignore[arg-type]
        return None if math.isnan(number) else ("n", number)
    return ("s", str(value))


def fmt_value(value: Any) -> str:
    """A config value as a label: 0.99 -> "0.99", 4096.0 -> "4096", True -> "true"."""
    if isinstance(value, bool | np.bool_):
        return str(bool(value)).lower()
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        number = float(value)
        return str(int(number)) if number.is_integer() else repr(number)
    if isinstance(value, tuple):
        return "(" + ", ".join(fmt_value(v) for v in value) + ")"
    return str(value)


def lookup(mapping: dict[Any, Any], value: Any) -> Any:
    """mapping[value], tolerant of YAML/pandas type differences; a key may also be the value's
    printed form ("0.99"). None when absent."""
    key = norm_value(value)
    for k, v in mapping.items():
        if norm_value(k) == key or str(k) == fmt_value(value):
            return v
    return None
