"""Sweep files: one YAML -> a list of validated trials, before Ray starts.

A sweep file names a base run config (or labelled variants, each with its own base), dotted-key
overrides, a grid over dotted keys, seeds, a scheduler, the resources of every trial, where the
results go, and the analysis table it feeds. `expand()` builds every trial's `RunConfig` and
collects every problem with the trial and the dotted key, so a typo in trial 37 of 40 is found
on the laptop and not after a cluster-hour.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from sslray.config import RunConfig, resolve_config_path, validate_raw
from sslray.pipeline import is_pipeline, source_config
from sslray.strict import (
    ConfigError,
    FieldError,
    StrictModel,
    apply_overrides,
    read_yaml,
    set_path,
    validate,
)

SWEEPS_DIR = Path(__file__).resolve().parents[2] / "sweeps"  # the repository's sweep files


class SchedulerSpec(StrictModel):
    name: Literal["none", "asha"] = "none"
    metric: str = "eval/knn_top1"  # the kNN monitor: cheap, every epoch with eval.every_n_epochs=1
    mode: Literal["max", "min"] = "max"
    grace_period: int = Field(default=1, ge=1)  # epochs before ASHA may stop a trial
    reduction_factor: float = Field(default=2.0, gt=1)  # ASHA (Li et al. 2020) default eta: 2-4


class SweepResources(StrictModel):
    """Resources of every trial; they replace each trial config's `resources` values."""

    workers: int = Field(default=1, ge=1)  # Ray Train workers per trial
    use_gpu: bool = False
    cpus_per_worker: float = Field(default=1.0, gt=0)
    gpus_per_worker: float = Field(default=1.0, ge=0)
    # Trials at once; None: as many as the cluster's GPUs (or CPUs) hold (Ray Tune docs:
    # max_concurrent_trials = cluster GPUs // GPUs per trial), computed when the sweep starts.
    max_concurrent_trials: int | None = Field(default=None, ge=1)
    # The trial driver's sliver of a CPU: the Train workers reserve their own bundles, and a
    # whole-CPU driver per trial deadlocks small clusters
    # (docs/ray.md#nested-resources-and-deadlock).
    driver_cpus: float = Field(default=0.01, gt=0)
    # A custom resource only safe (non-spot) nodes offer, e.g. the head of cluster/aws.yaml:
    # trial drivers then never land on a node that can be preempted (docs/ray.md, same section).
    driver_resource: str | None = None
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"



Grid = dict[str, list[Any]]


class Variant(StrictModel):
    base: str | dict[str, Any] | None = None  # None: the sweep's base
    set: dict[str, Any] = {}  # dotted key -> value, applied after the sweep's `set`
    grid: Grid | None = None  # this variant's own grid (replaces the sweep's `grid`)
    seeds: list[int] | None = Field(default=None, min_length=1)  # replaces the sweep's `seeds`


class SweepSpec(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    base: str | dict[str, Any] | None = None  # built-in config name, YAML path, or a mapping
    set: dict[str, Any] = {}  # dotted key -> value for every trial
    variants: dict[str, Variant] = {}  # label -> a base and overrides (a table row each)
    # dotted key -> values; the cross product is swept. "a.b,c.d": [[1, 2], [3, 4]] links keys
    # (values move together: MoCo's end-to-end dictionary size is its batch size).
    grid: Grid = {}
    seeds: list[int] = Field(default=[0], min_length=1)
    scheduler: SchedulerSpec = SchedulerSpec()
    resources: SweepResources = SweepResources()
    storage: str = "runs/sweeps"  # a local path or a pyarrow URI (s3://bucket/prefix, gs://...)
    table: str | None = None  # the analysis table spec (analysis/specs/<table>.yaml)
    trial_retries: int = Field(default=0, ge=0)  # Tune restarts of a failed trial
    aim: bool = True  # track every trial with Ray's AimLoggerCallback (`aim up --repo <sweep>`)

    @model_validator(mode="after")
    def _shape(self) -> SweepSpec:
        if self.base is None and not self.variants:
            raise FieldError("base", "give a `base` run config, or `variants` each with a base")
        missing = [k for k, v in self.variants.items() if self.base is None and v.base is None]
        if missing:
            raise FieldError(f"variants.{missing[0]}.base", "every variant needs a `base` when "
                             "the sweep has none")
        if self.base is not None and self.variants and all(
                v.base is not None for v in self.variants.values()):
            raise FieldError("base", "is never used: every variant names its own base (remove "
                             "the top-level `base`, or drop `base` from a variant that should "
                             "use it)")
        grids = [("grid", self.grid)] + [(f"variants.{k}.grid", v.grid)
                                        for k, v in self.variants.items() if v.grid is not None]
        sets = [("set", self.set)] + [(f"variants.{k}.set", v.set)
                                      for k, v in self.variants.items()]
        for where, keys in [*grids, *sets]:
            if any("seed" in key.split(",") for key in keys):
                raise FieldError(f"{where}.seed", "a trial's seed comes from `seeds:` (the "
                                 "sweep's, or a variant's own `seeds: [0, 1]`)")
        for where, grid in grids:
            for key, values in grid.items():
                if not values:
                    raise FieldError(f"{where}.{key}", "an empty list gives no trials")
                width = len(key.split(","))
                if width > 1 and any(not isinstance(v, list) or len(v) != width for v in values):
                    raise FieldError(f"{where}.{key}", f"linked keys take lists of {width} "
                                     f"values, e.g. [[64, 64], [128, 128]]")
        return self


def grid_points(grid: Grid) -> list[dict[str, Any]]:
    """The cross product of a grid, linked keys ("a,b") expanded: [{"a": 1, "b": 2, ...}]."""
    points = []
    for combo in itertools.product(*grid.values()):
        point: dict[str, Any] = {}
        for key, value in zip(grid, combo):
            keys = [k.strip() for k in key.split(",")]
            point.update(zip(keys, value) if len(keys) > 1 else [(key, value)])
        points.append(point)
    return points


@dataclass(frozen=True)
class Trial:
    label: str
    grid: dict[str, Any]  # this trial's grid point
    seed: int
    config: RunConfig

    def describe(self) -> str:
        point = ", ".join(f"{k}={v}" for k, v in self.grid.items())
        return f"{self.label} seed={self.seed}" + (f" {point}" if point else "")

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "grid": self.grid, "seed": self.seed,
                "config": json.loads(self.config.to_json())}


