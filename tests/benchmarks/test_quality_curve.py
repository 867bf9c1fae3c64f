"""benchmarks/quality_curve.py: the epoch arithmetic, cc's schedule, and a whole toy curve
through the real `sslray run` / `sslray eval` (its figures mean nothing at this size)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks import quality_curve
from sslray.config import load_config
from sslray.pipeline import source_config


def test_budget_epochs_fill_the_budget_after_the_fixed_cost() -> None:
    cal = {"fixed_s": 30.0, "epoch_s": 9.0}
    assert quality_curve.budget_epochs(4, cal) == 23  # (240 - 30) / 9 = 23.3
    assert quality_curve.budget_epochs(0.5, cal) == 0  # below the fixed cost: skipped


def test_cc_runs_its_source_on_the_same_schedule() -> None:
    cfg = load_config("fmnist_cc", quality_curve.epochs_override("cc", 7))
    assert cfg.train.epochs == 7 and source_config(cfg).train.epochs == 7
    assert quality_curve.epochs_override("moco_v2", 7) == ["train.epochs=7"]


@pytest.mark.timeout(400)
def test_a_toy_curve_end_to_end(tmp_path: Path) -> None:
    out, fig = tmp_path / "q.jsonl", tmp_path / "q.png"
    # (the 60k memory is left out: extracting it would be most of a toy run's fixed cost)
    toy = ["data.train_subset=256", "data.test_subset=500", "backbone.width=4",
           "train.batch_size=64", "resources.workers=0", "eval.knn_memory=pretrain"]
    records = quality_curve.main(["--methods", "moco_v2", "--budgets", "0.75", "--wait-quiet",
                                  "0", "--workdir", str(tmp_path / "runs"), "--out", str(out),
                                  "--figure", str(fig), *[a for s in toy for a in ("--set", s)]])
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["kind"] for r in lines] == ["calibration", "reference", "budget"] == [
        r["kind"] for r in records]
    cal, ref, run = lines
    assert run["epochs"] == math.floor((45 - cal["fixed_s"]) / cal["epoch_s"]) >= 1
    config = json.loads((tmp_path / "runs" / "moco_v2-0.75min" / "config.json").read_text())
    assert config["config"]["train"]["epochs"] == run["epochs"]
    for rec in (cal, run, ref["pixels"], ref["init"]):
        assert {"knn", "linear"} <= set(rec) and 0 < rec["knn"] <= 1
    assert ref["pixels"] != ref["init"] and run["wall_s"] > 0 and run["backbone"] == "small_resnet"
    assert fig.stat().st_size > 10_000  # a drawn PNG


def test_plot_takes_the_newest_run_of_each_method_and_budget(tmp_path: Path) -> None:
    """`--plot`: a curve measured in parts (budgets on different days) is drawn from its JSON
    lines, a re-measured point replacing the older one, without training anything."""
    def rec(kind: str, ts: str, **kw: object) -> dict[str, object]:
        return {"benchmark": "quality_curve", "kind": kind, "timestamp": ts, **kw}

    point = dict(method="moco_v2", label="MoCo v2", backbone="small_resnet", epochs=3,
                 wall_s=60.0, knn_60k=0.7, linear=0.7)
    lines = [rec("reference", "2026-01-01", method="moco_v2", backbone="small_resnet",
                 pixels={"knn": 0.78}, init={"knn": 0.6}),
             rec("budget", "2026-01-01", budget_min=1.0, knn=0.70, **point),
             rec("budget", "2026-01-02", budget_min=1.0, knn=0.72, **point),
             rec("budget", "2026-01-01", budget_min=4.0, knn=0.80, **point),
             {"benchmark": "other", "kind": "budget"}]
    jsonl, fig = tmp_path / "q.jsonl", tmp_path / "q.png"
    jsonl.write_text("".join(json.dumps(x) + "\n" for x in lines))
    rows = quality_curve.main(["--plot", str(jsonl), "--figure", str(fig)])
    assert [(r["budget_min"], r["knn"]) for r in rows] == [(1.0, 0.72), (4.0, 0.80)]
    assert fig.stat().st_size > 10_000
    with pytest.raises(SystemExit, match="not a file"):
        quality_curve.main(["--plot", str(tmp_path / "missing.jsonl")])
