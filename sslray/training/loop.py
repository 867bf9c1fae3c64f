"""The plain-PyTorch training loop. No Ray here: `worker.py` is the only Ray Train entry point.

`fit()` runs in one process (unit tests), in Ray Train local mode, and on each of N Ray Train
workers (torch.distributed set up by Ray; DDP via the `wrap` callback).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from sslray import distributed as dist
from sslray.config import DataConfig, RunConfig
from sslray.data.datasets import dataset_stats, image_size, load_arrays, load_image_folder
from sslray.data.loaders import ArrayStream, Batch, FileStream
from sslray.data.views import BatchedViews, torchvision_crop, torchvision_views
from sslray.eval.features import extract_features, extract_folder_features
from sslray.eval.knn import knn_top1
from sslray.eval.linear import linear_probe_fast, linear_probe_paper, linear_probe_paper_folder
from sslray.methods import build_method
from sslray.models import Backbone
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


def sync_bn(method: nn.Module, device: torch.device) -> nn.Module:
    """SyncBatchNorm where the method asks for it; it runs on GPUs only (NCCL), so a CPU run
    falls back to per-worker BatchNorm and says so."""
    if not getattr(method, "wants_sync_bn", False):
        return method
    if device.type != "cuda":
        warnings.warn(
            "bn: sync needs GPU workers (SyncBatchNorm has no CPU kernel); this CPU run uses "
            "per-worker BatchNorm instead",
            RuntimeWarning,
            stacklevel=2,
        )
        return method
    return nn.SyncBatchNorm.convert_sync_batchnorm(method)


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


def compile_backbones(method: nn.Module) -> int:
    """torch.compile every backbone of `method` in place (online and momentum copies); returns
    how many. `nn.Module.compile` keeps the module and its state_dict keys (torch.compile(m)
    would wrap it and prefix every key with `_orig_mod.`), so checkpoints stay interchangeable.
    The backbones hold nearly all the compute; the methods' own steps (queues, shuffles,
    collectives) stay eager.
    """
    backbones = [m for m in method.modules() if isinstance(m, Backbone)]
    for m in backbones:
        m.compile()
    return len(backbones)


class Trainer:
    """One worker's training state: method, optimiser, counters; `state_dict()` is all of it."""

    def __init__(
        self,
        cfg: RunConfig,
        steps_per_epoch: int,
        device: torch.device | str = "cpu",
        wrap: Callable[[nn.Module], nn.Module] | None = None,
        num_samples: int | None = None,
    ) -> None:
        self.cfg, self.device, self.steps_per_epoch = cfg, torch.device(device), steps_per_epoch
        torch.manual_seed(cfg.seed)  # identical initial weights on every worker
        # An nn.Module that satisfies SSLMethod (typed Any: nn.Module has no protocol type).
        method = build_method(cfg, num_samples)
        self.method: Any = sync_bn(method, self.device).to(self.device)
        if cfg.train.channels_last:
            self.method = self.method.to(memory_format=torch.channels_last)
        if cfg.train.compile:
            compile_backbones(self.method)
        self.model = wrap(self.method) if wrap is not None else self.method
        self.bf16 = use_bf16(cfg.train.precision, self.device)
        self.mean, self.std = dataset_stats(cfg.data.dataset)
        self.size = image_size(cfg.data)
        self.views = BatchedViews(self.method.view_augs, self.size, self.mean, self.std)
        self.optimizer = build_optimizer(cfg.optim, self.method, cfg.effective_lr)
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
        if self.cfg.train.channels_last:
            views = tuple(v.contiguous(memory_format=torch.channels_last) for v in views)
        batch.views = views
        lr = lr_at(self.cfg, self.step, self.steps_per_epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            out = self.model(batch)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        self.optimizer.step()
        self.step += 1
        self.method.after_optimizer_step(min(self.step / max(self.total_steps, 1), 1.0))
        return out.metrics

    def state_dict(self) -> dict[str, Any]:
        return {
            "method": self.cfg.method.name,
            "model": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "rng": torch.get_rng_state(),
            "extra": dict(self.extra),
            "config": self.cfg.to_json(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.method.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        set_impl(self.optimizer, self.cfg.optim.impl)  # this run's optim.impl, not the saved one
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        torch.set_rng_state(state["rng"])
        self.extra = dict(state.get("extra", {}))


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """Augmentation RNG seed of one worker's epoch: resuming at an epoch replays it exactly."""
    return (seed * 1_000_003 + epoch * 1_009 + rank) % (2**63)


class Evaluator:
    """Frozen-feature evaluation: weighted kNN top-1 and the fast linear probe (top-1, top-5).

    The training split (a labelled one) is the kNN memory and the probe's training set; the test
    split is queried. Features are extracted once per evaluation and shared by both protocols.
    """

    def __init__(self, cfg: RunConfig, device: torch.device, train: Any = None) -> None:
        """`train`: the already-loaded pre-training arrays, reused when they are labelled."""
        self.cfg, self.device = cfg, device
        self.mean, self.std = dataset_stats(cfg.data.dataset)
        self.size = image_size(cfg.data)
        self._transfer_cache: dict[str, tuple[Any, Any]] = {}
        self.files = cfg.data.dataset == "imagefolder"
        if self.files:
            self.splits: tuple[Any, Any] = (load_image_folder(cfg.data, "train"),
                                            load_image_folder(cfg.data, "test"))
            self.num_classes = len(self.splits[0].classes)
        else:
            if train is None or cfg.data.dataset == "stl10":  # STL-10 pre-trains on unlabelled
                train = load_arrays(cfg.data, "train", labeled=True)
            self.splits = (train, load_arrays(cfg.data, "test"))
            self.num_classes = train.num_classes

    def features(self, encoder: nn.Module, data: Any) -> tuple[torch.Tensor, torch.Tensor]:
        bs = self.cfg.eval.batch_size
        if self.files:
            return extract_folder_features(encoder, data, self.size, self.mean, self.std, bs,
                                           self.device, self.cfg.data.loader_workers)
        feats = extract_features(encoder, data, self.size, self.mean, self.std, bs, self.device)
        return feats, data.labels

    def linear_paper(self, encoder: nn.Module) -> dict[str, float]:
        """MoCo's linear protocol through the frozen encoder (in-memory arrays or image folders)."""
        train, test = self.splits
        e = self.cfg.eval
        args = (encoder, train, test, self.size, self.mean, self.std)
        kw: dict[str, Any] = dict(epochs=e.linear_paper_epochs, lr=e.linear_paper_lr,
                                  device=self.device, seed=self.cfg.seed)
        if self.files:
            out = linear_probe_paper_folder(*args, num_workers=self.cfg.data.loader_workers, **kw)
        else:
            out = linear_probe_paper(*args, **kw)
        return {f"eval/linear_paper_{k}": v for k, v in out.items()}

    def _protocols(self, feats: tuple[Any, ...], num_classes: int, prefix: str,
                   suffix: str) -> dict[str, float]:
        """kNN (+ the fast linear probe) on cached (train_x, train_y, test_x, test_y)."""
        e = self.cfg.eval
        train_x, train_y, test_x, test_y = feats
        out = {f"{prefix}knn_top1{suffix}": knn_top1(
            train_x, train_y, test_x, test_y, k=min(e.knn_k, len(train_y)),
            temperature=e.knn_temperature, num_classes=num_classes)}
        if e.linear_fast:
            probe = linear_probe_fast(train_x, train_y, test_x, test_y, num_classes)
            out.update({f"{prefix}linear_fast_{k}{suffix}": v for k, v in probe.items()})
        return out

    def __call__(self, encoder: nn.Module, suffix: str = "") -> dict[str, float]:
        (train_x, train_y), (test_x, test_y) = (self.features(encoder, s) for s in self.splits)
        return self._protocols((train_x, train_y, test_x, test_y), self.num_classes,
                               "eval/", suffix)

    def _transfer_splits(self, name: Any) -> tuple[Any, Any]:
        """A transfer dataset's (train, test) arrays, loaded once per run (init and end reuse)."""
        if name not in self._transfer_cache:
            data_cfg = DataConfig(dataset=name, image_size=self.size)
            self._transfer_cache[name] = (load_arrays(data_cfg, "train", labeled=True),
                                          load_arrays(data_cfg, "test"))
        return self._transfer_cache[name]

    def transfer(self, encoder: nn.Module, suffix: str = "") -> dict[str, float]:
        """The frozen encoder on each `eval.transfer` dataset: transfer/<name>/knn_top1, ...

        Images are resized to the pre-training size and normalised with their own statistics.
        """
        out: dict[str, float] = {}
        bs = self.cfg.eval.batch_size
        for name in self.cfg.eval.transfer:
            mean, std = dataset_stats(name)
            train, test = self._transfer_splits(name)
            train_x = extract_features(encoder, train, self.size, mean, std, bs, self.device)
            test_x = extract_features(encoder, test, self.size, mean, std, bs, self.device)
            out.update(self._protocols((train_x, train.labels, test_x, test.labels),
                                       train.num_classes, f"transfer/{name}/", suffix))
        return out


def load_train_split(cfg: RunConfig) -> Any:
    """The pre-training split: in-memory arrays, or an ImageFolder read per sample."""
    if cfg.data.dataset == "imagefolder":
        return load_image_folder(cfg.data, "train")
    return load_arrays(cfg.data, "train")


def augment_on_device(cfg: DataConfig, use_gpu: bool) -> bool:
    """Whether an image-file dataset's views are finished on the training device."""
    return cfg.augment_on == "device" or (cfg.augment_on == "auto" and use_gpu)


def make_stream(cfg: RunConfig, data: Any, views: tuple[Any, ...], world: int, rank: int,
                use_gpu: bool) -> ArrayStream | FileStream:
    per_worker = cfg.train.batch_size // world
    if cfg.data.dataset == "imagefolder":
        mean, std = dataset_stats("imagefolder")
        size = image_size(cfg.data)
        on_device = augment_on_device(cfg.data, use_gpu)
        tfs = tuple(torchvision_crop(a, size) if on_device
                    else torchvision_views(a, size, mean, std) for a in views)
        return FileStream(data, tfs, per_worker, world, rank, cfg.seed,
                          cfg.data.loader_workers, pin_memory=use_gpu, crops=on_device)
    return ArrayStream(data, per_worker, world, rank, cfg.seed)


def fit(
    cfg: RunConfig,
    *,
    device: torch.device | str = "cpu",
    wrap: Callable[[nn.Module], nn.Module] | None = None,
    resume: dict[str, Any] | None = None,
    on_epoch_end: EpochCallback | None = None,
    on_step: Callable[[int, int], None] | None = None,
    verbose: bool = True,
) -> dict[str, float]:
    """Pre-train as `cfg` says; returns the last epoch's metrics (train/*, eval/*).

    `resume`: a state from `Trainer.state_dict()`; training continues at its epoch.
    `on_epoch_end(metrics, trainer)`: called on every worker after each epoch (Ray reports and
    checkpoints there). `on_step(epoch, step)`: after each optimiser step (0-based indices; the
    fault-injection tests kill a worker there). train/* metrics are averaged over workers; rank 0
    alone evaluates, so eval/* metrics exist on rank 0 only (the one whose reports Ray Train keeps).
    """
    started = time.perf_counter()
    rank, world = dist.rank(), dist.world_size()
    if cfg.train.batch_size % world:
        raise ValueError(
            f"train.batch_size {cfg.train.batch_size} is not divisible by {world} workers"
        )
    device = torch.device(device)
    data = load_train_split(cfg)
    trainer = Trainer(cfg, 1, device, wrap, num_samples=len(data))
    stream = make_stream(cfg, data, trainer.method.view_augs, world, rank, device.type == "cuda")
    trainer.steps_per_epoch = stream.steps_per_epoch
    if resume is not None:
        trainer.load_state_dict(resume)
    evaluator = Evaluator(cfg, device, train=data) if rank == 0 else None
    if evaluator is not None and cfg.eval.at_init and trainer.epoch == 0 and not trainer.extra:
        # The random-init baseline of the same backbone, kept in the checkpoint for resumes.
        encoder = trainer.method.feature_encoder()
        trainer.extra.update(evaluator(encoder, suffix="_init"))
        trainer.extra.update(evaluator.transfer(encoder, suffix="_init"))
        if cfg.eval.pixels:  # (N, 3*H*W) normalised pixels through the same probes
            trainer.extra.update(evaluator(nn.Flatten(), suffix="_pixels"))
            trainer.extra.update(evaluator.transfer(nn.Flatten(), suffix="_pixels"))
    # Constants a method wants in every report (cc: the clustering's NMI, k, the source's kNN).
    trainer.extra.update(getattr(trainer.method, "run_metrics", {}))
    progress = EpochProgress(
        cfg.train.epochs, stream.steps_per_epoch, enabled=verbose and rank == 0
    )
    metrics: dict[str, float] = {}
    for epoch in range(trainer.epoch, cfg.train.epochs):
        torch.manual_seed(epoch_seed(cfg.seed, epoch, rank))
        trainer.model.train()
        sums: dict[str, torch.Tensor] = {}
        start = time.perf_counter()
        for i, batch in enumerate(stream.epoch(epoch)):
            for name, value in trainer.train_step(batch).items():
                sums[name] = sums.get(name, 0.0) + value.detach().float()
            if on_step is not None:
                on_step(epoch, i)
            if progress.live and "loss" in sums:
                progress.step(epoch, i + 1, float(sums["loss"]) / (i + 1))
        elapsed = time.perf_counter() - start
        trainer.epoch = epoch + 1
        names = sorted(sums)
        means = dist.all_reduce_mean(torch.stack([sums[n] for n in names]) / stream.steps_per_epoch)
        metrics = {"epoch": float(epoch + 1)}
        metrics.update({f"train/{n}": float(v) for n, v in zip(names, means.tolist())})
        metrics["train/lr"] = lr_at(cfg, max(trainer.step - 1, 0), stream.steps_per_epoch)
        metrics["train/bf16"] = float(trainer.bf16)
        metrics["train/epoch_s"] = elapsed
        metrics["train/images_per_s"] = stream.steps_per_epoch * cfg.train.batch_size / elapsed
        if not math.isfinite(metrics.get("train/loss", 0.0)):
            raise FloatingPointError(
                f"train/loss is {metrics['train/loss']} after epoch {epoch + 1}: the run diverged "
                f"(lower optim.lr, or check the data)"
            )
        last = epoch + 1 == cfg.train.epochs
        every = cfg.eval.every_n_epochs
        if evaluator is not None and (last or (every and (epoch + 1) % every == 0)):
            metrics.update(evaluator(trainer.method.feature_encoder()))
        if evaluator is not None and last:
            metrics.update(evaluator.transfer(trainer.method.feature_encoder()))
            if cfg.eval.linear_paper_epochs:
                metrics.update(evaluator.linear_paper(trainer.method.feature_encoder()))
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
