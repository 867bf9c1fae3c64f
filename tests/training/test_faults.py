"""Faults injected for real: a full disk mid-checkpoint, a half-written checkpoint, a trial
that diverges inside a sweep. (Killed workers, lost nodes and a killed sweep driver are in
test_ray_workers.py, test_cluster.py and test_sweep.py.)"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from sslray.atomic_file import temp_path
from sslray.storage import location
from sslray.training.checkpoint import (
    FINAL_FILE,
    SNAPSHOT_FILE,
    STATE_FILE,
    CheckpointError,
    load_state,
    load_trained_state,
    save_state,
)
from tests.conftest import tiny_raw

DEV_FULL = Path("/dev/full")  # every write fails with ENOSPC, as on a full disk
needs_dev_full = pytest.mark.skipif(not DEV_FULL.exists(), reason="needs /dev/full (Linux)")


def _state(epoch: int) -> dict[str, Any]:
    return {"method": "moco", "epoch": epoch, "model": {"w": torch.full((64, 64), float(epoch))}}


@needs_dev_full
def test_disk_full_mid_checkpoint_keeps_the_previous_one(tmp_path: Path) -> None:
    path = tmp_path / STATE_FILE
    save_state(_state(1), path)
    # The temporary file sits on a "disk" that is full: the write fails part-way.
    temp_path(path).symlink_to(DEV_FULL)
    with pytest.raises((OSError, RuntimeError)):
        save_state(_state(2), path)
    assert load_state(path, "moco")["epoch"] == 1  # the previous checkpoint is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == [STATE_FILE]  # no debris left
    save_state(_state(3), path)  # and the next checkpoint (disk freed) writes normally
    assert load_state(path)["epoch"] == 3


@needs_dev_full
def test_disk_full_mid_write_keeps_run_files(tmp_path: Path) -> None:
    """config.json, result.json, final.pt go through Location.write_bytes: the same guarantee."""
    run = location(tmp_path)
    run.write_text('{"epoch": 1}\n', "result.json")
    temp_path(tmp_path / "result.json").symlink_to(DEV_FULL)
    with pytest.raises(OSError):
        run.append_line('{"epoch": 2}', "result.json")
    assert run.read_text("result.json") == '{"epoch": 1}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def _fake_ray_run(run_dir: Path, epochs: int) -> None:
    """A run directory laid out as Ray Train 2.60 leaves it: one checkpoint_<time> directory per
    epoch and checkpoint_manager_snapshot.json naming the latest complete one (real layout:
    test_resume_ignores_a_half_written_checkpoint below checks it against a real run)."""
    names = []
    for epoch in range(1, epochs + 1):
        name = f"checkpoint_2026-01-01_00-00-0{epoch}.000000"
        save_state(_state(epoch), run_dir / name / STATE_FILE)
        names.append(name)
    (run_dir / SNAPSHOT_FILE).write_text(json.dumps({
        "ray_version": "2.60.0",
        "latest_checkpoint_result": {"checkpoint_dir_name": names[-1],
                                     "metrics": {"epoch": float(epochs)}},
    }))


def test_a_half_written_newest_checkpoint_is_skipped(tmp_path: Path) -> None:
    _fake_ray_run(tmp_path, epochs=2)
    # An upload that died part-way: a newer directory with a truncated state file, which Ray
    # never registered in its snapshot.
    partial = tmp_path / "checkpoint_2026-01-01_00-00-09.000000"
    partial.mkdir()
    good = (tmp_path / "checkpoint_2026-01-01_00-00-02.000000" / STATE_FILE).read_bytes()
    (partial / STATE_FILE).write_bytes(good[: len(good) // 2])
    assert load_trained_state(location(tmp_path), "moco")["epoch"] == 2
    # Even without the snapshot (e.g. it was lost too), the unreadable one is skipped, loudly.
    (tmp_path / SNAPSHOT_FILE).unlink()
    with pytest.warns(RuntimeWarning, match="skipped 1 unreadable checkpoint"):
        assert load_trained_state(location(tmp_path), "moco")["epoch"] == 2


def test_no_readable_checkpoint_names_each_problem(tmp_path: Path) -> None:
    bad = tmp_path / "checkpoint_2026-01-01_00-00-01.000000"
    bad.mkdir()
    (bad / STATE_FILE).write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match="no readable checkpoint among 1") as err:
        load_trained_state(location(tmp_path))
    assert str(bad / STATE_FILE) in str(err.value)  # the real file, not a temporary copy
    _fake_ray_run(tmp_path / "other", epochs=1)
    with pytest.raises(CheckpointError, match="written by method 'moco'.*trains 'byol'"):
        load_trained_state(location(tmp_path / "other"), "byol")


def test_a_corrupt_final_model_is_named(tmp_path: Path) -> None:
    (tmp_path / FINAL_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=f"{tmp_path / FINAL_FILE}: not a readable"):
        load_trained_state(location(tmp_path))


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_resume_ignores_a_half_written_checkpoint(ray_session: Any, tmp_path: Path) -> None:
    """A real Ray Train run; then a newer, half-written checkpoint directory appears (an upload
    that died with its node). Resuming the run continues from the last complete checkpoint."""
    from sslray.config import validate_raw
    from sslray.training.worker import run_training

    raw = tiny_raw(resources={"workers": 1}, eval={"knn_k": 10, "at_init": False})
    run_dir = tmp_path / "run"
    run_training(validate_raw(raw), run_dir, verbose=False)
    ckpts = sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir())
    # The layout _fake_ray_run copies:
    assert len(ckpts) == 2 and (run_dir / SNAPSHOT_FILE).is_file()
    partial = run_dir / "checkpoint_9999-12-31_23-59-59.999999"
    shutil.copytree(ckpts[-1], partial)
    data = (partial / STATE_FILE).read_bytes()
    (partial / STATE_FILE).write_bytes(data[: len(data) // 3])
    (run_dir / FINAL_FILE).unlink()
    assert load_trained_state(location(run_dir), "moco")["epoch"] == 2

    raw["train"]["epochs"] = 3
    metrics = run_training(validate_raw(raw), run_dir, verbose=False)
    assert metrics["epoch"] == 3.0 and metrics["train/resumed_from_epoch"] == 2.0


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_a_diverging_trial_errors_alone_and_the_table_marks_it(
        ray_session: Any, tmp_path: Path) -> None:
    from analysis import ERRORED, FINISHED, build_table, load_sweep, parse_spec, render_markdown
    from sslray.sweep.runner import run_sweep
    from sslray.sweep.spec import expand
    from sslray.sweep.spec import load_sweep as load_sweep_file

    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({
        "name": "nan", "base": tiny_raw(eval={"knn_k": 10}), "seeds": [0],
        "grid": {"optim.lr": [0.05, 1e12]},  # 1e12: the loss is NaN after the first epoch
        "storage": str(tmp_path / "sweeps"), "aim": False,
        "resources": {"workers": 1, "cpus_per_worker": 0.5},
    }))
    spec = load_sweep_file(sweep)
    results = run_sweep(spec, expand(spec))
    errors = [str(r.error) for r in results if r.error is not None]
    assert len(results) == 2 and len(errors) == 1, errors
    assert "train/loss is nan" in errors[0] and "lower optim.lr" in errors[0]

    frame = load_sweep(tmp_path / "sweeps" / "nan").set_index("optim.lr")
    assert frame.loc[0.05, "status"] == FINISHED and frame.loc[1e12, "status"] == ERRORED
    bad_dir = Path(frame.loc[1e12, "trial_dir"])
    assert "train/loss is nan" in (bad_dir / "error.txt").read_text()
    table = build_table(frame.reset_index(), parse_spec(
        {"title": "lr", "rows": "optim.lr", "metrics": [{"metric": "eval/knn_top1"}]},
        name="nan_test"))
    lines = render_markdown(table).splitlines()
    assert "Trials: 1 finished, 1 errored" in lines[0]
    assert lines[-1] == "| 1000000000000 | – |", lines  # marked, never averaged in
    knn = frame.loc[0.05, "eval/knn_top1"]
    assert lines[-2] == f"| 0.05 | {100 * knn:.1f} (n=1) |", lines


# -- Bad input not covered elsewhere (test_config, test_cli, test_sweep, test_data, test_resume) --


def _sweep_problems(tmp_path: Path, **fields: Any) -> str:
    from sslray.config import ConfigError
    from sslray.sweep.spec import expand
    from sslray.sweep.spec import load_sweep as load_sweep_file

    raw = {"name": "t", "base": tiny_raw(), "storage": str(tmp_path / "sweeps"), **fields}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as err:
        expand(load_sweep_file(path))
    return str(err.value)


def test_sweeps_that_give_no_trials_or_miss_their_base(tmp_path: Path) -> None:
    assert "grid.method.temperature: an empty list gives no trials" in _sweep_problems(
        tmp_path, grid={"method.temperature": []})
    assert "seeds: List should have at least 1 item" in _sweep_problems(tmp_path, seeds=[])
    msg = _sweep_problems(tmp_path, base=str(tmp_path / "nope.yaml"))
    assert f"base: {tmp_path / 'nope.yaml'}: no such file, and not a built-in config" in msg
    assert "variants." not in msg  # the key the user wrote, not an internal name
    assert not (tmp_path / "sweeps").exists()


def test_tau_outside_0_1_is_refused() -> None:
    from sslray.config import ConfigError, validate_raw

    for value in (1.5, -0.1):
        with pytest.raises(ConfigError, match="method.tau_base: Input should be"):
            validate_raw(tiny_raw(method={"name": "byol", "tau_base": value}))


def test_yaml_tags_that_run_code_are_refused(tmp_path: Path) -> None:
    from sslray.config import ConfigError, load_config

    marker = tmp_path / "ran"
    path = tmp_path / "evil.yaml"
    path.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match="malformed YAML at line 1.*python/object/apply"):
        load_config(str(path))
    assert not marker.exists()


def test_checkpoints_never_unpickle_code(tmp_path: Path) -> None:
    """weights_only=True: a checkpoint holding an arbitrary object is refused, never run."""
    path = tmp_path / STATE_FILE
    torch.save({"format_version": 1, "method": "moco", "payload": _Evil()}, path)
    with pytest.raises(CheckpointError, match="not a readable sslray checkpoint"):
        load_state(path)


class _Evil:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo this must never run",))


def test_a_dataset_root_with_the_wrong_files(tmp_path: Path) -> None:
    """The labels file copied over the images: the loader names both files and the shapes."""
    from sslray.data.datasets import DatasetError, load_idx_dataset
    from tests.data.test_datasets import _fake_mnist

    _fake_mnist(tmp_path)
    images = tmp_path / "train-images-idx3-ubyte.gz"
    shutil.copy(tmp_path / "train-labels-idx1-ubyte.gz", images)
    with pytest.raises(DatasetError, match=r"do not match \(images \(12,\), labels \(12,\)\)"):
        load_idx_dataset("mnist", "train", str(tmp_path))
