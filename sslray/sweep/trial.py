"""A 1-worker trial trained inside its own Tune trial actor, without a Ray Train worker group.

A Ray Train run costs a controller actor, a placement group and a worker process that imports
torch again: about 10 s per trial (benchmarks/sweep_overhead.py), which a grid of thousands of
short trials pays thousands of times. A trial that needs one worker does not need any of it: the
trial actor reserves that worker's CPUs/GPU itself (`runner.trial_bundle`; which trials:
`spec.runs_in_trial`) and runs `fit()` in
process, reporting each epoch straight to Tune (`ray.tune.report`, so ASHA stops it per epoch
as before) with the whole training state as the epoch's checkpoint (so a retried or restored
trial resumes from `ray.tune.get_checkpoint()`).

What the run leaves is what `run_training` leaves in the trial's `train-<id>/` directory:
`config.json`, `final.pt` (+ method artifacts) and `result.json`; the trial directory holds the
same `config.json` and Tune's `result.json`, so the analysis package reads both paths alike.
Checkpoints are Tune's (`<trial dir>/checkpoint_<n>/`) instead of Train's
(`<trial dir>/train-<id>/checkpoint_<n>/`); `load_trained_state` reads `final.pt` first.
Multi-worker trials and the cc pipeline (several stages, of which only the last reports to Tune)
keep Ray Train.
"""

from __future__ import annotations

import json

import ray.tune
import torch

from sslray.config import RunConfig
from sslray.storage import Location
from sslray.training.loop import fit
from sslray.training.worker import epoch_reporter, resume_state


def train_in_trial(cfg: RunConfig, run: Location) -> dict[str, float]:
    """Train `cfg` in this Tune trial actor; returns the last epoch's metrics."""
    device = torch.device("cuda" if cfg.resources.use_gpu and torch.cuda.is_available()
                          else "cpu")
    torch.set_num_threads(max(1, int(cfg.resources.cpus_per_worker)))
    resume = resume_state(ray.tune.get_checkpoint(), cfg.method.name)
    resumed_from = float(resume["epoch"]) if resume else 0.0
    on_epoch_end = epoch_reporter(cfg, run, ray.tune.report, resumed_from,
                                  checkpoint_cls=ray.tune.Checkpoint)
    metrics = fit(cfg, device=device, resume=resume, on_epoch_end=on_epoch_end, verbose=False)
    metrics = {**metrics, "train/resumed_from_epoch": resumed_from}
    run.append_line(json.dumps(metrics, sort_keys=True), "result.json")
    return metrics
