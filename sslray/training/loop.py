"""The plain-PyTorch training loop. No Ray here: `worker.py` is the only Ray Train entry point.

`fit()` runs in one process (unit tests), in Ray Train local mode, and on each of N Ray Train
workers (torch.distributed set up by Ray; DDP via the `wrap` callback).
"""

from __future__ import annotations

import itertools
import math
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from sslray import distributed as dist
from sslray.config import RunConfig
from sslray.data.catalog import image_spec
from sslray.data.streams import Batch, load_train_split, make_stream
from sslray.data.views import BatchedViews
from sslray.eval.evaluator import Evaluator
from sslray.methods import MethodContext, SSLMethod, as_module, build_method, probe_encoder
from sslray.methods.protocol import TrainBatch
from sslray.models import Backbone
from sslray.models.backbones import channels_last_hazard
from sslray.training.optim import build_optimizer, set_impl
from sslray.training.progress import EpochProgress

EpochCallback = Callable[[dict[str, float], "Trainer"], None]


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether to autocast to bf16: asked for, or "auto" and the hardware runs it natively."""
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def cpu_channels_last_ok(cfg: RunConfig, device: torch.device) -> bool:
    """Whether a CPU run may train channels_last (`train.channels_last`); False, with a warning
    that names the convolution, where torch's oneDNN would abort (`channels_last_hazard`)."""
    if device.type != "cpu":
        return True
    why = channels_last_hazard(cfg.backbone)
    if why is None:
        return True
    warnings.warn(f"train.channels_last: this CPU run trains NCHW instead: {why}",
                  RuntimeWarning, stacklevel=3)
    return False


def sync_bn(method: SSLMethod, device: torch.device) -> SSLMethod:
    """SyncBatchNorm where the method asks for it; it runs on GPUs only (NCCL), so a CPU run
    falls back to per-worker BatchNorm and says so."""
    if not method.wants_sync_bn:
        return method
    if device.type != "cuda":
        warnings.warn(
            "bn: sync needs GPU workers (SyncBatchNorm has no CPU kernel); this CPU run uses "
            "per-worker BatchNorm instead",
            RuntimeWarning,
            stacklevel=2,
        )
        return method
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(as_module(method))
    assert converted is method  # a method is never a bare BN layer: converted in place
    return method


def lr_at(cfg: RunConfig, step: int, steps_per_epoch: int) -> float:
    """Learning rate at a global step: linear warm-up, then cosine (MoCo v2) or step (MoCo v1)."""
    base = cfg.effective_lr
    total = cfg.train.epochs * steps_per_epoch
    warm = int(cfg.optim.warmup_epochs * steps_per_epoch)
    if step < warm:
        return base * (step + 1) / warm
    if cfg.optim.schedule == "cosine":
        progress = (step - warm) / max(total - warm, 1)
        return base * 0.5 * (1.0 + math.cos(math.pi * progress))
    if cfg.optim.schedule == "step":
        epoch = step // steps_per_epoch
        return base * 0.1 ** sum(epoch >= m for m in cfg.optim.milestones)
    return base


def compile_backbones(method: SSLMethod) -> int:
    """torch.compile every backbone of `method` in place (online and momentum copies); returns
    how many. `nn.Module.compile` keeps the module and its state_dict keys (torch.compile(m)
    would wrap it and prefix every key with `_orig_mod.`), so checkpoints stay interchangeable.
    The backbones hold nearly all the compute; the methods' own steps (queues, shuffles,
    collectives) stay eager.
    """
    backbones = [m for m in as_module(method).modules() if isinstance(m, Backbone)]
    for m in backbones:
        m.compile()
    return len(backbones)


@dataclass(frozen=True)
class StageInputs:
    """What earlier pipeline stages hand a training run (never through its config): the cc
    target's pseudo-labels, and constants to report with every epoch (cluster/nmi, source/*)."""

    pseudo_labels: np.ndarray | None = None  # (N,) int64, row i labels training sample i
    report: Mapping[str, float] = field(default_factory=dict)


