"""`sslray eval`: a finished run's encoder measured again reproduces the run's own numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sslray.cli.main import main
from sslray.pipeline import run_any
from sslray.storage import location
from tests.conftest import tiny_config

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("eval") / "run"
    run_any(tiny_config(), location(run), verbose=False)
    return run


def test_eval_reproduces_the_runs_final_and_init_metrics(finished_run: Path) -> None:
    assert main(["eval", str(finished_run), "--init"]) == 0
    final = json.loads((finished_run / "result.json").read_text().splitlines()[-1])
    again = json.loads((finished_run / "eval.json").read_text().splitlines()[-1])
    for key in ("eval/knn_top1", "eval/knn_top1_init", "eval/linear_fast_top1",
                "eval/linear_fast_top1_init"):
        assert again[key] == pytest.approx(final[key], abs=1e-6), key
    assert again["epoch"] == 2


def test_eval_with_other_probes(finished_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(finished_run), "--set", "eval.knn_k=5",
                 "--set", "eval.transfer=[digits]"]) == 0
    out = capsys.readouterr().out
    assert "transfer/digits/knn_top1" in out and "k=5" in out
    last = json.loads((finished_run / "eval.json").read_text().splitlines()[-1])
    assert last["eval"]["knn_k"] == 5 and 0.0 <= last["transfer/digits/knn_top1"] <= 1.0


def test_eval_bad_input(finished_run: Path, tmp_path: Path,
                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(finished_run), "--set", "train.epochs=3"]) == 2
    assert "only eval.* keys (and method.probe, method.probe_grid)" in capsys.readouterr().err
    assert main(["eval", str(finished_run), "--set", "method.probe=tiles"]) == 2  # MoCo has none
    assert "method.probe" in capsys.readouterr().err
    assert main(["eval", str(tmp_path)]) == 2
    assert "not an sslray run directory" in capsys.readouterr().err
    (tmp_path / "config.json").write_text((finished_run / "config.json").read_text())
    assert main(["eval", str(tmp_path)]) == 2  # a config but no trained model
    assert "neither final.pt nor a checkpoint" in capsys.readouterr().err


def test_eval_pixels_and_centred_knn_match_the_probe_on_the_images(finished_run: Path) -> None:
    """`--set eval.pixels=true`: the probes on the images themselves (flattened as the network
    sees them), with eval.knn_center the memory's mean subtracted: the same number as kNN
    computed here from the arrays, and never the trained encoder's."""
    from sslray.config import validate_raw
    from sslray.data.catalog import image_spec
    from sslray.data.datasets import load_arrays
    from sslray.data.views import eval_transform
    from sslray.eval.knn import knn_top1

    assert main(["eval", str(finished_run), "--set", "eval.pixels=true",
                 "--set", "eval.knn_center=true"]) == 0
    last = json.loads((finished_run / "eval.json").read_text().splitlines()[-1])
    cfg = validate_raw(json.loads((finished_run / "config.json").read_text())["config"])
    spec = image_spec(cfg.data)
    train = load_arrays(cfg.data, "train", labeled=True)
    test = load_arrays(cfg.data, "test")
    flat = [eval_transform(d.images, spec).flatten(1) for d in (train, test)]
    e = cfg.eval
    expected = knn_top1(flat[0], train.labels, flat[1], test.labels,
                        k=min(e.knn_k, len(train.labels)), temperature=e.knn_temperature,
                        num_classes=train.num_classes, center=True)
    assert last["eval/knn_top1_pixels"] == pytest.approx(expected, abs=1e-6)
    assert last["eval"]["knn_center"] is True and "eval/linear_fast_top1_pixels" in last