def resolve_sweep_path(spec: str) -> Path:
    """A sweep YAML path, or the name of a file in the repository's sweeps/ folder."""
    path = Path(spec)
    if path.is_file():
        return path
    named = SWEEPS_DIR / f"{spec}.yaml"
    if named.is_file():
        return named
    known = ", ".join(sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml")))
    raise ConfigError(spec, [f"{spec}: no such sweep file (sweeps/: {known or 'none found'})"])


def is_sweep_file(raw: dict[str, Any]) -> bool:
    return any(k in raw for k in ("grid", "variants", "seeds", "base"))


def load_sweep(path: str | Path) -> SweepSpec:
    path = resolve_sweep_path(str(path))
    spec = validate(SweepSpec, read_yaml(path), str(path))
    return _with_paths_resolved(spec, path.parent)


def _with_paths_resolved(spec: SweepSpec, folder: Path) -> SweepSpec:
    """Relative base paths are relative to the sweep file (else a built-in name or cwd)."""

    def fix(base: Any) -> Any:
        if isinstance(base, str) and not Path(base).is_file() and (folder / base).is_file():
            return str(folder / base)
        return base

    variants = {k: v.model_copy(update={"base": fix(v.base)}) for k, v in spec.variants.items()}
    return spec.model_copy(update={"base": fix(spec.base), "variants": variants})


def _base_raw(base: str | dict[str, Any]) -> tuple[dict[str, Any], str]:
    if isinstance(base, dict):
        return json.loads(json.dumps(base)), "base"
    path = resolve_config_path(base)
    return read_yaml(path), str(path)


def expand(spec: SweepSpec, smoke: bool = False) -> list[Trial]:
    """Every trial of the sweep, validated; raises one ConfigError listing every problem."""
    variants = spec.variants or {spec.name: Variant()}
    trials: list[Trial] = []
    problems: list[str] = []
    for label, variant in variants.items():
        base = variant.base if variant.base is not None else spec.base
        assert base is not None  # SweepSpec checks: a base, or variants with one
        try:
            raw, source = _base_raw(base)
        except ConfigError as exc:
            key = f"variants.{label}.base" if variant.base is not None else "base"
            problems.extend(f"{key}: {p}" for p in exc.problems)
            continue
        for grid in grid_points(variant.grid if variant.grid is not None else spec.grid):
            for seed in variant.seeds or spec.seeds:
                where = f"trial {label} seed={seed}" + "".join(f" {k}={v}" for k, v in grid.items())
                try:
                    trial_raw = apply_overrides(raw, [])
                    for key, value in [*spec.set.items(), *variant.set.items(), *grid.items()]:
                        set_path(trial_raw, key, value, source=where)
                    res = spec.resources
                    trial_raw["seed"] = seed
                    trial_raw["name"] = f"{spec.name}-{label}"
                    trial_raw["resources"] = {
                        **trial_raw.get("resources", {}), "workers": res.workers,
                        "use_gpu": res.use_gpu, "cpus_per_worker": res.cpus_per_worker,
                        "gpus_per_worker": res.gpus_per_worker,
                        "placement_strategy": res.placement_strategy,
                    }
                    cfg = validate_raw(trial_raw, source=f"{source} ({where})")
                    if smoke:
                        cfg = cfg.smoke()
                    if is_pipeline(cfg):  # the pipeline's source config, checked now
                        source_config(cfg)
                except ConfigError as exc:
                    problems.extend(f"{where}: {p}" for p in exc.problems)
                    continue
                trials.append(Trial(label, grid, seed, cfg))
    if not problems:
        problems.extend(_scheduler_problems(spec, trials))
    if problems:
        raise ConfigError(spec.name, problems)
    return trials


def _scheduler_problems(spec: SweepSpec, trials: list[Trial]) -> list[str]:
    """ASHA compares trials on its metric at every epoch: the metric must exist every epoch."""
    sched = spec.scheduler
    if sched.name == "none" or not sched.metric.startswith(("eval/", "transfer/")):
        return []
    return [
        f"scheduler.metric: {sched.metric} is only reported every {t.config.eval.every_n_epochs} "
        f"epochs in trial {t.describe()}; ASHA needs it every epoch (set "
        f"eval.every_n_epochs: 1 in `set:`, or use a train/ metric)"
        for t in trials[:1]
        if t.config.eval.every_n_epochs != 1
    ]


def runs_in_trial(cfg: RunConfig, driver_resource: str | None = None) -> bool:
    """Whether a trial of `cfg` trains in its own Tune trial actor (sslray.sweep.trial): one
    worker, one stage. Not when the sweep pins trial drivers to safe nodes
    (`resources.driver_resource`, e.g. the head of cluster/aws.yaml): training belongs on the
    (spot) worker nodes, so Ray Train places it."""
    return cfg.resources.workers == 1 and not is_pipeline(cfg) and not driver_resource


@dataclass(frozen=True)
class TrialNeeds:
    """What one trial reserves. A trial that trains in its actor reserves its worker's devices
    only; a Ray Train trial adds its driver's sliver (`resources.driver_cpus`)."""

    cpus: float
    gpus: float
    in_actor: bool  # every trial of the sweep trains in its Tune trial actor

    def text(self, times: int = 1) -> str:
        return f"{self.cpus * times:g} CPU" + (f", {self.gpus * times:g} GPU" if self.gpus else "")


def trial_needs(spec: SweepSpec, trials: list[Trial]) -> TrialNeeds:
    """The largest reservation of any trial of the sweep (a cc variant runs Ray Train)."""
    res = spec.resources
    in_actor = all(runs_in_trial(t.config, res.driver_resource) for t in trials)
    return TrialNeeds(cpus=res.workers * res.cpus_per_worker + (0 if in_actor else res.driver_cpus),
                      gpus=res.workers * res.gpus_per_worker if res.use_gpu else 0.0,
                      in_actor=in_actor)


def max_concurrent(spec: SweepSpec, trials: list[Trial], cluster: dict[str, float]) -> int:
    """Trials that fit at once on a cluster of `cluster` resources (at least 1)."""
    res = spec.resources
    if res.max_concurrent_trials is not None:
        return res.max_concurrent_trials
    need = trial_needs(spec, trials)
    fits = cluster.get("CPU", 1.0) / need.cpus
    if need.gpus > 0:
        fits = min(fits, cluster.get("GPU", 0.0) / need.gpus)
    return max(1, math.floor(fits + 1e-9))


def _values(values: list[Any], shown: int = 8) -> str:
    """A grid's values, the middle elided past `shown` (a 500-value grid stays one line)."""
    if len(values) <= shown:
        return str(values)
    head, tail = ", ".join(map(str, values[:shown - 2])), ", ".join(map(str, values[-2:]))
    return f"[{head}, ..., {tail}] ({len(values)} values)"


def describe_sweep(spec: SweepSpec, trials: list[Trial]) -> str:
    res = spec.resources
    per = f"{res.workers} worker(s) x {res.cpus_per_worker:g} CPU"
    if res.use_gpu:
        per += f" + {res.gpus_per_worker:g} GPU"
    needs = trial_needs(spec, trials)
    need = needs.text()
    how = ("trains in its Tune trial actor" if needs.in_actor
           else f"Ray Train + {res.driver_cpus:g} CPU driver")
    labels = sorted({t.label for t in trials})
    epochs = sorted({t.config.train.epochs for t in trials})
    sched = spec.scheduler
    points = len({json.dumps(t.grid, sort_keys=True) for t in trials})
    lines = [
        f"sweep:     {spec.name} -> table {spec.table or '(none)'}",
        f"trials:    {len(trials)} = {len(labels)} variant(s), {points} grid point(s), "
        f"{len({t.seed for t in trials})} seed(s)",
        f"variants:  {', '.join(labels)}",
        *[f"grid:      {k} in {_values(v)}" for k, v in spec.grid.items()],
        *[f"grid:      ({name}) {k} in {_values(v)}" for name, var in spec.variants.items()
          for k, v in (var.grid or {}).items()],
        f"epochs:    {', '.join(map(str, epochs))}",
        f"per trial: {per} ({how}) = {need}",
        f"scheduler: {sched.name}" + (f" on {sched.metric} ({sched.mode}), grace "
                                      f"{sched.grace_period}" if sched.name == "asha" else ""),
        f"storage:   {spec.storage}/{spec.name}",
    ]
    conc = res.max_concurrent_trials
    if conc:
        lines.append(f"cluster:   {conc} trial(s) at once need {needs.text(conc)}")
    else:
        lines.append(f"cluster:   one trial needs {need}; all {len(trials)} at once need "
                     f"{needs.text(len(trials))} (trials queue on smaller clusters)")
    return "\n".join(lines)
