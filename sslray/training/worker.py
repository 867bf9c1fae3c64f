"""The one Ray Train entry point: a TorchTrainer whose workers run `fit()`.

Each worker resumes from `ray.train.get_checkpoint()` when there is one (a worker-group restart
after a failure, or a re-run with the same run directory), reports once per epoch, and rank 0
attaches the whole training state as a checkpoint to each report.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import ray.train
import ray.train.torch
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer
from ray.train.v2.api.config import LoggingConfig

from sslray.config import RunConfig
from sslray.eval.evaluator import SLOW_EVAL_ENV
from sslray.methods import SSLMethod
from sslray.storage import Location, location
from sslray.training.checkpoint import FINAL_FILE, STATE_FILE, load_state, save_state
from sslray.training.loop import EpochCallback, StageInputs, Trainer, fit

# Fault injection for tests: SIGKILL the rank-0 worker process once, in the middle of the epoch
# after this one (after its first step, once this epoch's checkpoint is registered).
FAULT_ENV = "SSLRAY_FAULT_KILL_AFTER_EPOCH"


def _maybe_inject_fault(target: str | None, epoch: int, step: int, marker_dir: Path) -> None:
    """SIGKILL this worker once, mid-epoch: after step 0 of 0-based epoch `target`, i.e. of the
    epoch that follows the reported (and checkpointed) epoch number `target` (a recovery test).

    The controller registers a reported checkpoint when it next polls the workers (every
    RAY_TRAIN_HEALTH_CHECK_INTERVAL_S); a process killed before that poll loses the checkpoint,
    as on any real failure. Waiting two poll intervals makes the test kill land after it.
    """
    marker = marker_dir / ".fault_injected"
    if not target or int(target) != epoch or step != 0 or marker.exists():
        return
    marker.write_text(f"{epoch + 1}:{step + 1}")  # the epoch and step it died in (1-based)
    time.sleep(2 * float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "2.0")) + 0.5)
    os.kill(os.getpid(), signal.SIGKILL)


def _quiet_ray_train_logs() -> None:
    """Ray Train logs every report at INFO under a file-named logger; our epoch line says it.

    Private Ray API (the only use of `ray.train.v2._internal` in sslray): Train V2 names that
    logger after its module file and offers no public switch for it. If the module moves in a
    later Ray, the reports are merely logged again.
    """
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def save_final_model(state: dict[str, Any], method: SSLMethod, run: Location, tmp: Path) -> None:
    """`final.pt` in the run directory: the trained model (no optimiser), for later stages
    (the cc pipeline's k-means) and evaluation. Written before the last report, so a trial
    that a scheduler stops right after it still has it; Ray Train local mode keeps no
    checkpoints, so this file is the one artifact every mode leaves."""
    model_only = {k: v for k, v in state.items() if k not in ("optimizer", "rng")}
    save_state(model_only, tmp / FINAL_FILE)
    run.write_bytes((tmp / FINAL_FILE).read_bytes(), FINAL_FILE)
    for name, array in method.artifacts().items():  # e.g. Jigsaw++'s permutation set
        run.save_npy(array, name)


def resume_state(ckpt: Checkpoint | None, method: str) -> dict[str, Any] | None:
    """The training state in a Ray (Train or Tune) checkpoint, or None to start afresh."""
    if ckpt is None:
        return None
    with ckpt.as_directory() as d:
        return load_state(Path(d) / STATE_FILE, method)


def epoch_reporter(cfg: RunConfig, run: Location, report: Callable[..., None],
                   resumed_from: float, checkpoints: bool = True,
                   checkpoint_cls: type[Checkpoint] = Checkpoint) -> EpochCallback:
    """The `fit()` epoch callback of both ways to train a run on Ray: `report(metrics,
    checkpoint=...)` (ray.train.report or ray.tune.report) with the whole training state as the
    checkpoint (`checkpoints=False`: the ranks whose reports Ray Train drops), and final.pt
    written before the last epoch's report. `checkpoint_cls`: the report's own class
    (ray.tune.report warns on every report given a ray.train.Checkpoint)."""

    def on_epoch_end(metrics: dict[str, float], trainer: Trainer) -> None:
        metrics = {**metrics, "train/resumed_from_epoch": resumed_from}
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if checkpoints:
                state = trainer.state_dict()
                save_state(state, Path(tmp) / STATE_FILE)
                checkpoint = checkpoint_cls.from_directory(tmp)
                if int(metrics["epoch"]) == cfg.train.epochs:
                    save_final_model(state, trainer.method, run, Path(tmp))
            report(metrics, checkpoint=checkpoint)

    return on_epoch_end


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, float]:
    _quiet_ray_train_logs()
    if config.get("slow_eval"):  # fault injection for tests (the driver's env is not ours)
        os.environ[SLOW_EVAL_ENV] = config["slow_eval"]
    cfg = RunConfig.model_validate_json(config["cfg"])
    run_loc = location(config["run_dir"])
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    resume = resume_state(ray.train.get_checkpoint(), cfg.method.name)
    resumed_from = float(resume["epoch"]) if resume else 0.0
    on_epoch_end = epoch_reporter(cfg, run_loc, ray.train.report, resumed_from,
                                  checkpoints=rank == 0)

    def on_step(epoch: int, step: int) -> None:
        if rank == 0 and run_loc.is_local and config.get("fault"):
            _maybe_inject_fault(config["fault"], epoch, step, Path(run_loc.path))

    def wrap(model: Any) -> Any:
        # MoCo's queue is identical on every worker and the key encoder is not trained, so
        # broadcasting buffers each step would only move megabytes for nothing.
        # (forward_sync_buffers=False still syncs once at init: the same seed made them equal.)
        return ray.train.torch.prepare_model(
            model, parallel_strategy_kwargs={"forward_sync_buffers": False}
        )

    metrics = fit(cfg, device=ray.train.torch.get_device(), wrap=wrap, resume=resume,
                  on_epoch_end=on_epoch_end, on_step=on_step,
                  verbose=rank == 0 and config.get("verbose", True), inputs=config.get("inputs"))
    return {**metrics, "train/resumed_from_epoch": resumed_from}


def run_training(
    cfg: RunConfig,
    run_dir: str | Path | Location,
    *,
    callbacks: Sequence[Any] = (),
    verbose: bool = True,
    inputs: StageInputs | None = None,
) -> dict[str, float]:
    """Run one pre-training run as a Ray Train job; checkpoints and results go to `run_dir`.

    `run_dir`: a local path, a URI (s3://bucket/runs/x) or a `Location`. Re-running with the same
    `run_dir` resumes from its latest checkpoint (Train V2 restores a run by storage path + name).
    `cfg.resources.workers == 0` uses Ray Train local mode; `verbose=False` silences the
    per-epoch progress lines (a sweep shows Tune's table instead). `callbacks`: Ray Train callbacks
    (a sweep passes Tune's `TuneReportCallback`, so every epoch report becomes a Tune result).
    `inputs`: what earlier pipeline stages made for this run (shipped to every worker).
    """
    loc = run_dir if isinstance(run_dir, Location) else location(run_dir)
    parent = str(PurePosixPath(loc.path).parent)
    res = cfg.resources
    per_worker: dict[str, float] = {"CPU": res.cpus_per_worker}
    if res.use_gpu:
        per_worker["GPU"] = res.gpus_per_worker
    trainer = TorchTrainer(  # (mypy reads Ray's V1 stubs; these are the Train V2 classes)
        train_loop_per_worker,  # type: ignore[arg-type]
        train_loop_config={
            "cfg": cfg.model_dump_json(),
            "run_dir": loc.uri,
            "fault": os.environ.get(FAULT_ENV),
            "slow_eval": os.environ.get(SLOW_EVAL_ENV),
            "verbose": verbose,  # read here: workers do not see the driver's env
            "inputs": inputs,
        },
        torch_config=TorchConfig(timeout_s=res.collective_timeout_s),
        scaling_config=ScalingConfig(
            num_workers=res.workers, use_gpu=res.use_gpu,
            placement_strategy=res.placement_strategy,
            resources_per_worker=per_worker if res.workers > 0 else None,
        ),
        run_config=ray.train.RunConfig(
            name=loc.name,
            storage_path=parent,
            storage_filesystem=None if loc.is_local else loc.fs,
            failure_config=FailureConfig(max_failures=res.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            logging_config=LoggingConfig(log_level="WARNING"),  # type: ignore[call-arg]
            callbacks=list(callbacks),
        ),
    )
    result = trainer.fit()
    metrics = dict(result.metrics or {})
    returned = getattr(result, "return_value", None)  # rank 0's return value (Train V2)
    if not metrics and isinstance(returned, dict):
        metrics = dict(returned)  # local mode: no persisted checkpoint
    loc.append_line(json.dumps(metrics, sort_keys=True), "result.json")
    return metrics
