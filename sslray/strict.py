"""Strict config files: YAML as users write it, validated by pydantic, errors as dotted keys.

One toolkit for every file a user writes (run configs, sweep files, analysis table specs):
`read_yaml` reads a mapping with clear errors (malformed YAML with line and column, an unreadable
file, a top level that is not a mapping); `validate` turns a pydantic ValidationError into one
`ConfigError` whose `problems` are 'dotted.path: message' lines, with a "did you mean" for every
unknown key (house rule 8). Only the standard library, PyYAML and pydantic: `analysis`, which
imports neither torch nor Ray, uses it too.
"""

from __future__ import annotations

import difflib
import json
import re
import types
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.fields import FieldInfo

__all__ = [
    "ConfigError",
    "FieldError",
    "StrictModel",
    "apply_overrides",
    "format_validation_error",
    "read_yaml",
    "set_path",
    "validate",
    "yaml_load",
]

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Frozen, strict config node: unknown keys are errors, nothing mutates it (house rule 2)."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class ConfigError(ValueError):
    """A file that cannot be used; `problems` lists 'dotted.path: what is wrong' lines."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(self.describe())

    def describe(self) -> str:
        """The message: the source, then one problem a line."""
        lines = "\n".join(f"  - {p}" for p in self.problems)
        return f"invalid config {self.source}:\n{lines}"

    def __reduce__(self) -> tuple[Any, ...]:  # picklable (Ray ships errors between processes)
        return type(self), (self.source, self.problems)


class FieldError(ValueError):
    """Raised in a model validator: a problem of the key `key` (dotted, relative to the model),
    so the message names that key rather than the model it sits in."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


