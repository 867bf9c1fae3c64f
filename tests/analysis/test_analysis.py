"""analysis/: sweep directory -> DataFrame -> paper tables, on a hand-written fixture sweep.

The fixture (tests/fixtures/sweep_momentum) is a MoCo momentum sweep with 2 epochs per trial:

    trial  ema    seed  status         final kNN  linear fast  kNN init  linear init
    00000  0.9    0     finished       0.70       0.80         0.50      0.60
    00001  0.9    1     finished       0.72       0.81         0.54      0.62   (no wall_s)
    00002  0.99   0     finished       0.75       0.79         0.52      0.60
    00003  0.99   1     finished       0.78       0.80         0.56      0.62
    00004  0.999  0     errored        0.99       -            0.99      -      (error.txt)
    00005  0.999  1     stopped early  0.90       -            0.58      -      (1 of 2 epochs)

Expected cells, by hand (sample std, ddof=1; percent, 1 decimal):
    0.9  kNN:    70, 72 -> mean 71.0, std sqrt(((-1)^2 + 1^2) / 1) = 1.414 -> "71.0 ± 1.4 (n=2)"
    0.99 kNN:    75, 78 -> mean 76.5, std sqrt(1.5^2 * 2)         = 2.121 -> "76.5 ± 2.1 (n=2)"
    0.9  linear: 80, 81 -> 80.5, std sqrt(0.5^2 * 2) = 0.707          -> "80.5 ± 0.7 (n=2)"
    0.99 linear: 79, 80 -> 79.5 ± 0.7
    random init kNN: seed 0 -> (50 + 52) / 2 = 51, seed 1 -> (54 + 56) / 2 = 55,
                     mean 53.0, std sqrt(2^2 * 2) = 2.828 -> "53.0 ± 2.8 (n=2)"
                     (pooling the 4 trials instead would give "53.0 ± 2.6 (n=4)")
    random init linear: seed 0 -> 60, seed 1 -> 62 -> "61.0 ± 1.4 (n=2)"
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from analysis import (
    ERRORED,
    FINISHED,
    NO_RESULT,
    STOPPED,
    SpecError,
    SweepDirError,
    TableError,
    build_table,
    list_specs,
    load_spec,
    load_sweep,
    load_sweep_meta,
    parse_spec,
    render_csv,
    render_latex,
    render_markdown,
    save_figure,
    tidy_frame,
)
from analysis.cli import main
from analysis.load import grid_keys
from analysis.render import latex_escape

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "sweep_momentum"
SHIPPED = [
    "byol_batch_size",
    "byol_predictor",
    "byol_tau",
    "cc_sources",
    "detection_transfer",
    "detection_voc_coco",
    "jigsaw_clusters",
    "methods_imagenet",
    "moco_dictionary",
    "moco_momentum",
    "moco_shuffle_bn",
    "quickstart",
    "recipe_budget",
    "recipe_byol",
    "recipe_demo",
    "recipe_moco_v2",
]

# The automatic caption for the fixture with a metric-columns spec holding kNN + linear fast.
PROTOCOL = (
    "Protocol: kNN k=200, T=0.07; linear probe fast (trained on cached frozen features); "
    "pre-training 2 epochs, batch 256, fashion_mnist (train subset 5000), backbone small_resnet."
)
PROVENANCE = (
    "Sweep moco_momentum_fixture (git abc1234; sslray 0.1.0, torch 2.14.1, ray 2.60.0, "
    "faiss 1.15.1). Trials: 4 finished, 1 stopped early, 1 errored; cells use finished trials. "
    "Compute: 0.05 device-hours."
)


@pytest.fixture(scope="module")
def df():
    return load_sweep(FIXTURE)


@pytest.fixture(scope="module")
def meta():
    return load_sweep_meta(FIXTURE)


def small_spec(**extra):
    """kNN + linear fast by momentum, with a random-init row: the shape most ablations use."""
    raw = {
        "title": "Momentum",
        "rows": "method.ema_decay",
        "row_header": "m",
        "init_row": "random init",
        "metrics": [
            {"metric": "eval/knn_top1", "header": "kNN"},
            {"metric": "eval/linear_fast_top1", "header": "linear"},
        ],
    }
    raw.update(extra)
    return parse_spec(raw, name="momentum_test")


# --- loading -------------------------------------------------------------------------------------


def test_load_sweep_one_row_per_trial_with_flat_config_and_final_metrics(df):
    assert len(df) == 6
    first = df.set_index("trial_id").loc["a1b2c_00000"]
    assert first["method.ema_decay"] == 0.9
    assert first["train.batch_size"] == 256
    assert first["data.dataset"] == "fashion_mnist"
    assert first["backbone.blocks"] == (1, 1, 1)  # lists become hashable tuples
    assert first["derived.effective_lr"] == 0.06
    assert first["label"] == "moco_v2" and first["seed"] == 0
    assert Path(first["trial_dir"]).parent == FIXTURE
    # Final metrics come from the LAST result line (epoch 2), not the first.
    assert first["epoch"] == 2.0 and first["eval/knn_top1"] == 0.70
    assert first["eval/linear_fast_top5"] == 0.97 and first["device_hours"] == 0.01
    # Tune's bookkeeping is dropped; its nested "config" must not leak into the columns.
    for key in ("config", "hostname", "time_total_s", "training_iteration", "done", "date"):
        assert key not in df.columns
    # wall_s falls back to Tune's time_total_s (trial 1 did not report wall_s): 2 x 18 s.
    assert df.set_index("trial_id").loc["a1b2c_00001", "wall_s"] == 36.0


def test_status_detection(df, tmp_path):
    status = dict(zip(df["trial_id"], df["status"]))
    assert status == {
        "a1b2c_00000": FINISHED,
        "a1b2c_00001": FINISHED,
        "a1b2c_00002": FINISHED,
        "a1b2c_00003": FINISHED,
        "a1b2c_00004": ERRORED,
        "a1b2c_00005": STOPPED,
    }
    # An empty or missing result.json: the trial never reported.
    copy = tmp_path / "sweep"
    shutil.copytree(FIXTURE, copy)
    trials = sorted(p for p in copy.iterdir() if p.is_dir())
    (trials[0] / "result.json").write_text("")
    (trials[1] / "result.json").unlink()
    (copy / "driver_artifacts").mkdir()  # a directory without config.json is not a trial
    again = load_sweep(copy)
    assert len(again) == 6
    assert list(again["status"][:2]) == [NO_RESULT, NO_RESULT]
    assert math.isnan(again["eval/knn_top1"][0])


def test_torn_last_result_line_is_skipped_with_a_warning(tmp_path):
    copy = tmp_path / "sweep"
    shutil.copytree(FIXTURE, copy)
    result = sorted(p for p in copy.iterdir() if p.is_dir())[0] / "result.json"
    result.write_text(result.read_text() + '{"epoch": 3.0, "eval/knn')
    with pytest.warns(UserWarning, match="unreadable result line"):
        again = load_sweep(copy)
    assert again["eval/knn_top1"][0] == 0.70


def test_nested_run_dir_is_not_a_trial_and_cluster_scores_are_read(tmp_path):
    copy = tmp_path / "sweep"
    shutil.copytree(FIXTURE, copy)
    trial = sorted(p for p in copy.iterdir() if p.is_dir())[0]
    run = trial / "train-a1b2c_00000"  # the trial's Train run dir (sslray/sweep/runner.py)
    (run / "clusters").mkdir(parents=True)
    shutil.copy(trial / "config.json", run / "config.json")
    (run / "clusters" / "clusters.json").write_text('{"k": 10, "nmi": 0.42, "purity": 0.5}')
    again = load_sweep(copy)
    assert len(again) == 6
    assert again["cluster/nmi"][0] == 0.42 and again["cluster/purity"][0] == 0.5
    assert math.isnan(again["cluster/nmi"][1])


def test_meta_defaults_without_sweep_json(meta, tmp_path):
    assert meta["git_revision"] == "abc1234" and meta["table"] == "moco_momentum"
    copy = tmp_path / "old_sweep"
    shutil.copytree(FIXTURE, copy)
    (copy / "sweep.json").unlink()
    bare = load_sweep_meta(copy)
    assert bare["name"] == "old_sweep" and bare["git_revision"] == "unknown"
    assert bare["table"] is None and bare["versions"] == {}


def test_not_a_sweep_dir_is_a_clear_error(tmp_path):
    with pytest.raises(SweepDirError, match="no such directory.*config.json"):
        load_sweep(tmp_path / "missing")
    with pytest.raises(SweepDirError, match="holds no trial directories;"):
        load_sweep(tmp_path)
    shutil.copytree(FIXTURE, tmp_path / "experiment")  # the storage root, not the sweep dir
    with pytest.raises(SweepDirError, match="did you mean .*experiment"):
        load_sweep(tmp_path)
    with pytest.raises(SweepDirError, match="only local paths"):
        load_sweep("s3://bucket/sweeps/x")


# --- tables --------------------------------------------------------------------------------------


def test_markdown_and_latex_exact(df, meta):
    table = build_table(df, small_spec(), meta)
    caption = (
        "Mean ± std over seeds, n = trials per cell; best per column in bold. "
        + PROTOCOL
        + ' Row "random init": the same backbone untrained, averaged within each seed, then '
        "mean ± std over seeds (n = seeds). " + PROVENANCE
    )
    assert render_markdown(table) == (
        f"**Momentum.** {caption}\n"
        "\n"
        "| m | kNN | linear |\n"
        "|---|---:|---:|\n"
        "| 0.9 | 71.0 ± 1.4 (n=2) | **80.5 ± 0.7 (n=2)** |\n"
        "| 0.99 | **76.5 ± 2.1 (n=2)** | 79.5 ± 0.7 (n=2) |\n"
        "| 0.999 | – | – |\n"  # ran (errored / stopped early) but nothing finished
        "| random init | 53.0 ± 2.8 (n=2) | 61.0 ± 1.4 (n=2) |\n"
    )
    tex_caption = (
        caption.replace("±", r"$\pm$")
        .replace("fashion_mnist", r"fashion\_mnist")
        .replace("small_resnet", r"small\_resnet")
        .replace("moco_momentum_fixture", r"moco\_momentum\_fixture")
    )
    assert render_latex(table) == (
        "\\begin{table}[t]\n"
        "\\centering\n"
        f"\\caption{{Momentum. {tex_caption}}}\n"
        "\\label{tab:momentum_test}\n"
        "\\begin{tabular}{lrr}\n"
        "\\toprule\n"
        "m & kNN & linear \\\\\n"
        "\\midrule\n"
        "0.9 & 71.0 $\\pm$ 1.4 (n=2) & \\textbf{80.5 $\\pm$ 0.7 (n=2)} \\\\\n"
        "0.99 & \\textbf{76.5 $\\pm$ 2.1 (n=2)} & 79.5 $\\pm$ 0.7 (n=2) \\\\\n"
        "0.999 & -- & -- \\\\\n"
        "\\midrule\n"
        "random init & 53.0 $\\pm$ 2.8 (n=2) & 61.0 $\\pm$ 1.4 (n=2) \\\\\n"
        "\\bottomrule\n"
        "\\end{tabular}\n"
        "\\end{table}\n"
    )


def test_shipped_momentum_spec_adds_the_paper_column(df, meta):
    table = build_table(df, load_spec("moco_momentum"), meta)
    lines = render_markdown(table).splitlines()
    assert lines[2:] == [
        "| momentum m | kNN top-1 | linear top-1 (fast) | paper |",
        "|---|---:|---:|---|",
        "| 0.9 | 71.0 ± 1.4 (n=2) | **80.5 ± 0.7 (n=2)** | 55.2 |",
        "| 0.99 | **76.5 ± 2.1 (n=2)** | 79.5 ± 0.7 (n=2) | 57.8 |",
        "| 0.999 | – | – | 59.0 |",
        "| random init | 53.0 ± 2.8 (n=2) | 61.0 ± 1.4 (n=2) | – |",
    ]
    assert lines[0].startswith("**Momentum of the key encoder (MoCo Sec. 4.1).** Paper column:")
    assert lines[0].endswith(PROVENANCE)
    tex = render_latex(table)
    assert "0.9 & 71.0 $\\pm$ 1.4 (n=2) & \\textbf{80.5 $\\pm$ 0.7 (n=2)} & 55.2 \\\\\n" in tex
    assert "(\\%)" in tex  # the spec's caption "(%)" is escaped


def test_init_row_averages_within_seed_then_across_seeds(df, meta):
    init = build_table(df, small_spec(), meta).rows[-1]
    assert init.is_init and init.label == "random init"
    knn = init.cells[0]
    assert knn.n == 2  # seeds, not trials
    assert knn.mean == pytest.approx(53.0)
    assert knn.std == pytest.approx(2.0 * math.sqrt(2))  # 2.83; trial pooling would give 2.58
    assert not knn.best  # the baseline never competes for bold


def test_init_rows_split_by_backbone(df, meta):
    """A cc target (alexnet_small) and a ResNet never share a random-init row."""
    mixed = df.copy()
    mixed["backbone.arch"] = ["alexnet_small" if s == 0 else "small_resnet"
                              for s in mixed["seed"]]
    rows = [r for r in build_table(mixed, small_spec(), meta).rows if r.is_init]
    assert [r.label for r in rows] == ["random init (alexnet_small)", "random init (small_resnet)"]
    assert all(r.cells[0].n == 1 for r in rows)  # one seed each
    assert [r.cells[0].mean for r in rows] == [pytest.approx(51.0), pytest.approx(55.0)]


def test_init_rows_split_by_image_size_and_width(df, meta):
    """A trunk probed at 48 px has its own random init, as does a second width of one arch."""
    mixed = df.copy()
    mixed["backbone.arch"] = "small_resnet"
    mixed["data.image_size"] = [48 if s == 0 else None for s in mixed["seed"]]
    rows = [r for r in build_table(mixed, small_spec(), meta).rows if r.is_init]
    assert [r.label for r in rows] == ["random init (small_resnet)",
                                       "random init (small_resnet, 48 px)"]
    mixed["data.image_size"] = None
    mixed["backbone.width"] = [8 if s == 0 else 16 for s in mixed["seed"]]
    rows = [r for r in build_table(mixed, small_spec(), meta).rows if r.is_init]
    assert [r.label for r in rows] == ["random init (small_resnet, width 16)",
                                       "random init (small_resnet, width 8)"]
    mixed["backbone.width"] = None
    mixed["method.probe"] = ["tiles" if s == 0 else None for s in mixed["seed"]]
    mixed["method.probe_grid"] = [4.0 if s == 0 else None for s in mixed["seed"]]
    rows = [r for r in build_table(mixed, small_spec(), meta).rows if r.is_init]
    assert [r.label for r in rows] == ["random init (small_resnet)",
                                       "random init (small_resnet, 4x4 tiles)"]
    assert [r.cells[0].mean for r in rows] == [pytest.approx(55.0), pytest.approx(51.0)]
    mixed["method.probe"], mixed["method.probe_grid"] = None, None
    mixed["backbone.pool_grid"] = [2 if s == 0 else 1 for s in mixed["seed"]]
    rows = [r for r in build_table(mixed, small_spec(), meta).rows if r.is_init]
    assert [r.label for r in rows] == ["random init (small_resnet)",
                                       "random init (small_resnet, 2x2 pooled)"]
    assert [r.cells[0].mean for r in rows] == [pytest.approx(55.0), pytest.approx(51.0)]
    mixed["backbone.pool_grid"] = 1
    mixed["eval.layer"] = ["stage-2" if s == 0 else "final" for s in mixed["seed"]]
    rows = [r for r in build_table(mixed, small_spec(), meta).rows if r.is_init]
    assert [r.label for r in rows] == ["random init (small_resnet)",
                                       "random init (small_resnet, stage-2)"]
    assert [r.cells[0].mean for r in rows] == [pytest.approx(55.0), pytest.approx(51.0)]
    mixed["eval.layer"] = "final"
    mixed["eval.pool_grid"] = [4.0 if s == 0 else float("nan") for s in mixed["seed"]]
    rows = [r for r in build_table(mixed, small_spec(), meta).rows if r.is_init]
    assert [r.label for r in rows] == ["random init (small_resnet)",
                                       "random init (small_resnet, probed 4x4)"]
    assert [r.cells[0].mean for r in rows] == [pytest.approx(55.0), pytest.approx(51.0)]


def test_retried_trial_that_finished_is_finished(tmp_path):
    """`sslray sweep --resume` retries an errored trial; its old error.txt stays behind."""
    copy = tmp_path / "sweep"
    shutil.copytree(FIXTURE, copy)
    finished = next(d for d in sorted(copy.iterdir()) if (d / "config.json").is_file()
                    and load_sweep(copy).set_index("trial_dir").loc[str(d), "status"] == FINISHED)
    (finished / "error.txt").write_text("an earlier attempt failed")
    frame = load_sweep(copy).set_index("trial_dir")
    assert frame.loc[str(finished), "status"] == FINISHED


def test_include_stopped_and_single_trial_cells(df, meta):
    table = build_table(df, small_spec(include_stopped=True), meta)
    lines = render_markdown(table).splitlines()
    # The stopped trial (0.999, seed 1, epoch 1 of 2) now counts: a single value has no "± 0".
    assert lines[6] == "| 0.999 | **90.0 (n=1)** | – |"
    # Init: seed 0 -> 51, seed 1 -> (54 + 56 + 58) / 3 = 56; mean 53.5, std sqrt(2.5^2 * 2) = 3.54
    assert lines[7] == "| random init | 53.5 ± 3.5 (n=2) | 61.0 ± 1.4 (n=2) |"
    assert "cells use finished and stopped-early trials" in lines[0]
    # The errored trial never counts.
    assert all(t != ERRORED for t in table.trials["status"])


def test_filter_and_mode_min(df, meta):
    spec = small_spec(filter={"seed": 0}, mode="min", init_row=None)
    lines = render_markdown(build_table(df, spec, meta)).splitlines()
    assert lines[4:] == [
        "| 0.9 | **70.0 (n=1)** | 80.0 (n=1) |",
        "| 0.99 | 75.0 (n=1) | **79.0 (n=1)** |",
        "| 0.999 | – | – |",
    ]
    assert "Only trials with seed=0." in lines[0]
    assert "Trials: 2 finished, 1 errored;" in lines[0]  # counts after the filter


def test_pivot_row_order_names_and_per_column_best(df, meta):
    spec = parse_spec(
        {
            "title": "Pivot",
            "rows": "method.ema_decay",
            "columns": "seed",
            "metric": "eval/knn_top1",
            "row_order": [0.99, 0.9, 0.5],  # 0.5 is absent from the data: skipped
            "row_names": {0.99: "m=0.99"},
            "column_names": {0: "seed 0"},
        },
        name="pivot",
    )
    lines = render_markdown(build_table(df, spec, meta)).splitlines()
    assert lines[2:] == [
        "| method.ema_decay | seed 0 | 1 |",
        "|---|---:|---:|",
        "| m=0.99 | **75.0 (n=1)** | **78.0 (n=1)** |",
        "| 0.9 | 70.0 (n=1) | 72.0 (n=1) |",
        "| 0.999 | – | – |",
    ]


def test_grid_keys_pooled_inside_a_cell_are_named(df, meta):
    spec = parse_spec({"rows": "label", "metrics": ["eval/knn_top1"]}, name="by_label")
    table = build_table(df, spec, meta)
    note = "Note: cells pool trials that differ in method.ema_decay (0.9, 0.99)."
    assert note in table.caption
    assert table.rows[0].cells[0].n == 4
    # Variant sweeps keep their grids per trial (config.json "trial.grid"), not in sweep.json.
    assert note in build_table(df, spec, {**meta, "grid": {}}).caption
    assert grid_keys({"train.batch_size,method.queue_size": []}) == [
        "train.batch_size",
        "method.queue_size",
    ]
    # A smoke sweep's numbers check the plumbing only; the caption says so first.
    smoke = build_table(df, spec, {**meta, "smoke": True}).caption
    assert smoke.startswith("SMOKE RUN")


def test_csv_is_tidy(df, meta):
    table = build_table(df, small_spec(), meta)
    text = render_csv(table)
    assert text.splitlines()[0] == "row,row_value,column,metric,mean,std,n,best,scale,paper"
    tidy = tidy_frame(table)
    assert len(tidy) == 4 * 2  # (3 rows + init) x 2 metrics
    cell = tidy[(tidy["row"] == "0.99") & (tidy["metric"] == "eval/knn_top1")].iloc[0]
    assert cell["mean"] == pytest.approx(76.5) and cell["std"] == pytest.approx(1.5 * math.sqrt(2))
    assert cell["n"] == 2 and bool(cell["best"])
    assert set(tidy[tidy["row"] == "random init"]["metric"]) == {
        "eval/knn_top1_init",
        "eval/linear_fast_top1_init",
    }


def test_figure_png_and_svg(df, meta, tmp_path):
    table = build_table(df, load_spec("moco_momentum"), meta)
    paths = save_figure(table, tmp_path)
    assert [p.name for p in paths] == ["moco_momentum.png", "moco_momentum.svg"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in paths[1].read_bytes()[:2000]
    # A series figure on a log axis (the shape of MoCo Fig. 3).
    spec = parse_spec(
        {
            "rows": "method.ema_decay",
            "metrics": ["eval/knn_top1"],
            "figure": {"x": "method.queue_size", "y": "eval/knn_top1", "series": "seed",
                       "logx": True},
        },
        name="series",
    )
    series = save_figure(build_table(df, spec, meta), tmp_path)
    assert all(p.stat().st_size > 1000 for p in series)
    assert save_figure(build_table(df, small_spec(), meta), tmp_path) == []  # no figure: no file


# --- specs ---------------------------------------------------------------------------------------


def test_every_shipped_spec_loads():
    assert list_specs() == SHIPPED
    for name in SHIPPED:
        spec = load_spec(name)
        assert spec.name == name and spec.metrics
    momentum = load_spec("moco_momentum").paper
    # docs/papers.md#moco-momentum-ablation
    assert momentum[0.999] == "59.0" and momentum[0.9] == "55.2"
    assert load_spec("byol_tau").paper[0.99] == "72.5"  # docs/papers.md#byol-target-decay
    imagenet = load_spec("methods_imagenet").paper  # docs/papers.md#headline-numbers
    assert imagenet["moco_v1"].startswith("60.6") and imagenet["byol"].startswith("74.3")
    pivot = load_spec("moco_dictionary")
    assert pivot.is_pivot and pivot.figure is not None and pivot.figure.logx


def test_bad_spec_keys_are_named():
    with pytest.raises(SpecError, match=r"metrcs: unknown key \(did you mean 'metrics'\?\)"):
        parse_spec({"rows": "label", "metrcs": []}, name="x")
    with pytest.raises(SpecError, match=r"metrics\[0\]\.heder: unknown key"):
        parse_spec({"rows": "label", "metrics": [{"metric": "a/b", "heder": "x"}]}, name="x")
    with pytest.raises(SpecError, match="figure.y: required"):
        parse_spec({"rows": "label", "metrics": ["a/b"], "figure": {"x": "seed"}}, name="x")
    with pytest.raises(SpecError, match="mode: must be max or min"):
        parse_spec({"rows": "label", "metrics": ["a/b"], "mode": "best"}, name="x")
    with pytest.raises(SpecError, match="init_row: only for shape A"):
        parse_spec({"rows": "a", "columns": "b", "metric": "c/d", "init_row": "r"}, name="x")
    with pytest.raises(SpecError, match="rows: required"):
        parse_spec({"metrics": ["a/b"]}, name="x")
    with pytest.raises(SpecError, match="unknown spec 'nope'; shipped specs: byol_batch_size"):
        load_spec("nope")


def test_spec_that_does_not_fit_the_sweep(df, meta):
    with pytest.raises(TableError, match="rows: column 'method.k' is not in this sweep"):
        build_table(df, load_spec("jigsaw_clusters"), meta)
    spec = parse_spec({"rows": "label", "metrics": ["a/b"], "filter": {"method.kk": 1}}, name="x")
    with pytest.raises(TableError, match="filter.method.kk: column 'method.kk'"):
        build_table(df, spec, meta)


def test_latex_escape():
    assert latex_escape("a_b 50% & #1 {x} ±") == r"a\_b 50\% \& \#1 \{x\} $\pm$"


# --- command line --------------------------------------------------------------------------------


def test_cli_writes_three_tables_and_the_figure(tmp_path, capsys):
    out = tmp_path / "out"
    assert main([str(FIXTURE), "--out", str(out), "--format", "tex"]) == 0
    captured = capsys.readouterr()
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert names == [
        "figures/moco_momentum.png",
        "figures/moco_momentum.svg",
        "tables/moco_momentum.csv",
        "tables/moco_momentum.md",
        "tables/moco_momentum.tex",
    ]
    assert captured.out == (out / "tables" / "moco_momentum.tex").read_text()
    assert captured.out.startswith("\\begin{table}")
    assert f"wrote {out / 'tables' / 'moco_momentum.md'}" in captured.err
    assert all(p.stat().st_size > 0 for p in out.rglob("*") if p.is_file())


def test_cli_spec_path_and_bad_input_exit_2(tmp_path, capsys):
    spec_file = tmp_path / "mine.yaml"
    spec_file.write_text("rows: method.ema_decay\nmetrics: [eval/knn_top1]\n")
    assert main([str(FIXTURE), "--spec", str(spec_file), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "tables" / "mine.md").is_file()
    capsys.readouterr()

    missing = tmp_path / "no_such_sweep"
    assert main([str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no_such_sweep: no such directory" in err
    assert not missing.exists()  # nothing created

    spec_file.write_text("rows: method.ema_decay\nmetrics: [eval/knn_top1]\nrow_oder: [0.9]\n")
    before = (tmp_path / "tables" / "mine.md").read_text()
    assert main([str(FIXTURE), "--spec", str(spec_file), "--out", str(tmp_path)]) == 2
    assert "row_oder: unknown key (did you mean 'row_order'?)" in capsys.readouterr().err
    assert (tmp_path / "tables" / "mine.md").read_text() == before  # the old table survives

    assert main([str(FIXTURE), "--spec", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown spec 'nope'" in capsys.readouterr().err


def test_cli_help_has_an_example(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "python -m analysis results/moco_momentum" in text and "moco_dictionary" in text


def test_imports_neither_torch_nor_ray():
    code = (
        "import sys, analysis, analysis.cli, analysis.figure; "
        "light = {'sslray', 'sslray.strict', 'sslray.atomic_file'}; "  # stdlib, yaml, pydantic
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'ray') "
        "or m.split('.')[0] == 'sslray' and m not in light]; "
        "assert not bad, bad"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_pipeline_cost_sums_its_stages():
    from analysis.load import _final_metrics

    out = _final_metrics({"epoch": 2.0, "device_hours": 0.5, "wall_s": 100.0,
                          "source/device_hours": 0.25, "source/wall_s": 40.0,
                          "cluster/device_hours": 0.125, "cluster/wall_s": 5.0})
    assert out["device_hours"] == 0.875 and out["wall_s"] == 145.0


def test_method_figure_draws_the_pixel_line_and_names_each_backbone(tmp_path, monkeypatch):
    """A quickstart-shaped figure: a dashed raw-pixels line at the pixels' mean, a random-init
    line per backbone, and each method's backbone under its tick."""
    import matplotlib.axes
    import pandas as pd

    from analysis.figure import _archs
    from analysis.values import norm_value

    rows = []
    for seed in (0, 1):
        for label, arch, knn in (("moco_v2", "small_resnet", 0.8), ("cc_jigsaw_pp",
                                                                    "alexnet_small", 0.7)):
            rows.append({"label": label, "seed": seed, "backbone.arch": arch, "status": "finished",
                         "eval/knn_top1": knn + 0.01 * seed, "eval/knn_top1_init": knn - 0.1,
                         "eval/knn_top1_pixels": 0.78 + 0.01 * seed})
    trials = pd.DataFrame(rows)
    assert _archs(trials, "label") == {norm_value("moco_v2"): "small_resnet",
                                       norm_value("cc_jigsaw_pp"): "alexnet_small"}
    tiles = trials.assign(**{"method.probe": ["tiles" if lab == "cc_jigsaw_pp" else None
                                              for lab in trials["label"]],
                             "method.probe_grid": 4.0})
    assert _archs(tiles, "label")[norm_value("cc_jigsaw_pp")] == "alexnet_small, 4x4 tiles"
    pooled = trials.assign(**{"backbone.pool_grid": [2 if lab == "cc_jigsaw_pp" else 1
                                                     for lab in trials["label"]]})
    assert _archs(pooled, "label") == {norm_value("moco_v2"): "small_resnet",
                                       norm_value("cc_jigsaw_pp"): "alexnet_small, 2x2 pooled"}
    layer = trials.assign(**{"eval.layer": ["stage-2" if lab == "moco_v2" else "final"
                                            for lab in trials["label"]]})
    assert _archs(layer, "label")[norm_value("moco_v2")] == "small_resnet, stage-2"
    lines: list[tuple[float, str]] = []
    real = matplotlib.axes.Axes.axhline

    def spy(self, y=0, *args, **kwargs):
        lines.append((round(y, 6), kwargs.get("label")))
        return real(self, y, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "axhline", spy)
    spec = parse_spec({"rows": "label", "metrics": ["eval/knn_top1"], "init_row": "random init",
                       "pixels_row": "raw pixels",
                       "figure": {"x": "label", "y": "eval/knn_top1", "xcategorical": True}},
                      name="methods")
    assert save_figure(build_table(trials, spec, {}), tmp_path)
    assert (78.5, "raw pixels") in lines
    assert {label for _, label in lines} == {"raw pixels", "random init (alexnet_small)",
                                             "random init (small_resnet)"}
