"""Training streams: each worker's shard of a seeded, per-epoch permutation.

The order of epoch e depends only on (seed, e), the same on every worker, so a run resumed at an
epoch boundary sees exactly the batches the uninterrupted run would have seen, and the global batch
of step s is the same set of images whatever the number of workers.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from sslray.config_types import AugmentConfig, DataConfig
from sslray.data.catalog import dataset_info, image_spec
from sslray.data.datasets import ImageArrays, load_arrays, load_image_folder
from sslray.data.views import torchvision_crop, torchvision_views


@dataclass
class Batch:
    """One worker's share of a global batch.

    One of `images` (uint8 (B, C, H, W), views made on the training device), `crops` (one uint8
    (B, 3, S, S) crop per view from DataLoader workers, finished on the training device) or
    `views` (already-augmented float tensors from DataLoader workers) is set.
    """

    labels: torch.Tensor  # (B,)
    index: torch.Tensor  # (B,) dataset indices (the memory bank keys by them)
    images: torch.Tensor | None = None
    views: tuple[torch.Tensor, ...] | None = None
    crops: tuple[torch.Tensor, ...] | None = None


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def shard_steps(
    n: int, per_worker: int, world: int, rank: int, seed: int, epoch: int
) -> torch.Tensor:
    """(steps, per_worker) indices of this rank for one epoch; the last partial batch is dropped."""
    steps = n // (per_worker * world)
    if steps == 0:
        raise ValueError(
            f"the dataset has {n} images, fewer than one global batch ({per_worker * world}); "
            f"lower train.batch_size or raise data.train_subset"
        )
    order = epoch_order(n, seed, epoch)[: steps * per_worker * world]
    return order.view(steps, world, per_worker)[:, rank]


class ArrayStream:
    """Batches of an in-memory dataset (views are made later, batched, on the device)."""

    def __init__(self, data: ImageArrays, per_worker: int, world: int, rank: int, seed: int):
        self.data, self.per_worker, self.world, self.rank, self.seed = (
            data,
            per_worker,
            world,
            rank,
            seed,
        )
        self.steps_per_epoch = len(data) // (per_worker * world)
        shard_steps(len(data), per_worker, world, rank, seed, 0)  # raises early if too small

    def epoch(self, epoch: int) -> Iterator[Batch]:
        for idx in shard_steps(
            len(self.data), self.per_worker, self.world, self.rank, self.seed, epoch
        ):
            yield Batch(labels=self.data.labels[idx], index=idx, images=self.data.images[idx])


class _ShardSampler(Sampler[int]):
    def __init__(self, n: int, per_worker: int, world: int, rank: int, seed: int):
        self.args = (n, per_worker, world, rank, seed)
        self.epoch = 0

    def __iter__(self) -> Iterator[int]:
        n, per, world, rank, seed = self.args
        return iter(shard_steps(n, per, world, rank, seed, self.epoch).flatten().tolist())

    def __len__(self) -> int:
        n, per, world, _, _ = self.args
        return (n // (per * world)) * per


class _ViewsDataset(Dataset[Any]):
    def __init__(self, folder: Any, transforms: tuple[Any, ...]):
        self.folder, self.transforms = folder, transforms

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, i: int) -> tuple[tuple[torch.Tensor, ...], int, int]:
        img, label = self.folder[i]
        return tuple(t(img) for t in self.transforms), label, i


class FileStream:
    """Batches of an image-file dataset; per-sample torchvision transforms in DataLoader workers.

    `crops=False`: the transforms make finished views (`Batch.views`); `crops=True`: they make
    uint8 crops (`Batch.crops`) that the trainer augments on its device. The workers persist
    across epochs (no re-fork of `num_workers` processes per epoch), and `pin_memory` (GPU runs)
    makes the host-to-device copies asynchronous (`non_blocking=True` in the trainer).
    """

    def __init__(
        self,
        folder: Any,
        transforms: tuple[Any, ...],
        per_worker: int,
        world: int,
        rank: int,
        seed: int,
        num_workers: int,
        pin_memory: bool,
        crops: bool = False,
    ):
        n = len(folder)
        self.crops = crops
        shard_steps(n, per_worker, world, rank, seed, 0)
        self.sampler = _ShardSampler(n, per_worker, world, rank, seed)
        self.steps_per_epoch = n // (per_worker * world)
        self.loader = DataLoader(
            _ViewsDataset(folder, transforms),
            batch_size=per_worker,
            sampler=self.sampler,
            num_workers=num_workers,
            pin_memory=pin_memory,
            drop_last=True,
            persistent_workers=num_workers > 0,
        )

    def epoch(self, epoch: int) -> Iterator[Batch]:
        self.sampler.epoch = epoch
        for views, labels, index in self.loader:
            if self.crops:
                yield Batch(labels=labels, index=index, crops=tuple(views))
            else:
                yield Batch(labels=labels, index=index, views=tuple(views))


TrainSplit = Any  # ImageArrays (in memory), or a torchvision ImageFolder read per sample


def load_train_split(cfg: DataConfig) -> TrainSplit:
    """The pre-training split: in-memory arrays, or an ImageFolder read per sample."""
    if dataset_info(cfg.dataset).files:
        return load_image_folder(cfg, "train")
    return load_arrays(cfg, "train")


def augment_on_device(cfg: DataConfig, use_gpu: bool) -> bool:
    """Whether an image-file dataset's views are finished on the training device."""
    return cfg.augment_on == "device" or (cfg.augment_on == "auto" and use_gpu)


def make_stream(cfg: DataConfig, data: TrainSplit, views: tuple[AugmentConfig, ...],
                per_worker: int, world: int, rank: int, seed: int,
                use_gpu: bool) -> ArrayStream | FileStream:
    """One worker's training stream: batches of `per_worker` images of its shard."""
    if dataset_info(cfg.dataset).files:
        on_device = augment_on_device(cfg, use_gpu)
        spec = image_spec(cfg)
        tfs = tuple(torchvision_crop(a, spec.size) if on_device else torchvision_views(a, spec)
                    for a in views)
        return FileStream(data, tfs, per_worker, world, rank, seed, cfg.loader_workers,
                          pin_memory=use_gpu, crops=on_device)
    return ArrayStream(data, per_worker, world, rank, seed)
