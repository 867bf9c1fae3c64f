"""The benchmark scripts at toy sizes: each runs and prints the JSON lines it promises.

No timing is ever asserted (this machine is shared; the figures of a toy run mean nothing).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import eval_throughput, peer_compare, summarize, train_throughput

ROOT = Path(__file__).resolve().parents[2]
TOY = ["--batch", "16", "--steps", "1", "--epochs", "2", "--size", "16", "--width", "4"]
COMMON_KEYS = {"bench", "git_rev", "torch", "cpu", "cores", "timestamp", "command"}
TRAIN_KEYS = COMMON_KEYS | {"method", "mode", "images_per_s", "steps", "batch", "epochs",
                            "threads", "precision", "busy_cores_before"}


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _stdout_lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]


@pytest.mark.timeout(120)
def test_train_throughput_compute_and_plain_lines(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "train.jsonl"
    # One thread: two spinning OpenMP threads crawl when the 2 cores are shared with other tests.
    records = train_throughput.main([*TOY, "--modes", "compute,plain", "--threads", "1",
                                     "--out", str(out)])
    lines = _jsonl(out)
    assert lines == _stdout_lines(capsys)  # stdout and the file hold the same lines
    methods = train_throughput.METHODS
    assert [(r["method"], r["mode"]) for r in records] == [
        (m, mode) for m in methods for mode in ("compute", "plain")]  # interleaved per method
    for r in lines[:-1]:
        assert TRAIN_KEYS <= r.keys()
        assert r["images_per_s"] > 0 and r["batch"] == 16 and r["threads"] == 1
    plain = [r for r in lines[:-1] if r["mode"] == "plain"]
    assert all({"epoch_intervals_s", "eval_s_excluded", "worker_images_per_s"} <= r.keys()
               for r in plain)
    summary = lines[-1]
    assert summary["summary"] is True
    assert set(summary["ratios"]) == set(methods)
    assert all("plain/compute" in v for v in summary["ratios"].values())


@pytest.mark.ray
@pytest.mark.timeout(180)
def test_train_throughput_ray1_pins_threads_and_reports(ray_session: Any, tmp_path: Path) -> None:
    out = tmp_path / "train.jsonl"
    records = train_throughput.main([*TOY, "--methods", "moco_asym", "--modes", "plain,ray1",
                                     "--out", str(out)])
    ray1 = next(r for r in records if r["mode"] == "ray1")
    assert TRAIN_KEYS <= ray1.keys()
    assert ray1["ray_workers"] == 1 and ray1["images_per_s"] > 0
    assert len(ray1["epoch_intervals_s"]) == 1  # epochs 2..E of E = 2
    (threads,) = ray1["worker_threads"]  # written by the worker itself
    assert threads["torch_threads"] == 2 and threads["assigned_cpus"] == 2.0
    summary = _jsonl(out)[-1]
    assert "ray1/plain" in summary["ratios"]["moco_asym"]


def test_epoch_window_takes_out_start_up_and_the_final_evaluation() -> None:
    # 3 epochs of 2 s training each; the last one adds a 5 s evaluation (wall_s counts it).
    metrics = [{"wall_s": 2.1, "train/epoch_s": 2.0, "train/images_per_s": 50.0},
               {"wall_s": 4.2, "train/epoch_s": 2.0, "train/images_per_s": 50.0},
               {"wall_s": 11.3, "train/epoch_s": 2.0, "train/images_per_s": 50.0}]
    stamps = [100.0, 102.5, 109.5]  # epoch ends: 2.5 s per epoch (0.5 s of reporting) + eval
    w = train_throughput.epoch_window(stamps, metrics, images_per_epoch=100)
    assert w["eval_s_excluded"] == pytest.approx(5.0)
    assert w["images_per_s"] == pytest.approx(200 / 4.5, abs=1e-2)  # 2 epochs in 9.5 - 5 s
    assert w["images_per_s_mid"] == pytest.approx(100 / 2.5, abs=1e-2)


def test_peer_compare_skips_cleanly_without_the_peer_venv(tmp_path: Path) -> None:
    out = tmp_path / "peer.jsonl"
    script = tmp_path / "peer_baseline.py"  # present, so the missing python is what is reported
    script.write_text("raise SystemExit('must not run')\n")
    args = ["--peer-python", str(tmp_path / "no-python"), "--peer-script", str(script)]
    records = peer_compare.main([*args, "--out", str(out)])
    assert records == []
    (line,) = _jsonl(out)
    assert line["bench"] == "peer_compare" and "no-python" in line["skipped"]
    proc = subprocess.run(  # as a command: exit status 0, one JSON line on stdout
        [sys.executable, "-m", "benchmarks.peer_compare", *args], cwd=ROOT,
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "skipped" in json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(120)
def test_eval_throughput_lines_and_agreement(tmp_path: Path) -> None:
    out = tmp_path / "eval.jsonl"
    eval_throughput.main([
        "--knn-sizes", "600x16", "--queries", "100", "--k", "10", "--check-queries", "50",
        "--kmeans-size", "600x16", "--kmeans-k", "5", "--kmeans-components", "5",
        "--linear-size", "600x16", "--linear-test", "100", "--paper-epochs", "1",
        "--out", str(out)])
    lines = {r["part"]: r for r in _jsonl(out)}
    assert set(lines) == {"gemm", "knn", "kmeans", "linear"}
    for r in lines.values():
        assert COMMON_KEYS <= r.keys() and r["bench"] == "eval_throughput"
    knn = lines["knn"]
    assert {"ours_s", "sklearn_s", "speedup", "top1_agreement", "neighbour_overlap"} <= knn.keys()
    assert knn["top1_agreement"] >= 0.95 and knn["neighbour_overlap"] >= 0.95  # same classifier
    # the floor is the similarity product (2 N Q D FLOPs) at the measured GEMM rate
    peak = lines["gemm"]["fp32_gflops_per_s"]
    assert peak > 0 and lines["gemm"]["bf16_gflops_per_s"] > 0
    floor = 2 * 600 * 100 * 16 / (peak * 1e9)
    assert knn["floor_s"] == pytest.approx(floor, abs=1e-3)
    # (sklearn_s is rounded to 1 ms in the line)
    assert knn["max_speedup"] * floor == pytest.approx(knn["sklearn_s"], abs=6e-4)
    km = lines["kmeans"]
    assert {"objective_ratio", "nmi_ours_vs_sklearn", "sklearn_iters"} <= km.keys()
    assert 0.0 <= km["nmi_ours_vs_sklearn"] <= 1.0
    assert km["gflop_all_rows"] == pytest.approx(2 * 600 * 5 * 16 * 20 / 1e9, abs=0.05)
    lin = lines["linear"]
    assert {"fast_s", "paper_s", "fast_top1", "paper_top1"} <= lin.keys()


def test_summarize_judges_the_targets(tmp_path: Path) -> None:
    base = {"bench": "train_throughput", "method": "moco_sym", "repeat": 0, "batch": 128,
            "size": 32, "backbone": "resnet18-small-stem", "steps": 3, "epochs": 3,
            "cpu": "test cpu", "cores": 2, "torch": "x", "command": "python -m bench"}
    train = [{**base, "mode": "compute", "images_per_s": 20.0},
             {**base, "mode": "plain", "images_per_s": 18.0},
             {**base, "mode": "ray1", "images_per_s": 17.5}]
    peer = [{"bench": "peer_compare", "method": "byol", "pair": 0, "ratio": 1.2,
             "ours_images_per_s": 22.0, "peer_images_per_s": 18.3, "batch": 128,
             "backbone": "resnet18-small-stem"}]
    evals = [{"bench": "eval_throughput", "part": "knn", "train": 60000, "dim": 512,
              "queries": 10000, "k": 200, "ours_s": 1.0, "sklearn_s": 5.0, "speedup": 5.0,
              "top1_agreement": 1.0, "neighbour_overlap": 1.0, "ours_top1": 0.8,
              "sklearn_top1": 0.8, "floor_s": 2.0, "max_speedup": 2.5},
             {"bench": "eval_throughput", "part": "gemm", "rows": 2000, "n": 60000, "dim": 512,
              "fp32_gflops_per_s": 150.0, "bf16_gflops_per_s": 330.0}]
    results = tmp_path / "results"
    results.mkdir()
    for name, recs in (("train", train), ("peer", peer), ("eval", evals)):
        (results / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    text = summarize.main(["--results", str(results)]).read_text()
    rows = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines()
            if line.startswith("| ")}
    assert "**reached**" in rows["Ray Train 1 worker >= 0.95x plain loop: moco_sym"]  # 0.972
    assert "**not reached**" in rows["method >= 0.95 of its compute limit: moco_sym"]  # 0.9
    assert "**reached**" in rows["ours (ray1) >= 1.15x lightly (fp32): byol"]
    assert "not measured" in rows["ours (ray1) >= 1.15x lightly (fp32): moco_sym"]
    assert not any("bf16" in key for key in rows)  # a bf16 reading is shown only when measured
    assert "**not reached**" in rows["kNN (faiss) >= 10x scikit-learn at 60k x 512"]
    assert "fp32 GEMM ceiling here: 2.500" in rows["kNN (faiss) >= 10x scikit-learn at 60k x 512"]
    assert "150.000 GFLOP/s fp32" in text
    assert "test cpu" in text and "python -m bench" in text


@pytest.mark.timeout(600)
def test_gpu_check_wiring_on_the_cpu(tmp_path: Path) -> None:
    """benchmarks/gpu_check.py at toy sizes on the CPU: every check emits its line (the GPU run
    itself needs a lent device; this keeps the script from rotting in between)."""
    from benchmarks import gpu_check

    out = tmp_path / "gpu.jsonl"
    assert gpu_check.main(["--device", "cpu", "--tiny", "--batch", "4", "--steps", "1",
                           "--images", "20", "--loader-workers", "0", "--out", str(out)]) == 0
    lines = _jsonl(out)
    train = [r for r in lines if r["check"] == "train"]
    assert {(r["method"], r["augment_on"], r["precision"]) for r in train} == {
        ("supervised", "loader", "fp32"),
        *{(m, a, p) for m in ("moco_v2", "byol") for a in ("loader", "device")
          for p in ("fp32", "bf16")}}
    assert all(r["images_per_s"] > 0 and r["device"] for r in train)
    assert all(r["ratio_vs_supervised"] > 0 for r in train if r["method"] != "supervised")
    assert {r["check"] for r in lines} == {"train", "knn", "kmeans", "shuffle"}