class Trainer:
    """One worker's training state: method, optimiser, counters; `state_dict()` is all of it."""

    def __init__(
        self,
        cfg: RunConfig,
        steps_per_epoch: int,
        device: torch.device | str = "cpu",
        wrap: Callable[[nn.Module], nn.Module] | None = None,
        ctx: MethodContext | None = None,
    ) -> None:
        """`ctx`: what the method is built from besides its config (default: the run's
        backbone and data, no training-split facts)."""
        self.cfg, self.device, self.steps_per_epoch = cfg, torch.device(device), steps_per_epoch
        self.channels_last = cfg.train.channels_last and cpu_channels_last_ok(cfg, self.device)
        ctx = ctx or MethodContext.of(cfg)
        if ctx.channels_last and not self.channels_last:  # Jigsaw++ lays its tiles out to match
            ctx = replace(ctx, channels_last=False)
        torch.manual_seed(cfg.seed)  # identical initial weights on every worker
        self.method = sync_bn(build_method(cfg.method, ctx), self.device)
        self.module = as_module(self.method).to(self.device)  # the same object, torch's view
        if self.channels_last:
            self.module.to(memory_format=torch.channels_last)  # in place
        if cfg.train.compile:
            compile_backbones(self.method)
        self.model = wrap(self.module) if wrap is not None else self.module
        self.bf16 = use_bf16(cfg.train.precision, self.device)
        self.views = BatchedViews(cfg.method.view_augs, image_spec(cfg.data))
        self.optimizer = build_optimizer(cfg.optim, self.module, cfg.effective_lr)
        self.epoch = 0  # completed epochs
        self.step = 0  # completed optimiser steps
        self.extra: dict[str, float] = {}  # values that must survive a resume (init kNN)

    @property
    def total_steps(self) -> int:
        return self.cfg.train.epochs * self.steps_per_epoch

    def train_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        if batch.crops is not None:  # image files, data.augment_on: device
            views = self.views.from_crops(
                tuple(c.to(self.device, non_blocking=True) for c in batch.crops))
        elif batch.views is None:
            assert batch.images is not None
            views = self.views(batch.images.to(self.device, non_blocking=True))
        else:
            views = tuple(v.to(self.device, non_blocking=True) for v in batch.views)
        if self.channels_last:
            views = tuple(v.contiguous(memory_format=torch.channels_last) for v in views)
        step_batch = TrainBatch(views, batch.labels, batch.index)
        lr = lr_at(self.cfg, self.step, self.steps_per_epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            out = self.model(step_batch)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        self.optimizer.step()
        self.step += 1
        self.method.after_optimizer_step(min(self.step / max(self.total_steps, 1), 1.0))
        return out.metrics

    def state_dict(self) -> dict[str, Any]:
        return {
            "method": self.cfg.method.name,
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "rng": torch.get_rng_state(),
            "extra": dict(self.extra),
            "config": self.cfg.to_json(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        set_impl(self.optimizer, self.cfg.optim.impl)  # this run's optim.impl, not the saved one
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        torch.set_rng_state(state["rng"])
        self.extra = dict(state.get("extra", {}))


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """Augmentation RNG seed of one worker's epoch: resuming at an epoch replays it exactly."""
    return (seed * 1_000_003 + epoch * 1_009 + rank) % (2**63)


def fit(
    cfg: RunConfig,
    *,
    device: torch.device | str = "cpu",
    wrap: Callable[[nn.Module], nn.Module] | None = None,
    resume: dict[str, Any] | None = None,
    on_epoch_end: EpochCallback | None = None,
    on_step: Callable[[int, int], None] | None = None,
    verbose: bool = True,
    inputs: StageInputs | None = None,
) -> dict[str, float]:
    """Pre-train as `cfg` says; returns the last epoch's metrics (train/*, eval/*).

    `resume`: a state from `Trainer.state_dict()`; training continues at its epoch.
    `inputs`: what earlier pipeline stages produced for this run (the cc pseudo-labels).
    `on_epoch_end(metrics, trainer)`: called on every worker after each epoch (Ray reports and
    checkpoints there). `on_step(epoch, step)`: after each optimiser step (0-based indices; the
    fault-injection tests kill a worker there). train/* metrics are averaged over workers; every
    rank extracts its share of the evaluation features, rank 0 alone computes kNN and the probes,
    so eval/* metrics exist on rank 0 only (the one whose reports Ray Train keeps).
    """
    started = time.perf_counter()
    rank, world = dist.rank(), dist.world_size()
    if cfg.train.batch_size % world:
        raise ValueError(
            f"train.batch_size {cfg.train.batch_size} is not divisible by {world} workers"
        )
    device = torch.device(device)
    inputs = inputs or StageInputs()
    data = load_train_split(cfg.data)
    stream = make_stream(cfg.data, data, cfg.method.view_augs, cfg.train.batch_size // world,
                         world, rank, cfg.seed, use_gpu=device.type == "cuda")
    ctx = MethodContext.of(cfg, num_samples=len(data), pseudo_labels=inputs.pseudo_labels)
    steps = min(stream.steps_per_epoch, cfg.train.max_steps_per_epoch or stream.steps_per_epoch)
    trainer = Trainer(cfg, steps, device, wrap, ctx)
    if resume is not None:
        trainer.load_state_dict(resume)
    # Every rank extracts its share of the features; rank 0 alone gets eval/* metrics, and the
    # others wait for it outside the training collectives (sslray.eval.evaluator).
    evaluator = Evaluator(cfg, device, train=data)
    if cfg.eval.at_init and trainer.epoch == 0 and not trainer.extra:
        # The random-init baseline of the same backbone, kept in the checkpoint for resumes.
        evaluating = time.perf_counter()
        encoder = trainer.method.feature_encoder()
        probe = probe_encoder(trainer.method, cfg.eval.layer, cfg.eval.pool_grid)
        trainer.extra.update(evaluator(probe, suffix="_init"))
        trainer.extra.update(evaluator.transfer(probe, suffix="_init"))
        # fine-tuning and detection transfer of the random init: rank 0 alone (copies of the
        # encoder), the others wait below
        trainer.extra.update(evaluator.finetune(encoder, suffix="_init"))
        trainer.extra.update(evaluator.detection(encoder, suffix="_init"))
        if cfg.eval.pixels:  # (N, 3*H*W) normalised pixels through the same probes
            trainer.extra.update(evaluator.pixels())
        dist.wait_for_evaluation()
        trainer.extra["train/eval_init_s"] = time.perf_counter() - evaluating
    # Constants of earlier stages in every report (cc: the clustering's NMI, k, the source's kNN).
    trainer.extra.update(inputs.report)
    progress = EpochProgress(
        cfg.train.epochs, steps, enabled=verbose and rank == 0
    )
    metrics: dict[str, float] = {}
    for epoch in range(trainer.epoch, cfg.train.epochs):
        torch.manual_seed(epoch_seed(cfg.seed, epoch, rank))
        trainer.model.train()
        sums: dict[str, torch.Tensor] = {}
        start = time.perf_counter()
        for i, batch in enumerate(itertools.islice(stream.epoch(epoch), steps)):
            for name, value in trainer.train_step(batch).items():
                sums[name] = sums.get(name, 0.0) + value.detach().float()
            if on_step is not None:
                on_step(epoch, i)
            if progress.live and "loss" in sums:
                progress.step(epoch, i + 1, float(sums["loss"]) / (i + 1))
        elapsed = time.perf_counter() - start
        trainer.epoch = epoch + 1
        names = sorted(sums)
        means = dist.all_reduce_mean(torch.stack([sums[n] for n in names]) / steps)
        metrics = {"epoch": float(epoch + 1)}
        metrics.update({f"train/{n}": float(v) for n, v in zip(names, means.tolist())})
        metrics["train/lr"] = lr_at(cfg, max(trainer.step - 1, 0), steps)
        metrics["train/bf16"] = float(trainer.bf16)
        metrics["train/epoch_s"] = elapsed
        metrics["train/images_per_s"] = steps * cfg.train.batch_size / elapsed
        if not math.isfinite(metrics.get("train/loss", 0.0)):
            raise FloatingPointError(
                f"train/loss is {metrics['train/loss']} after epoch {epoch + 1}: the run diverged "
                f"(lower optim.lr, or check the data)"
            )
        last = epoch + 1 == cfg.train.epochs
        every = cfg.eval.every_n_epochs
        # a view of the trunk: cheap
        probe = probe_encoder(trainer.method, cfg.eval.layer, cfg.eval.pool_grid)
        evaluating = time.perf_counter()
        if last or (every and (epoch + 1) % every == 0):
            metrics.update(evaluator(probe))
        if last:
            metrics.update(evaluator.transfer(probe))
            if cfg.eval.linear_paper_epochs:
                metrics.update(evaluator.linear_paper(probe))
            # rank 0 alone (the others wait in wait_for_evaluation below, outside the training
            # collectives); each fine-tunes a deep copy, so final.pt holds the trained encoder
            metrics.update(evaluator.finetune(trainer.method.feature_encoder()))
            metrics.update(evaluator.detection(trainer.method.feature_encoder()))
        if last or (every and (epoch + 1) % every == 0):
            dist.wait_for_evaluation()
            metrics["train/eval_s"] = time.perf_counter() - evaluating  # every rank's wait
        # Cost, kept across resumes: wall seconds of training + evaluation, and device-hours
        # (workers x GPUs per worker, or x CPUs per worker on CPU runs).
        trainer.extra["wall_s"] = trainer.extra.get("wall_s", 0.0) + time.perf_counter() - start
        res = cfg.resources
        per_worker = res.gpus_per_worker if device.type == "cuda" else res.cpus_per_worker
        trainer.extra["device_hours"] = trainer.extra["wall_s"] * world * per_worker / 3600
        metrics.update(trainer.extra)
        # Seconds since this process entered fit() (restarts with a restarted worker): the
        # difference between two epochs includes the reporting and checkpointing between them.
        metrics["train/elapsed_s"] = time.perf_counter() - started
        progress.end_epoch(metrics)
        if on_epoch_end is not None:
            on_epoch_end(metrics, trainer)
    return metrics
