"""Starting (or joining) Ray for the CLI: the environment sslray runs Ray with, and the check
that refuses work a local Ray could never schedule.

Ray is started here and only here (`sslray run`, `sslray sweep`); the benchmarks and the test
suite use the same settings (`RAY_ENV`, `QUIET_RAY_ENV`).
"""

from __future__ import annotations

import logging
import os

# Ray settings sslray starts a local Ray with (a variable already set wins). The Train controller
# polls each worker every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (Ray's default 2 s); a worker's
# report waits if the previous one is still unpolled, so 0.5 s keeps short epochs from waiting.
# Images/s by interval: benchmarks/results/MEASUREMENTS.md#health-check-interval.
RAY_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5", "RAY_USAGE_STATS_ENABLED": "0"}

# Quiet, quick start-up for short-lived local Rays (the test suite, the benchmarks; set before Ray
# starts, the driver passes RAY_TRAIN_* variables on to the controller and the workers). See
# docs/ray.md#quiet-and-fast-settings.
QUIET_RAY_ENV = {
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_METRICS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_STATE_ACTOR_RECONCILIATION": "0",
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "30",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
}


def local_capacity() -> tuple[float, float]:
    """(CPUs, GPUs) a local Ray started here would have: Ray's own CPU count (cgroup-aware)."""
    import torch
    # Private Ray API (the only use of `ray._private` in sslray): the CPU count ray.init() itself
    # detects (cgroup-aware, RAY_NUM_CPUS...); no public function gives it before Ray starts.
    try:
        from ray._private.utils import get_num_cpus
    except ImportError:  # moved in a later Ray: the CPUs this process may use
        from sslray.provenance import usable_cpus

        cpus = float(usable_cpus())
    else:
        cpus = float(get_num_cpus())
    return cpus, float(torch.cuda.device_count())


def check_fits_locally(address: str | None, cpus: float, gpus: float, what: str,
                       fix: str) -> None:
    """A local Ray (no --address) never grows: refuse work that could never be scheduled on it,
    before anything is written. (On a cluster the autoscaler may still add nodes: no check.)"""
    import ray

    if address is not None or os.environ.get("RAY_ADDRESS") or ray.is_initialized():
        return
    from sslray.config import ConfigError

    have_cpus, have_gpus = local_capacity()
    short = [f"{need:g} {name} (this machine has {have:g})"
             for name, need, have in (("CPUs", cpus, have_cpus), ("GPUs", gpus, have_gpus))
             if need > have + 1e-9]
    if short:
        raise ConfigError(what, [f"needs {' and '.join(short)}, which the local Ray started "
                                 f"here can never give; {fix}, or pass --address of a cluster "
                                 f"that has (or can autoscale to) them"])


def start_ray(address: str | None, workers: int) -> None:
    import ray

    if ray.is_initialized() or workers == 0:
        return
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    if address is None:  # a local Ray: no spot preemption to watch for
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True,
             include_dashboard=address is None or None)
