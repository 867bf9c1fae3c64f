"""Sweep files: expansion and validation (no Ray), a real Tune sweep, restore after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from sslray.cli.main import main
from sslray.config import ConfigError
from sslray.sweep.spec import (
    SWEEPS_DIR,
    describe_sweep,
    expand,
    grid_points,
    load_sweep,
    max_concurrent,
    trial_needs,
)
from tests.conftest import FAST_RAY_ENV, tiny_raw

REPO = Path(__file__).resolve().parents[2]


def write_sweep(tmp_path: Path, **fields: Any) -> Path:
    raw: dict[str, Any] = {
        "name": "t",
        "base": tiny_raw(eval={"knn_k": 10, "every_n_epochs": 1}),
        "grid": {"method.temperature": [0.1, 0.2]},
        "seeds": [0, 1],
        "storage": str(tmp_path / "sweeps"),
        "aim": False,
    }
    raw.update(fields)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def problems(path: Path) -> str:
    with pytest.raises(ConfigError) as err:
        expand(load_sweep(path))
    return str(err.value)


def test_grid_expansion_counts_seeds_and_dotted_keys(tmp_path: Path) -> None:
    path = write_sweep(tmp_path, grid={"method.temperature": [0.1, 0.2, 0.5],
                                       "optim.lr": [0.01, 0.1]}, seeds=[0, 1])
    trials = expand(load_sweep(path))
    assert len(trials) == 3 * 2 * 2
    temps = sorted({t.config.method.temperature for t in trials})  # type: ignore[union-attr]
    assert temps == [0.1, 0.2, 0.5]
    assert {t.config.seed for t in trials} == {0, 1}
    t = trials[-1]
    assert t.grid == {"method.temperature": 0.5, "optim.lr": 0.1} and t.seed == 1
    assert t.config.optim.lr == 0.1 and t.config.resources.workers == 1  # sweep resources win


def test_yaml_scientific_notation_is_a_float(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(f"name: t\nbase: fmnist_moco_v2\ngrid:\n  optim.lr: [1e-3, 3e-2]\n"
                    f"storage: {tmp_path}\n")
    trials = expand(load_sweep(path))
    assert [t.config.optim.lr for t in trials] == [0.001, 0.03]
    assert all(isinstance(t.grid["optim.lr"], float) for t in trials)


def test_variants_own_grids_and_linked_keys(tmp_path: Path) -> None:
    assert grid_points({"a,b": [[1, 2], [3, 4]], "c": [5]}) == [
        {"a": 1, "b": 2, "c": 5}, {"a": 3, "b": 4, "c": 5}]
    trials = expand(load_sweep(SWEEPS_DIR / "moco_dictionary.yaml"))
    e2e = [t for t in trials if t.label == "end_to_end"]
    assert len(trials) == 18 and len(e2e) == 6
    assert all(t.config.train.batch_size == t.config.method.queue_size for t in e2e)  # type: ignore[union-attr]


def test_a_variant_takes_its_own_seeds_and_a_seed_key_is_refused(tmp_path: Path) -> None:
    """`variants.x.seeds` replaces the sweep's seeds for that row; a `seed` in a set or a grid
    would be overwritten by `seeds:` silently, so it is an error that names `seeds`."""
    path = write_sweep(tmp_path, grid={}, seeds=[0], variants={"two": {"seeds": [0, 1]}, "one": {}})
    trials = expand(load_sweep(path))
    assert sorted((t.label, t.seed, t.config.seed) for t in trials) == [
        ("one", 0, 0), ("two", 0, 0), ("two", 1, 1)]
    for bad in ({"grid": {"seed": [0, 1]}}, {"set": {"seed": 3}},
                {"variants": {"x": {"grid": {"seed,optim.lr": [[0, 0.1]]}}}}):
        with pytest.raises(ConfigError, match=r"seed: a trial's seed comes from `seeds:`"):
            load_sweep(write_sweep(tmp_path, **bad))


def test_bad_keys_and_values_name_the_trial_and_the_dotted_path(tmp_path: Path) -> None:
    msg = problems(write_sweep(tmp_path, grid={"method.ema_decay": [0.9, 1.5]}))
    assert "trial t seed=0 method.ema_decay=1.5" in msg and "method.ema_decay" in msg
    msg = problems(write_sweep(tmp_path, grid={"method.temprature": [0.1]}))
    assert "method.temprature: unknown key (did you mean 'temperature'?)" in msg
    with pytest.raises(ConfigError, match=r"sceduler: unknown key \(did you mean 'scheduler'"):
        load_sweep(write_sweep(tmp_path, sceduler={"name": "asha"}))
    with pytest.raises(ConfigError, match="resources.workers"):
        load_sweep(write_sweep(tmp_path, resources={"workers": 0}))
    msg = problems(write_sweep(tmp_path, base=None, variants={"x": {"base": "no_such_config"}}))
    assert "variants.x.base" in msg and "no_such_config" in msg
    msg = problems(write_sweep(tmp_path, variants={"x": {"set": {"method.name": "simclr"}}}))
    assert "unknown method 'simclr'" in msg


def test_asha_needs_its_metric_every_epoch(tmp_path: Path) -> None:
    base = tiny_raw(eval={"every_n_epochs": 2})
    msg = problems(write_sweep(tmp_path, base=base, scheduler={"name": "asha"}))
    assert "scheduler.metric: eval/knn_top1 is only reported every 2 epochs" in msg
    ok = write_sweep(tmp_path, base=base, scheduler={"name": "asha", "metric": "train/loss",
                                                     "mode": "min"})
    assert len(expand(load_sweep(ok))) == 4


def test_concurrency_follows_the_cluster(tmp_path: Path) -> None:
    spec = load_sweep(write_sweep(tmp_path, resources={"workers": 2, "cpus_per_worker": 1}))
    assert max_concurrent(spec, expand(spec), {"CPU": 8.0}) == 3  # 2.01 CPU per trial
    # one worker: the trial trains in its actor, no 0.01 CPU Ray Train driver on top
    one = load_sweep(write_sweep(tmp_path, resources={"workers": 1, "cpus_per_worker": 1}))
    assert trial_needs(one, expand(one)).cpus == 1.0
    assert max_concurrent(one, expand(one), {"CPU": 8.0}) == 8
    assert "trains in its Tune trial actor) = 1 CPU" in describe_sweep(one, expand(one))
    pinned = load_sweep(write_sweep(tmp_path, resources={"workers": 1, "driver_resource": "head"}))
    assert trial_needs(pinned, expand(pinned)).cpus == 1.01
    assert max_concurrent(pinned, expand(pinned), {"CPU": 8.0}) == 7
    gpu = load_sweep(write_sweep(tmp_path, resources={"workers": 2, "use_gpu": True,
                                                      "placement_strategy": "STRICT_SPREAD"}))
    assert max_concurrent(gpu, expand(gpu), {"CPU": 64.0, "GPU": 8.0}) == 4
    res = expand(gpu)[0].config.resources  # the sweep's resources reach every trial's config
    assert res.use_gpu and res.workers == 2 and res.placement_strategy == "STRICT_SPREAD"


@pytest.mark.parametrize("path", sorted(SWEEPS_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_sweep_names_a_shipped_table(path: Path) -> None:
    from analysis import list_specs

    assert load_sweep(path).table in list_specs()


@pytest.mark.parametrize("path", sorted(SWEEPS_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_sweep_validates(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = path.read_text()
    assert text.startswith("#") and "sslray " in text.split("\nname:")[0]  # opens with the command
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "trials:" in out and "per trial:" in out and out.rstrip().endswith("ok")
    assert main(["validate", str(path), "--smoke"]) == 0


def test_validate_bad_sweep_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_sweep(tmp_path, grid={"train.epochs": [0]})
    assert main(["validate", str(path)]) == 2
    assert "train.epochs" in capsys.readouterr().err


# -- real Ray Tune ---------------------------------------------------------------------------------


def trial_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(p for p in sweep_dir.iterdir() if (p / "config.json").is_file())


def result_lines(trial: Path) -> list[dict[str, Any]]:
    path = trial / "result.json"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_real_tune_sweep_with_asha(ray_session: Any, tmp_path: Path) -> None:
    from sslray.sweep.runner import run_sweep

    path = write_sweep(tmp_path, seeds=[0], scheduler={"name": "asha", "grace_period": 1},
                       aim=True, table="moco_momentum",
                       resources={"workers": 1, "cpus_per_worker": 0.5})
    spec = load_sweep(path)
    trials = expand(spec, smoke=False)
    results = run_sweep(spec, trials)
    assert all(r.error is None for r in results)
    sweep_dir = tmp_path / "sweeps" / "t"
    meta = json.loads((sweep_dir / "sweep.json").read_text())
    assert meta["trials"] == 2 and meta["table"] == "moco_momentum" and meta["versions"]["ray"]
    dirs = trial_dirs(sweep_dir)
    assert len(dirs) == 2
    for d in dirs:
        cfg = json.loads((d / "config.json").read_text())
        assert cfg["trial"]["label"] == "t" and cfg["config"]["train"]["epochs"] == 2
        lines = result_lines(d)
        assert 1 <= len(lines) <= 2  # ASHA may stop the worse trial after epoch 1
        last = lines[-1]
        assert last["epoch"] == len(lines) and 0.0 <= last["eval/knn_top1"] <= 1.0
        assert last["wall_s"] > 0 and last["device_hours"] > 0
        assert "eval/knn_top1_init" in last
    temps = {json.loads((d / "config.json").read_text())["trial"]["grid"]["method.temperature"]
             for d in dirs}
    assert temps == {0.1, 0.2}
    # AimLoggerCallback's repository: `aim up --repo <sweep dir>` indexes it and shows every trial.
    aim = Path(sys.executable).with_name("aim")
    subprocess.run([str(aim), "storage", "--repo", str(sweep_dir), "reindex", "--yes"],
                   check=True, capture_output=True, timeout=120)
    from aim import Repo

    tracked = list(Repo(str(sweep_dir)).query_metrics(
        'metric.name == "ray/tune/eval/knn_top1"').iter())
    assert len(tracked) == 2


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_cc_pipeline_inside_a_tune_trial(ray_session: Any, tmp_path: Path) -> None:
    """All three cc stages inside one Tune trial: the k-means task must escape the trial's
    0.01-CPU placement group, and the target's reports carry the clustering's NMI."""
    from sslray.sweep.runner import run_sweep

    source = tmp_path / "source.yaml"
    source.write_text(yaml.safe_dump(tiny_raw(train={"epochs": 1, "batch_size": 32})))
    base = tiny_raw(method={"name": "cc", "source": str(source), "k": 4, "kmeans_iters": 5},
                    backbone={"arch": "alexnet_small", "width": 8, "blocks": [1, 1]},
                    train={"epochs": 1, "batch_size": 32})
    spec = load_sweep(write_sweep(tmp_path, base=base, grid={}, seeds=[0],
                                  resources={"workers": 1, "cpus_per_worker": 0.5}))
    results = run_sweep(spec, expand(spec))
    assert all(r.error is None for r in results), [str(r.error)[-2000:] for r in results]
    (trial,) = trial_dirs(tmp_path / "sweeps" / "t")
    last = result_lines(trial)[-1]
    clusters = json.loads(next(trial.glob("train-*/clusters/clusters.json")).read_text())
    assert last["cluster/nmi"] == pytest.approx(clusters["nmi"]) and last["cluster/k"] == 4
    assert "source/eval/knn_top1" in last


@pytest.mark.ray
@pytest.mark.timeout(420)
def test_restore_after_the_driver_is_killed(tmp_path: Path) -> None:
    """SIGKILL the sweep driver after trial 1 finished; --resume must not re-run trial 1."""
    # Trial 2 runs 30 epochs so that it is surely still running when the driver is killed
    # (with 2 epochs it could finish in the seconds the test waits; a fresh-clone CI run saw it).
    path = write_sweep(tmp_path, seeds=[0], resources={"workers": 1, "cpus_per_worker": 1,
                                                       "max_concurrent_trials": 1},
                       grid={"method.temperature,train.epochs": [[0.1, 2], [0.2, 30]]})
    env = {**os.environ, **FAST_RAY_ENV, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "sslray.cli.main", "sweep", str(path), "--no-table"]
    sweep_dir = tmp_path / "sweeps" / "t"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 240
        first: Path | None = None
        while time.time() < deadline and first is None:
            time.sleep(0.5)
            done = [d for d in trial_dirs(sweep_dir)
                    if [r["epoch"] for r in result_lines(d)] == [1, 2]
                    and json.loads((d / "config.json").read_text())["config"]["train"]["epochs"]
                    == 2] if sweep_dir.is_dir() else []
            first = done[0] if done else None
        assert first is not None, "the first trial never finished"
        time.sleep(4)  # > TUNE_GLOBAL_CHECKPOINT_S: the experiment state records it finished
        assert proc.poll() is None, "the sweep finished before it could be killed"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    train_results = list(first.glob("train-*/result.json"))
    assert len(train_results) == 1 and len(train_results[0].read_text().splitlines()) == 1
    out = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    dirs = trial_dirs(sweep_dir)
    assert len(dirs) == 2
    # Both trials finished. (The killed trial may repeat an epoch it had run but not yet
    # checkpointed when the driver died, so its result.json can hold 2 or 3 lines.)
    assert sorted(result_lines(d)[-1]["epoch"] for d in dirs) == [2, 30], [
        [r["epoch"] for r in result_lines(d)] for d in dirs]
    # The first trial was not run again: no new Tune results, its Train run finished once.
    assert [r["epoch"] for r in result_lines(first)] == [1, 2]
    assert len(train_results[0].read_text().splitlines()) == 1


def test_a_top_level_base_no_variant_uses_is_an_error(tmp_path: Path) -> None:
    """Every variant names its own base: a top-level `base` (here one that does not even exist)
    would be silently ignored, so it is refused, naming the key and the file."""
    from sslray.cli.main import main

    path = write_sweep(tmp_path, base="no_such_config",
                       variants={"x": {"base": tiny_raw()}, "y": {"base": tiny_raw()}})
    with pytest.raises(ConfigError, match=r"base: is never used: every variant names its own"):
        load_sweep(path)
    assert main(["validate", str(path)]) == 2
    # used by one variant, a missing base is reported under its key
    msg = problems(write_sweep(tmp_path, base="no_such_config",
                               variants={"x": {"base": tiny_raw()}, "y": {}}))
    assert "base: " in msg and "no_such_config" in msg


@pytest.mark.ray
@pytest.mark.timeout(400)
def test_one_worker_trials_train_in_their_actor_and_asha_stops_the_bad_one(
        ray_session: Any, tmp_path: Path) -> None:
    """A 1-worker trial runs fit() in its Tune trial actor (no Ray Train run): its train-<id>/
    directory holds what a Train run leaves (config.json, final.pt, result.json), its epochs
    are Tune checkpoints, and ASHA stops a clearly worse trial (lr ~0: it never learns) early.
    """
    from analysis import STOPPED
    from analysis import load_sweep as load_frame
    from sslray.storage import location
    from sslray.sweep.runner import run_sweep
    from sslray.training.checkpoint import load_trained_state

    base = tiny_raw(train={"epochs": 4, "batch_size": 32}, eval={"knn_k": 10})
    path = write_sweep(tmp_path, base=base, seeds=[0], grid={"optim.lr": [0.05, 1e-12]},
                       scheduler={"name": "asha", "metric": "train/loss", "mode": "min",
                                  "grace_period": 1, "reduction_factor": 2},
                       resources={"workers": 1, "cpus_per_worker": 1.0,
                                  "max_concurrent_trials": 1})
    spec = load_sweep(path)
    results = run_sweep(spec, expand(spec), quiet=True)
    assert results.num_errors == 0
    sweep_dir = tmp_path / "sweeps" / "t"
    frame = load_frame(sweep_dir).set_index("optim.lr")
    assert frame.loc[1e-12, "status"] == STOPPED  # ASHA, not "finished"
    assert frame.loc[1e-12, "epoch"] < 4 and frame.loc[0.05, "epoch"] == 4
    for d in trial_dirs(sweep_dir):
        (run,) = d.glob("train-*")
        assert (run / "config.json").is_file()  # result.json: finished runs only (as in Train)
        assert not (run / "checkpoint_manager_snapshot.json").exists()  # no Ray Train run
        assert sorted(p.name for p in d.glob("checkpoint_*"))  # the epochs' Tune checkpoints
    good = next(d for d in trial_dirs(sweep_dir)
                if json.loads((d / "config.json").read_text())["config"]["optim"]["lr"] == 0.05)
    (run,) = good.glob("train-*")
    state = load_trained_state(location(run), "moco")  # final.pt, as after a Train run
    assert state["epoch"] == 4
    # (ASHA ends even a full trial at max_t while fit() still blocks, so neither path writes
    # train-<id>/result.json under ASHA; final.pt is written before the last report.)
    assert (run / "final.pt").is_file() and frame.loc[0.05, "eval/knn_top1"] > 0


@pytest.mark.ray
@pytest.mark.timeout(400)
def test_reused_trial_actor_trains_each_trial_afresh(ray_session: Any, tmp_path: Path) -> None:
    """1-worker trials reuse one warm actor (Tune's reuse_actors): trials 2 and 3 run in trial
    1's process, yet each starts from scratch (no checkpoint of the previous trial, its own
    seed) and reaches the loss that the same config reaches in a fresh process."""
    from sslray.sweep.runner import run_sweep
    from sslray.training.loop import fit

    base = tiny_raw(train={"epochs": 2, "batch_size": 32}, eval={"knn_k": 10, "at_init": False})
    path = write_sweep(tmp_path, base=base, seeds=[0, 1, 2], grid={},
                       resources={"workers": 1, "cpus_per_worker": 1.0,
                                  "max_concurrent_trials": 1})
    spec = load_sweep(path)
    trials = expand(spec)
    results = run_sweep(spec, trials, quiet=True)
    assert results.num_errors == 0
    by_seed = {r.config["trial"]["seed"]: r.metrics for r in results}
    assert len({m["pid"] for m in by_seed.values()}) == 1  # one actor ran all three
    for t in trials:
        m = by_seed[t.seed]
        assert m["train/resumed_from_epoch"] == 0.0 and m["epoch"] == 2.0
        alone = fit(t.config, verbose=False)
        assert m["train/loss"] == pytest.approx(alone["train/loss"], rel=1e-5), t.seed
    losses = [by_seed[s]["train/loss"] for s in (0, 1, 2)]
    assert len(set(losses)) == 3  # the seeds differ, so a leaked state would show


def test_tune_copies_of_the_param_space_do_not_grow_with_the_trials(tmp_path: Path) -> None:
    """Tune deep-copies the unresolved param space once per trial it creates; the objects one
    copy makes must not grow with the trial count (a grid over 1,000 configs made the copies
    O(trials^2): 110 s of driver CPU). Counted by deepcopy's memo, not timed."""
    import copy

    from ray.tune import grid_search as ray_grid

    from sslray.storage import location
    from sslray.sweep.runner import param_space

    spec = load_sweep(write_sweep(tmp_path))
    table = expand(spec)[0].to_json()

    def copied(trials: int) -> int:
        memo: dict[int, Any] = {}
        distinct = [json.loads(json.dumps(table)) for _ in range(trials)]  # as expand() makes
        copy.deepcopy(param_space(spec, location(tmp_path), distinct), memo)
        return len(memo)

    assert copied(1000) - copied(10) <= 10  # only the grid's index list itself grows
    # Tune pickles the functions it holds into every trial's state: they must not carry the
    # table (a closure over it put all 1,000 configs into each trial's state)
    import ray.cloudpickle

    from sslray.sweep import runner

    space = param_space(spec, location(tmp_path), [json.loads(json.dumps(table))] * 1000)
    for fn in (runner.trial_name, runner.trial_dirname, runner._trial_bundle_of,
               space["trial"]):
        assert len(ray.cloudpickle.dumps(fn)) < 20_000, fn
    # (what it guards against: the same configs in a grid make every copy copy them all)
    def copied_grid(trials: int) -> int:
        memo: dict[int, Any] = {}
        copy.deepcopy({"trial": ray_grid([json.loads(json.dumps(table))
                                          for _ in range(trials)])}, memo)
        return len(memo)

    assert copied_grid(100) - copied_grid(10) > 90 * 10


def test_resume_refuses_a_sweep_file_that_now_expands_to_other_trials(tmp_path: Path) -> None:
    """A restored sweep looks its trials up by index, so --resume checks sweep.json's digest."""
    from sslray.sweep.runner import check_same_trials, sweep_location, write_sweep_json

    spec = load_sweep(write_sweep(tmp_path))
    trials = expand(spec)
    loc = sweep_location(spec, smoke=False)
    write_sweep_json(spec, trials, loc, smoke=False)
    check_same_trials(loc, [t.to_json() for t in trials])  # unchanged: fine
    edited = load_sweep(write_sweep(tmp_path, grid={"method.temperature": [0.1, 0.3]}))
    with pytest.raises(FileExistsError, match="different trials.*--overwrite"):
        check_same_trials(loc, [t.to_json() for t in expand(edited)])
