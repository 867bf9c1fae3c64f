"""Shared fixtures: small configs on synthetic data, and ONE Ray instance per test session."""

from __future__ import annotations

import os
from typing import Any

import pytest

from sslray.cli.run_cmd import QUIET_RAY_ENV
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


@pytest.fixture(scope="session")
def ray_session():
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