# --- YAML ----------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """yaml.SafeLoader that reads `1e-3` as a float (PyYAML's YAML 1.1 rules need `1.0e-3`)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def yaml_load(stream: Any) -> Any:
    """Safe YAML with floats as users write them (`1e-3`); no Python object construction."""
    return yaml.load(stream, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file's top-level mapping (an empty file: {}); ConfigError naming the file."""
    try:
        with open(path) as f:
            raw = yaml_load(f)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(str(path), [f"malformed YAML{where}: {exc}"]) from None
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read: {exc.strerror}"]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(str(path), [f"(top level): expected a mapping, got {type(raw).__name__}"])
    return raw


# --- dotted-key overrides ------------------------------------------------------------------------


def set_path(raw: dict[str, Any], key: str, value: Any, source: str = "--set") -> None:
    """Set `raw[a][b][c] = value` for key `a.b.c`, creating sections; in place. A section that
    is null (an optional section switched off, e.g. `eval.finetune: null` in a run's
    config.json) becomes a new one, so `eval.finetune.epochs=3` switches it on."""
    node = raw
    parts = key.strip().split(".")
    for i, part in enumerate(parts[:-1]):
        if node.get(part) is None:
            node[part] = {}
        child = node[part]
        if not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            raise ConfigError(source, [f"{key}: '{where}' is a value, not a section"])
        node = child
    node[parts[-1]] = value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b=c` overrides to a raw config dict (values parsed as YAML: 3, 0.1, [1, 2])."""
    out = json.loads(json.dumps(raw))  # deep copy; the input is never mutated
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError("--set", [f"'{item}': expected key=value, e.g. train.epochs=10"])
        try:
            value = yaml_load(text) if text.strip() else ""
        except yaml.YAMLError as exc:
            problem = f"{key}: value {text!r} is not valid YAML ({exc})"
            raise ConfigError("--set", [problem]) from exc
        set_path(out, key, value)
    return out


# --- validation errors as dotted keys ------------------------------------------------------------


def validate(
    model: type[M],
    raw: Any,
    source: str = "<dict>",
    *,
    error: type[ConfigError] = ConfigError,
    context: dict[str, Any] | None = None,
    registries: Mapping[str, Iterable[str]] | None = None,
) -> M:
    """`model` validated from a raw mapping; `error` (a ConfigError) lists every problem.

    `registries`: see `format_validation_error`.
    """
    if not isinstance(raw, dict):
        raise error(source, [f"(top level): expected a mapping, got {type(raw).__name__}"])
    try:
        return model.model_validate(raw, context=context)
    except ValidationError as err:
        raise error(source, format_validation_error(err, model, raw, registries)) from None


def format_validation_error(
    err: ValidationError,
    model: type[BaseModel],
    raw: Any,
    registries: Mapping[str, Iterable[str]] | None = None,
) -> list[str]:
    """'dotted.path: message' lines, list items as `[i]`; an unknown key gets a "did you mean".

    A discriminated union's tag, which pydantic puts in the location (`method.moco.x`), is
    left out (`method.x`), and the keys suggested are those of the member the raw input names.
    `registries`: dotted path of a tag -> the registered names, so a wrong tag reads
    `method.name: unknown method 'simclr' (registered: byol, moco)`.
    """
    problems = []
    for e in err.errors():
        loc, owner, disc = _locate(model, e["loc"], raw)
        cause = (e.get("ctx") or {}).get("error")
        if isinstance(cause, FieldError):
            loc.append(cause.key)
        if e["type"] in ("union_tag_invalid", "union_tag_not_found") and disc:
            loc.append(disc)
        path = _dotted(loc)
        value = e.get("input")
        if path in (registries or {}) and e["type"] in ("union_tag_invalid", "literal_error"):
            noun = path.rsplit(".", 2)[-2] if "." in path else path
            known = ", ".join(sorted((registries or {})[path]))
            tag = (e.get("ctx") or {}).get("tag", value)
            problems.append(f"{path}: unknown {noun} {tag!r} (registered: {known})")
        elif e["type"] == "extra_forbidden":
            hint = ""
            if owner is not None:
                fields = list(_fields(owner))
                close = difflib.get_close_matches(str(loc[-1]), fields, n=1)
                hint = (f" (did you mean '{close[0]}'?)" if close
                        else f" (known keys: {', '.join(sorted(fields))})")
            problems.append(f"{path}: unknown key{hint}")
        elif e["type"] in ("missing", "union_tag_not_found"):
            problems.append(f"{path}: required")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            shown = "" if isinstance(value, dict) else f" (got {value!r})"
            problems.append(f"{path}: {msg}{shown}")
    return problems


def _dotted(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _fields(model: type[BaseModel]) -> dict[str, FieldInfo]:
    """A model's fields by the key a file spells (the alias where one is set)."""
    return {f.alias or name: f for name, f in model.model_fields.items()}


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _unwrap(tp: Any) -> Any:
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    return tp


def _locate(
    model: type[BaseModel], loc: Sequence[Any], raw: Any
) -> tuple[list[Any], type[BaseModel] | None, str | None]:
    """Walk a pydantic error location through the model's types.

    Returns the location without discriminated-union tags, the model in which its last part
    was looked up as a key (None: a dict key or list index), and the discriminator of a union
    the location ends at.
    """
    path: list[Any] = []
    owner: type[BaseModel] | None = None
    tp: Any = model
    disc: str | None = None
    node: Any = raw
    for part in loc:
        tp = _unwrap(tp)
        if get_origin(tp) in (Union, types.UnionType):
            members = [_unwrap(m) for m in get_args(tp) if m is not type(None)]
            if disc:
                by_tag = {t: m for m in members if _is_model(m) and disc in _fields(m)
                          for t in get_args(_fields(m)[disc].annotation)}
                if part in by_tag:  # pydantic's location names the member: not a key
                    tp, disc = by_tag[part], None
                    continue
                tp = by_tag.get(node.get(disc)) if isinstance(node, dict) else None
            else:
                models = [m for m in members if _is_model(m)]
                tp = models[0] if len(models) == 1 else None
            disc = None
        path.append(part)
        owner = None
        if _is_model(tp):
            owner = tp
            field = _fields(tp).get(str(part))
            tp = field.annotation if field else None
            disc = field.discriminator if field and isinstance(field.discriminator, str) else None
        elif get_origin(tp) is dict and get_args(tp):
            tp = get_args(tp)[1]
        elif get_origin(tp) in (list, tuple) and get_args(tp):
            args = [a for a in get_args(tp) if a is not Ellipsis]
            tp = args[0] if len(args) == 1 else (args[part] if isinstance(part, int)
                                                  and 0 <= part < len(args) else None)
        else:
            tp = None
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            node = None
    return path, owner, disc
