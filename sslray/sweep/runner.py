"""Run a sweep on Ray Tune: one function trainable per trial.

Layout of a sweep directory (`<storage>/<sweep name>/`; what `analysis.load_sweep` reads):

    sweep.json                   the sweep file, grid, seeds, git revision, library versions
    <trial dir>/config.json      the trial's resolved run config, derived values, label/grid/seed
    <trial dir>/result.json      Tune's JSON lines, one per epoch; the last holds the final metrics
    <trial dir>/error.txt        when the trial failed (Tune writes it)
    <trial dir>/train-<id>/      the trial's Ray Train run: checkpoints, its own result.json

A 1-worker trial trains in its trial actor (`sslray.sweep.trial`: no Ray Train worker group).
Other trials run Ray Train: Train V2 cannot be handed to the Tuner, so such a trial runs
`TorchTrainer.fit()` from inside the function trainable, the Train run named from the trial id
so a restored trial resumes it, and
`TuneReportCallback` turns each epoch report into a Tune result, so ASHA can stop trials per epoch
(docs/ray.md#train-inside-tune). Final evaluation happens inside the run: a trial that ASHA stops
never runs code after `fit()`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import ray
import ray.tune
from ray.tune.integration.ray_train import TuneReportCallback

from sslray.config import RunConfig
from sslray.pipeline import run_any, write_config
from sslray.provenance import git_revision, versions
from sslray.storage import Location, location
from sslray.sweep.spec import SweepSpec, Trial, max_concurrent, runs_in_trial, trial_needs
from sslray.sweep.trial import train_in_trial

# Set (unless already set) when a sweep starts, never at import. Tune saves its experiment state
# at most every 10 s by default; a driver killed in that window restarts trials from scratch on
# restore (docs/ray.md#tune_global_checkpoint_s); 2 s costs nothing. RAY_AIR_NEW_OUTPUT=0:
# Tune's classic status table, with the columns we choose (the newer output prints every config).
# The last: trials that train in their actor keep 2 Tune checkpoints (disk stays bounded), which
# makes Tune snapshot its state when a trial has checkpointed twice since the last snapshot and
# warn each time; on short epochs that is every few seconds (noise, a few ms each; measured in
# benchmarks/sweep_overhead.py).
TUNE_ENV = {"TUNE_GLOBAL_CHECKPOINT_S": "2", "RAY_AIR_NEW_OUTPUT": "0",
            "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"}

PROGRESS_COLUMNS = {"epoch": "epoch", "train/loss": "loss", "eval/knn_top1": "kNN"}
PROGRESS_ROWS = 20  # trial rows of the live status table; the trial counts per status head it


class SweepReporter(ray.tune.CLIReporter):
    """Tune's classic status table, every 30 s: the trial counts per status, the current best
    trial and at most PROGRESS_ROWS trial rows ("... 980 more trials not shown (978 PENDING,
    2 RUNNING)"), also when the sweep ends, where Tune's own reporter prints every trial (1,000
    lines for a 1,000-trial grid); the sweep's table follows instead."""

    def __init__(self) -> None:
        super().__init__(metric_columns=PROGRESS_COLUMNS,
                         parameter_columns={"trial/label": "variant", "trial/seed": "seed"},
                         max_progress_rows=PROGRESS_ROWS, max_error_rows=PROGRESS_ROWS,
                         print_intermediate_tables=True, max_report_frequency=30)

    def report(self, trials: list[Any], done: bool, *sys_info: str) -> None:
        super().report(trials, done and len(trials) <= PROGRESS_ROWS, *sys_info)


def sweep_location(spec: SweepSpec, smoke: bool) -> Location:
    return location(spec.storage).child(spec.name + ("-smoke" if smoke else ""))


def run_trial(config: dict[str, Any], table: list[dict[str, Any]]) -> None:
    """The function trainable: write config.json, then run the trial's (pipeline of) Train runs.
    `table`: every trial's label, grid point, seed and run config (`Trial.to_json`), shipped
    once through the object store (`ray.tune.with_parameters`)."""
    ctx = ray.tune.get_context()
    trial_id = ctx.get_trial_id()
    trial = table[config["trial_index"]]
    cfg = RunConfig.model_validate(trial["config"])
    trial_loc = location(config["sweep_uri"]).child(Path(ctx.get_trial_dir()).name)
    trial_loc.write_text(json.dumps({
        "config": json.loads(cfg.to_json()),
        "derived": cfg.derived(),
        "trial": {"id": trial_id, "label": trial["label"], "grid": trial["grid"],
                  "seed": trial["seed"]},
    }, indent=2, sort_keys=True), "config.json")
    run_loc = trial_loc.child(f"train-{trial_id}")
    # one worker: train here, in the trial actor (sslray.sweep.trial)
    if runs_in_trial(cfg, config.get("driver_resource")):
        write_config(cfg, run_loc)
        train_in_trial(cfg, run_loc)
    else:
        run_any(cfg, run_loc, callbacks=[TuneReportCallback()], verbose=False)


