"""The CLI as a user runs it: exit codes, messages, run directories."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import tiny_raw

SSLRAY = [sys.executable, "-m", "sslray.cli.main"]


def sslray(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*SSLRAY, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.mark.parametrize("command", ["ls", "validate", "run", "eval", "sweep", "table"])
def test_help_has_an_example(command):
    out = sslray(command, "--help")
    assert out.returncode == 0 and "example" in out.stdout


def test_help_imports_neither_torch_nor_ray():
    """`--help` builds every command's parser without the heavy imports (7 s of them on a slow
    core); each command imports what it needs when it runs."""
    code = ("import sys; from sslray.cli.main import build_parser; build_parser(); "
            "heavy = ('torch', 'ray', 'torchvision', 'faiss'); "
            "print(sorted(m for m in heavy if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_ls_lists_methods_and_configs():
    out = sslray("ls")
    assert out.returncode == 0 and "moco" in out.stdout and "fmnist_moco_v2" in out.stdout
    for name in ("jigsaw_pp", "cc", "supervised", "fmnist_cc", "quickstart  ", "table=quickstart"):
        assert name in out.stdout, name


def test_validate_cc_checks_its_source_config():
    out = sslray("validate", "fmnist_cc")
    assert out.returncode == 0 and "source (stage 1 of the cc pipeline)" in out.stdout
    assert "method:   jigsaw_pp" in out.stdout
    out = sslray("validate", "fmnist_cc", "--set", "method.source=no_such_config")
    assert out.returncode == 2 and "method.source: no_such_config" in out.stderr


def test_validate_bad_key_exits_2_with_dotted_path(tmp_path: Path):
    cfg = tmp_path / "c.yaml"
    raw = tiny_raw()
    raw["optim"]["momentun"] = 0.9
    cfg.write_text(yaml.safe_dump(raw))
    out = sslray("validate", str(cfg))
    assert out.returncode == 2
    assert "optim.momentun: unknown key (did you mean 'momentum'?)" in out.stderr
    out = sslray("validate", str(cfg), "--set", "optim.momentun=null")
    assert out.returncode == 2  # still an unknown key; overriding does not hide it


def test_validate_prints_plan():
    out = sslray("validate", "fmnist_moco_v2", "--set", "train.epochs=3")
    assert out.returncode == 0 and "3 epochs" in out.stdout and "2 Ray Train workers" in out.stdout


@pytest.mark.timeout(300)
def test_run_local_mode_writes_config_and_result_and_never_overwrites(tmp_path: Path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny_raw(train={"epochs": 1, "batch_size": 32})))
    run_dir = tmp_path / "run"
    out = sslray("run", str(cfg), "--workers", "0", "--output", str(run_dir))
    assert out.returncode == 0, out.stderr
    for text in ("kNN top-1", "random init", "linear (fast)", "epoch 1/1 | "):
        assert text in out.stdout  # the per-epoch progress line and the summary table
    resolved = json.loads((run_dir / "config.json").read_text())
    assert resolved["config"]["method"]["queue_size"] == 64
    assert resolved["derived"]["effective_lr"] == pytest.approx(0.05 * 32 / 256)
    result = json.loads((run_dir / "result.json").read_text().splitlines()[-1])
    assert result["epoch"] == 1.0 and 0 <= result["eval/knn_top1"] <= 1

    before = (run_dir / "config.json").read_text()
    again = sslray("run", str(cfg), "--workers", "0", "--output", str(run_dir))
    assert again.returncode == 2 and "--resume" in again.stderr and "--overwrite" in again.stderr
    assert (run_dir / "config.json").read_text() == before  # nothing touched


def test_resume_with_other_config_is_refused(tmp_path: Path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"config": {"seed": 5}}))
    out = sslray("run", "fmnist_moco_v2", "--output", str(run_dir), "--resume")
    assert out.returncode == 2 and "different config" in out.stderr


def test_progress_prints_one_line_per_epoch_when_not_a_terminal(capsys):
    from sslray.training.progress import EpochProgress

    p = EpochProgress(epochs=3, steps=10)
    p.step(0, 5, 1.0)  # not a TTY under pytest: no live bar
    p.end_epoch({"epoch": 1.0, "train/loss": 2.5, "eval/knn_top1": 0.75})
    assert capsys.readouterr().out == "epoch 1/3 | loss 2.5 | knn_top1 0.75\n"
    EpochProgress(epochs=3, steps=10, enabled=False).end_epoch({"epoch": 2.0})
    assert capsys.readouterr().out == ""  # other ranks stay quiet


def test_more_clusters_than_images_is_refused_before_any_work(tmp_path: Path):
    out = sslray("validate", "fmnist_cc", "--set", "method.k=5000", "--set",
                 "data.train_subset=1000")
    assert out.returncode == 2
    assert "method.k (5000 clusters) is more than the 1000 training images" in out.stderr


def test_more_workers_than_the_local_machine_has_is_refused(tmp_path: Path):
    """A local Ray never grows: the run and the sweep stop at once, before writing anything."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_raw(resources={"workers": 16})))
    run_dir = tmp_path / "run"
    out = sslray("run", str(cfg), "--output", str(run_dir))
    assert out.returncode == 2, out.stderr
    assert "resources.workers=16 x (cpus_per_worker=1)" in out.stderr
    assert "needs 16 CPUs (this machine has" in out.stderr and "--address" in out.stderr
    assert not run_dir.exists()
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump({"name": "big", "base": tiny_raw(), "seeds": [0],
                                     "storage": str(tmp_path / "sweeps"),
                                     "resources": {"workers": 16, "cpus_per_worker": 1}}))
    out = sslray("sweep", str(sweep))
    assert out.returncode == 2, out.stderr
    assert "one trial (resources.workers=16)" in out.stderr and "needs 16.01 CPUs" in out.stderr
    assert not (tmp_path / "sweeps").exists()
