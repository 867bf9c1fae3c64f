"""Shared fixtures: small configs on synthetic data, and ONE Ray instance per test session."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from sslray.cli.ray_setup import QUIET_RAY_ENV
from sslray.config import RunConfig, validate_raw

# Fast, quiet Ray Train settings: sslray's quiet start-up plus a 0.1 s controller poll, so the
# tiny test runs' sub-second epochs never wait for a poll.
FAST_RAY_ENV = {**QUIET_RAY_ENV, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1"}


def tiny_raw(**sections: Any) -> dict[str, Any]:
    """A run config that trains in about a second on the synthetic dataset."""
    raw: dict[str, Any] = {
        "name": "tiny",
        "seed": 0,
        "data": {"dataset": "synthetic", "synthetic_size": 128, "image_size": 16},
        "backbone": {"arch": "small_resnet", "width": 8, "blocks": [1, 1]},
        "method": {"name": "moco", "queue_size": 64, "dim": 16, "ema_decay": 0.9,
                   "augment": {"blur_p": 0.5}},
        "optim": {"lr": 0.05},
        "train": {"epochs": 2, "batch_size": 32},
        "eval": {"knn_k": 10, "at_init": True},
        "resources": {"workers": 0},
    }
    for name, values in sections.items():
        other_method = name == "method" and values.get("name", "moco") != raw["method"]["name"]
        if isinstance(values, dict) and isinstance(raw.get(name), dict) and not other_method:
            raw[name] = {**raw[name], **values}
        else:
            raw[name] = values
    return raw


def tiny_config(**sections: Any) -> RunConfig:
    return validate_raw(tiny_raw(**sections))


@pytest.fixture
def tiny() -> RunConfig:
    return tiny_config()


@pytest.fixture
def ray_session(_ray_cluster):
    """The session's Ray, once the previous test's actors have given their CPUs back.

    A finished Tune sweep or Train run tears its controller and workers down asynchronously; on
    this 2-CPU cluster a test started right after one (a 2-worker run needs both CPUs) would
    otherwise wait for a worker group that cannot be placed yet.
    """
    import time

    deadline = time.monotonic() + 90
    total = _ray_cluster.cluster_resources().get("CPU", 0.0)
    while _ray_cluster.available_resources().get("CPU", 0.0) < total - 1e-6:
        if time.monotonic() > deadline:
            break  # let the test run (and fail with Ray's own message) rather than hang here
        time.sleep(0.5)
    return _ray_cluster


@pytest.fixture(scope="session")
def _ray_cluster():
    """One small local Ray for every test that needs real Ray Train workers."""
    import ray

    old = {k: os.environ.get(k) for k in FAST_RAY_ENV}
    os.environ.update(FAST_RAY_ENV)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING",
             object_store_memory=256 * 1024**2)
    try:
        yield ray
    finally:
        ray.shutdown()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def build(cfg: RunConfig, **ctx: Any) -> Any:
    """The method module a run config names, as the training loop builds it (`ctx`: the
    MethodContext fields beyond the config's, e.g. num_samples=128)."""
    from sslray.methods import MethodContext, build_method

    return build_method(cfg.method, MethodContext.of(cfg, **ctx))


def three_step_losses(cfg: RunConfig) -> list[float]:
    """Losses of the first 3 optimiser steps of `cfg` (the golden-loss tests): batches 0-2 of
    epoch 0, weights seeded by cfg.seed, augmentation RNG seed 7, deterministic algorithms."""
    import torch

    from sslray.data.datasets import load_arrays
    from sslray.data.streams import ArrayStream
    from sslray.training.loop import Trainer

    data = load_arrays(cfg.data, "train")
    batches = list(ArrayStream(data, cfg.train.batch_size, 1, 0, cfg.seed).epoch(0))[:3]
    was_on = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        trainer = Trainer(cfg, steps_per_epoch=4, device="cpu")  # seeds the weights (cfg.seed)
        torch.manual_seed(7)  # the views' (and Jigsaw++'s puzzles') draws
        return [trainer.train_step(b)["loss"].item() for b in batches]
    finally:
        torch.use_deterministic_algorithms(was_on, warn_only=warn_only)


def trained_method(cfg: RunConfig, run_dir: Any) -> Any:
    """The method of `cfg`, its weights loaded from the finished run in `run_dir` (final.pt)."""
    from sslray.data.catalog import train_split_size
    from sslray.methods import MethodContext, as_module, build_method
    from sslray.storage import location
    from sslray.training.checkpoint import load_trained_state

    ctx = MethodContext.of(cfg, num_samples=train_split_size(cfg.data), for_training=False)
    method = build_method(cfg.method, ctx)
    as_module(method).load_state_dict(
        load_trained_state(location(run_dir), cfg.method.name)["model"])
    return method


def state_copy(module: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of a module's state (weights and buffers), safe against later training."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """The same names holding exactly equal tensors."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def backbone_tensors(model_state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The online backbone's tensors in a checkpoint's model state (MoCo: `backbone.*`), named
    as the backbone names them."""
    return {k.removeprefix("backbone."): v for k, v in model_state["model"].items()
            if k.startswith("backbone.")}


def spy_on(monkeypatch: pytest.MonkeyPatch, module: Any, name: str,
           part: Callable[[Any], nn.Module]) -> list[dict[str, torch.Tensor]]:
    """Wrap builder `module.name` so each call records `state_copy(part(built))`, as built."""
    calls: list[dict[str, torch.Tensor]] = []
    build = getattr(module, name)

    def recording(*args: Any, **kwargs: Any) -> Any:
        built = build(*args, **kwargs)
        calls.append(state_copy(part(built)))
        return built

    monkeypatch.setattr(module, name, recording)
    return calls