# The trial tables of the sweeps this driver runs, by sweep URI. Tune pickles every function it
# holds (the name creators, the resources function, sample_from) into each trial's state and its
# experiment snapshots: a closure over the table would put a copy of all trials into every
# trial's state. Module-level functions that look the table up here pickle as a name.
_TABLES: dict[str, list[dict[str, Any]]] = {}


def _table_of(config: Any) -> list[dict[str, Any]]:
    return _TABLES[config["sweep_uri"]]


def _trial_identity(spec: Any) -> dict[str, Any]:
    """sample_from: a trial's label, seed and grid point (its Tune config; what Aim shows)."""
    trial = _TABLES[spec.config.sweep_uri][spec.config.trial_index]
    return {"label": trial["label"], "seed": trial["seed"], "grid": trial["grid"]}


def _trial_bundle_of(config: dict[str, Any]) -> Any:
    return trial_bundle(_table_of(config)[config["trial_index"]], config["driver_cpus"],
                        config["driver_resource"])


def param_space(spec: SweepSpec, loc: Location, table: list[dict[str, Any]]) -> dict[str, Any]:
    """The Tuner's param space: the sweep's constants and one grid over the trial indices.

    What scales to 10,000s of trials: Tune deep-copies the unresolved param space (and its
    experiment spec) for every trial it creates, and serialises every trial's config into its
    experiment state, which it saves every few seconds and whenever a trial has checkpointed
    twice. A grid over the trials' run configs made the first O(trials^2) (110 s of driver CPU
    at 1,000 trials, hours at 10,000) and the state megabytes. So the grid is over indices, a
    trial's Tune config holds only its label, seed and grid point (what Aim and the status table
    show; looked up in `_TABLES` when Tune resolves it) and the run configs reach the trainable
    once, through the object store (`trainable()`). Registers `table` under the sweep's URI.
    """
    _TABLES[loc.uri] = table
    return {
        "sweep_uri": loc.uri,
        "driver_cpus": spec.resources.driver_cpus,
        "driver_resource": spec.resources.driver_resource,
        "trial_index": ray.tune.grid_search(list(range(len(table)))),
        "trial": ray.tune.sample_from(_trial_identity),
    }


def trainable(table: list[dict[str, Any]]) -> Any:
    """`run_trial` with the trial table (object store) and each trial's reservation."""
    with_table = ray.tune.with_parameters(run_trial, table=table)
    return ray.tune.with_resources(with_table, _trial_bundle_of)  # type: ignore[arg-type]


def trial_bundle(trial: dict[str, Any], driver_cpus: float,
                 driver_resource: str | None = None) -> Any:
    """The trial actor's reservation (Tune asks per trial): the worker's devices when the trial
    trains in its actor, else a driver sliver (Train reserves the rest)."""
    from ray.tune.execution.placement_groups import PlacementGroupFactory

    cfg = RunConfig.model_validate(trial["config"])
    res = cfg.resources
    bundle: dict[str, float] = (
        {"CPU": res.cpus_per_worker, **({"GPU": res.gpus_per_worker} if res.use_gpu else {})}
        if runs_in_trial(cfg, driver_resource) else {"CPU": driver_cpus})
    if driver_resource:
        bundle[driver_resource] = 0.01
    return PlacementGroupFactory([bundle])


# Tune names a trial before it resolves the trial's config (`sample_from` is still a placeholder
# then), so the names come from the sweep's trial table by index.
def trial_dirname(trial: Any) -> str:
    t = _table_of(trial.config)[trial.config["trial_index"]]
    return f"{trial.trial_id}_{t['label']}_s{t['seed']}"


def trial_name(trial: Any) -> str:
    t = _table_of(trial.config)[trial.config["trial_index"]]
    point = ",".join(f"{k.split('.')[-1]}={v}" for k, v in t["grid"].items())
    return f"{t['label']}_s{t['seed']}" + (f"_{point}" if point else "")


