"""Detection transfer as an evaluation stage: fine-tune a Faster R-CNN whose trunk is (a copy of)
the pre-trained backbone, then COCO AP on the test split (MoCo Tables 2-5).

`detection_transfer` is what `eval.detection` runs at the end of a run (and on the random-init
backbone with eval.at_init), and in `sslray eval RUN_DIR`. The detector comes from
`sslray.eval.detection.build_detector` (FPN, BN trained or frozen, the backbone deep-copied, so
the run's encoder is never modified); the data from `sslray.data.detection`.

The solver is detectron2's `WarmupMultiStepLR` shape, as MoCo's detection configs use it
(facebookresearch/moco detection/configs @ 90e244a): SGD momentum 0.9, weight decay 1e-4 (none
on normalisation layers: detectron2 WEIGHT_DECAY_NORM 0), a linear warm-up from lr / 1000 over
`warmup_iters`, then x0.1 at each `lr_steps` fraction of the iterations. Training images are
flipped horizontally with p = `flip_p` (detectron2's default RandomFlip); the multi-scale
training sizes of MoCo's configs (480-800 px) are not implemented: one `image_size`.

Deterministic for (weights, data, config, seed) on a CPU: the new layers' init, the batch order
and the flips come from RNGs seeded with `seed` inside a forked RNG state.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader, Dataset, Subset

from sslray.config import DetectionConfig
from sslray.data.datasets import Split
from sslray.data.detection import (
    FMNIST_DET,
    FashionMNISTDetection,
    Sample,
    Target,
    detection_collate,
    load_detection,
)
from sslray.eval.detection import build_detector, coco_ap
from sslray.eval.finetune import guarded_step, seeded

WARMUP_FACTOR = 1.0 / 1000  # detectron2 SOLVER.WARMUP_FACTOR (linear warm-up from lr / 1000)
SUBSET_SEED = 0  # chosen: the same voc/coco subset (n_train, n_test) for every run


def load_splits(cfg: DetectionConfig) -> tuple[Dataset[Sample], Dataset[Sample]]:
    """(train, test) detection sets as `cfg` names them (fmnist_det generated, voc/coco read;
    `n_train` / `n_test`: canvases, or a seeded subset of the images)."""
    splits: tuple[tuple[Split, int | None], ...] = (("train", cfg.n_train), ("test", cfg.n_test))
    out: list[Dataset[Sample]] = []
    for split, n in splits:
        if cfg.dataset == FMNIST_DET:
            # garment sizes in the default's proportion to its 96 px canvas (20-56 px)
            scale = cfg.canvas / 96
            out.append(FashionMNISTDetection(
                n or 2000, canvas=cfg.canvas, split=split, root=cfg.root,
                min_size=max(1, round(20 * scale)), max_size=round(56 * scale)))
            continue
        ds = load_detection(cfg.dataset, split, cfg.root)
        size = len(ds)  # type: ignore[arg-type]
        if n is not None and n < size:  # a seeded subset (smoke runs, CPU budgets)
            pick = torch.randperm(size, generator=torch.Generator().manual_seed(SUBSET_SEED))
            ds = Subset(ds, pick[:n].tolist())
        out.append(ds)
    return out[0], out[1]


def num_classes(ds: Dataset[Sample]) -> int:
    """Object classes of a detection set (its `num_classes`, through Subset/ConcatDataset)."""
    while not hasattr(ds, "num_classes"):
        inner = getattr(ds, "dataset", None) or (getattr(ds, "datasets", None) or [None])[0]
        if inner is None:
            raise TypeError(f"{type(ds).__name__}: no num_classes")
        ds = inner
    return int(ds.num_classes)  # type: ignore[attr-defined]


def lr_at(cfg: DetectionConfig, step: int, total: int) -> float:
    """detectron2 WarmupMultiStepLR: lr x (linear warm-up factor) x 0.1^(steps passed)."""
    factor = 1.0
    warm = min(cfg.warmup_iters, total)
    if step < warm:
        alpha = step / warm
        factor = WARMUP_FACTOR * (1 - alpha) + alpha
    return cfg.lr * factor * 0.1 ** sum(step >= int(s * total) for s in cfg.lr_steps)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters; normalisation layers without weight decay (detectron2)."""
    norm: list[nn.Parameter] = []
    other: list[nn.Parameter] = []
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if p.requires_grad:
                (norm if isinstance(module, _BatchNorm | nn.GroupNorm | nn.LayerNorm)
                 else other).append(p)
    return [{"params": other, "weight_decay": weight_decay},
            {"params": norm, "weight_decay": 0.0}]


