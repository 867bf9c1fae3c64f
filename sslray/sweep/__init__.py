"""Sweeps: a YAML file -> validated trials (spec.py, no Ray) -> Ray Tune (runner.py)."""

from sslray.sweep.spec import SweepSpec, Trial, describe_sweep, expand, load_sweep

__all__ = ["SweepSpec", "Trial", "describe_sweep", "expand", "load_sweep"]