def trials_digest(table: list[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(table, sort_keys=True).encode()).hexdigest()[:16]


def check_same_trials(loc: Location, table: list[dict[str, Any]]) -> None:
    """A restored sweep looks its trials up by index: the sweep file must still expand to the
    same trials, in the same order, as when the sweep started (sweep.json's digest)."""
    if not loc.exists("sweep.json"):
        return  # a sweep started before the digest existed: nothing to compare with
    meta = json.loads(loc.read_text("sweep.json"))
    digest = meta.get("trials_digest")
    if digest is not None and digest != trials_digest(table):
        raise FileExistsError(
            f"{loc.uri}: the sweep file now expands to different trials ({len(table)}) than when "
            f"this sweep started ({meta.get('trials')}); --resume needs the same trials. Undo "
            f"the change, or start again with --overwrite (or a new `name`).")


def write_sweep_json(spec: SweepSpec, trials: list[Trial], loc: Location, smoke: bool) -> None:
    loc.write_text(json.dumps({
        "trials_digest": trials_digest([t.to_json() for t in trials]),
        "name": spec.name,
        "table": spec.table,
        "grid": spec.grid,
        "seeds": spec.seeds,
        "variants": sorted({t.label for t in trials}),
        "trials": len(trials),
        "smoke": smoke,
        "scheduler": spec.scheduler.model_dump(),
        "resources": spec.resources.model_dump(),
        "storage": spec.storage,
        "git_revision": git_revision(),
        "versions": versions(),
        "created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }, indent=2, sort_keys=True), "sweep.json")


def _scheduler(spec: SweepSpec, trials: list[Trial]) -> Any:
    s = spec.scheduler
    if s.name == "none":
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        time_attr="training_iteration", metric=s.metric, mode=s.mode,
        max_t=max(t.config.train.epochs for t in trials),
        grace_period=s.grace_period, reduction_factor=s.reduction_factor,
    )


def _callbacks(spec: SweepSpec, loc: Location) -> list[Any]:
    if not spec.aim:
        return []
    from ray.tune.logger.aim import AimLoggerCallback

    # Aim keeps a local repository; with bucket storage it lives in runs/aim on the driver.
    repo = loc.path if loc.is_local else str(Path("runs/aim").resolve())
    return [AimLoggerCallback(repo=repo, experiment_name=spec.name)]


def run_sweep(spec: SweepSpec, trials: list[Trial], *, smoke: bool = False,
              resume: bool = False, overwrite: bool = False, quiet: bool = False) -> Any:
    """Run (or, with `resume`, restore and finish) the sweep; returns Tune's ResultGrid.

    `quiet`: no status table (the benchmarks).

    Ray must be initialised by the caller (a local Ray or `address=auto`).
    """
    for key, value in TUNE_ENV.items():
        os.environ.setdefault(key, value)
    loc = sweep_location(spec, smoke)
    exists = loc.exists("sweep.json") or loc.exists("tuner.pkl")
    table = [t.to_json() for t in trials]
    space = param_space(spec, loc, table)  # (registers the table: before the restore below)
    fn = trainable(table)
    if resume:
        if not ray.tune.Tuner.can_restore(loc.uri):
            raise FileExistsError(f"{loc.uri}: no sweep to resume here (no tuner.pkl); run it "
                                  f"without --resume first")
        check_same_trials(loc, table)
        tuner = ray.tune.Tuner.restore(loc.uri, trainable=fn, resume_unfinished=True,
                                       resume_errored=True)
        return tuner.fit()
    if exists and not overwrite:
        raise FileExistsError(
            f"{loc.uri} already holds this sweep. Use --resume to finish it, --overwrite to "
            f"delete it and start again, or change `name` / `storage` in the sweep file."
        )
    if exists:
        loc.fs.delete_dir(loc.path)
    write_sweep_json(spec, trials, loc, smoke)
    cluster = ray.cluster_resources()
    conc = max_concurrent(spec, trials, cluster)
    needs = trial_needs(spec, trials)
    short = [f"{need:g} {name} (the cluster has {cluster.get(name, 0):g})"
             for name, need in (("CPU", needs.cpus), ("GPU", needs.gpus))
             if need > cluster.get(name, 0.0)]
    if short:  # an autoscaling cluster may still grow; a fixed one never runs the trials
        print(f"sslray: warning: one trial needs {' and '.join(short)}; trials wait until the "
              f"cluster grows (lower resources.cpus_per_worker / workers to run here)",
              file=sys.stderr, flush=True)
    parent = location(spec.storage)
    tuner = ray.tune.Tuner(
        fn,
        param_space=space,
        tune_config=ray.tune.TuneConfig(
            scheduler=_scheduler(spec, trials), max_concurrent_trials=conc,
            # A trial that trains in its actor leaves nothing behind but its files, so the next
            # trial reuses the warm actor (torch and sslray imported, same reservation): a short
            # trial no longer pays a Python process start (benchmarks/sweep_overhead.py).
            reuse_actors=needs.in_actor,
            trial_dirname_creator=trial_dirname, trial_name_creator=trial_name,
        ),
        run_config=ray.tune.RunConfig(
            name=loc.name,
            storage_path=parent.path,
            storage_filesystem=None if parent.is_local else parent.fs,
            failure_config=ray.tune.FailureConfig(max_failures=spec.trial_retries),
            callbacks=_callbacks(spec, loc),
            # Trials that train in their actor checkpoint through Tune: keep the last two, as
            # the Train runs do (worker.py's CheckpointConfig).
            checkpoint_config=ray.tune.CheckpointConfig(num_to_keep=2),
            progress_reporter=None if quiet else SweepReporter(),
            verbose=0 if quiet else 1,
        ),
    )
    start = time.perf_counter()
    results = tuner.fit()
    print(f"sweep {spec.name}: {len(trials)} trials in {(time.perf_counter() - start) / 60:.1f} "
          f"min -> {loc.uri}", flush=True)
    return results