def hflip(image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
    """Mirror a (3, H, W) image and its xyxy boxes (pixel-edge coordinates: x -> W - x)."""
    w = image.shape[-1]
    boxes = target["boxes"].clone()
    boxes[:, [0, 2]] = w - target["boxes"][:, [2, 0]]
    return image.flip(-1), {**target, "boxes": boxes}


def _loader(ds: Dataset[Sample], batch: int, shuffle: bool, seed: int,
            workers: int) -> DataLoader[Any]:
    return DataLoader(ds, batch_size=batch, shuffle=shuffle, collate_fn=detection_collate,
                      generator=torch.Generator().manual_seed(seed), num_workers=workers)


def _to(targets: Sequence[Target], device: torch.device) -> list[Target]:
    return [{k: v.to(device) for k, v in t.items()} for t in targets]


def detection_transfer(
    encoder: nn.Module,
    cfg: DetectionConfig,
    splits: tuple[Dataset[Sample], Dataset[Sample]] | None = None,
    *,
    pretrain_dataset: str = "fashion_mnist",
    device: torch.device | str = "cpu",
    seed: int = 0,
    workers: int = 0,
    log: Any = None,
) -> dict[str, float]:
    """Fine-tune a detector over a copy of `encoder` on the train split; {"AP", "AP50", "AP75"}
    (COCO AP, in [0, 1]) on the test split.

    `splits`: (train, test) already loaded (`load_splits(cfg)`), else loaded here.
    `pretrain_dataset`: whose statistics normalise the images (as the backbone saw them).
    `workers`: DataLoader processes (voc/coco decode JPEGs; 0 for fmnist_det). `log`: a
    callable taking one progress line (None: silent).
    """
    device = torch.device(device)
    train, test = splits or load_splits(cfg)
    n_train = len(train)  # type: ignore[arg-type]
    if n_train == 0:
        raise ValueError(f"eval.detection: the {cfg.dataset} training split is empty")
    steps_per_epoch = math.ceil(n_train / cfg.batch_size)
    total = cfg.iterations or cfg.epochs * steps_per_epoch
    start = time.perf_counter()
    with seeded(seed, device):
        det = build_detector(encoder, num_classes(train), cfg.test_size, bn=cfg.bn,
                             trainable_layers=cfg.trainable_layers,
                             pretrain_dataset=pretrain_dataset, fpn_channels=cfg.fpn_channels,
                             representation_size=cfg.representation_size)
        # a run's channels_last trunk (train.channels_last) next to the detector's contiguous
        # layers segfaults torch's CPU conv backward at some sizes (torch 2.14): one format
        det.to(device).to(memory_format=torch.contiguous_format)  # in place
        opt = torch.optim.SGD(_param_groups(det, cfg.weight_decay), lr=cfg.lr,
                              momentum=cfg.momentum)
        loader = _loader(train, cfg.batch_size, True, seed, workers)
        flips = torch.Generator().manual_seed(seed + 1)
        det.train()
        step, epoch = 0, 0
        every = -(-total // 4)  # about 4 progress lines
        while step < total:
            for images, targets in loader:
                if step >= total:
                    break
                pairs = [hflip(im, t) if torch.rand((), generator=flips) < cfg.flip_p
                         else (im, t) for im, t in zip(images, targets, strict=True)]
                for group in opt.param_groups:
                    group["lr"] = lr_at(cfg, step, total)
                losses = det([im.to(device) for im, _ in pairs],
                             _to([t for _, t in pairs], device))
                loss = sum(losses.values())
                assert isinstance(loss, torch.Tensor)
                guarded_step(opt, loss, "eval.detection", f"iteration {step}")
                step += 1
                if log is not None and (step % every == 0 or step == total):
                    log(f"[detection] {cfg.dataset} iteration {step}/{total} (epoch "
                        f"{epoch + 1}): loss {loss.item():.3f}, "
                        f"{time.perf_counter() - start:.0f} s")
            epoch += 1
        det.eval()
        predictions, truth = [], []
        with torch.no_grad():
            for images, targets in _loader(test, cfg.batch_size, False, seed, workers):
                out = det([im.to(device) for im in images])
                predictions += [{k: v.cpu() for k, v in o.items()} for o in out]
                truth += targets
    return coco_ap(predictions, truth)
