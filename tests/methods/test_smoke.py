"""A smoke-train of every registered method through the real loop (no Ray)."""

from __future__ import annotations

import math

import pytest

from sslray.methods import METHODS
from sslray.training.loop import StageInputs, fit
from tests.conftest import build, tiny_config

# Tiny settings per method; a method registered without an entry here fails the test below.
SMOKE_METHOD = {
    "moco": {"name": "moco", "queue_size": 64, "dim": 16, "bn_splits": 2},
    "byol": {"name": "byol", "hidden_dim": 32, "proj_dim": 8, "tau_base": 0.99, "bn": "local"},
    "jigsaw_pp": {"name": "jigsaw_pp", "num_permutations": 10, "crop_size": 24, "tile_size": 6,
                  "jitter": 1, "channel_shift_px": 1, "tile_dim": 16, "hidden_dim": 32,
                  "dropout": 0.0},
    "supervised": {"name": "supervised"},
    "cc": {"name": "cc", "source": "tiny", "k": 4},  # + a pseudo-labels file: smoke_method()
}


def smoke_inputs(name: str) -> StageInputs | None:
    """What earlier pipeline stages would hand the method: cc gets pseudo-labels (here the
    synthetic training split's true labels, so its kNN must beat chance too)."""
    if name != "cc":
        return None
    from sslray.data.datasets import load_arrays

    return StageInputs(pseudo_labels=load_arrays(tiny_config().data, "train").labels.numpy())


def test_every_registered_method_has_a_smoke_config():
    assert set(SMOKE_METHOD) == set(METHODS)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_smoke_train(name):
    cfg = tiny_config(method=SMOKE_METHOD[name], train={"epochs": 2, "batch_size": 32})
    seen = []
    metrics = fit(cfg, on_epoch_end=lambda m, t: seen.append(m), verbose=False,
                  inputs=smoke_inputs(name))
    assert [m["epoch"] for m in seen] == [1.0, 2.0]
    assert math.isfinite(metrics["train/loss"]) and metrics["train/loss"] > 0
    assert 0.0 < metrics["train/feature_std"] <= 1.0
    assert 0.0 <= metrics["eval/knn_top1"] <= 1.0
    assert metrics["eval/knn_top1"] > 1.0 / cfg.data.synthetic_classes  # above chance
    assert "eval/knn_top1_init" in metrics
    # what the evaluations cost, at init and at the end (the last epoch always evaluates)
    assert 0.0 < metrics["train/eval_init_s"] and 0.0 < metrics["train/eval_s"]


def test_moco_symmetric_and_no_shuffle_variants_train():
    for method in ({"symmetric": True}, {"bn": "none"}, {"bn": "split", "bn_splits": 4}):
        cfg = tiny_config(method={**SMOKE_METHOD["moco"], **method}, train={"epochs": 1})
        assert math.isfinite(fit(cfg, verbose=False)["train/loss"])


def test_byol_variants_train():
    for method, optim in (({"predictor": False}, {}), ({"tau_schedule": "fixed"}, {}),
                          ({}, {"name": "lars", "lr": 0.2, "warmup_epochs": 0.5})):
        cfg = tiny_config(method={**SMOKE_METHOD["byol"], **method}, optim=optim,
                          train={"epochs": 1})
        assert math.isfinite(fit(cfg, verbose=False)["train/loss"])


def test_sync_bn_on_cpu_falls_back_with_a_warning():
    for method in ({**SMOKE_METHOD["moco"], "bn": "sync"}, {**SMOKE_METHOD["byol"], "bn": "sync"}):
        cfg = tiny_config(method=method, train={"epochs": 1})
        with pytest.warns(RuntimeWarning, match="bn: sync needs GPU workers"):
            metrics = fit(cfg, verbose=False)
        assert math.isfinite(metrics["train/loss"])


def test_byol_without_head_bn_has_none():
    from torch import nn


    model = build(tiny_config(method={**SMOKE_METHOD["byol"], "bn": "none"}))
    heads = list(model.projector.modules()) + list(model.predictor.modules())
    assert not any(isinstance(m, nn.BatchNorm1d) for m in heads)


@pytest.mark.parametrize(
    "name", ["fmnist_moco_v2", "fmnist_moco_v1", "fmnist_byol", "fmnist_jigsaw_pp"]
)
def test_builtin_cpu_configs_smoke_train(name):
    from sslray.config import load_config
    from sslray.data.datasets import DEBIAN_FASHION_MNIST

    if not DEBIAN_FASHION_MNIST.is_dir():
        pytest.skip("dataset-fashion-mnist not installed")
    cfg = load_config(name, ["resources.workers=0"]).smoke()
    metrics = fit(cfg, verbose=False)
    assert math.isfinite(metrics["train/loss"]) and "eval/linear_fast_top1" in metrics
