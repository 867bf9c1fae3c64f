"""Full fine-tuning: a copy of the pre-trained backbone plus a new linear head, all trained.

The transfer protocol next to the frozen probes (MoCo sec. 4.2 and its detection tables, BYOL's
fine-tuning tables): every weight of the backbone is updated, BN included (trained, in train
mode, as MoCo fine-tunes it), on a labelled in-memory dataset with spatial augmentation only
(random resized crop + flip: `FinetuneConfig.augment`), SGD with momentum, a cosine (or step)
schedule per step. The run's encoder is never touched: `build_finetune_model` deep-copies it.

Deterministic for (weights, data, config, seed): the head's init, the batch order and the
augmentation draws come from RNGs seeded with `seed` inside a forked RNG state, so the caller's
random state (a training run's) is left as it was.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from sslray.config import FinetuneConfig
from sslray.data.catalog import ImageSpec
from sslray.data.datasets import ImageArrays
from sslray.data.views import BatchedViews, eval_transform
from sslray.eval.detection import plain_bn
from sslray.eval.linear import topk_accuracy
from sslray.methods.supervised import classifier


class FinetuneModel(nn.Module):
    """backbone (N, 3, S, S) -> (N, D) features -> head -> (N, C) logits."""

    def __init__(self, backbone: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))



def guarded_step(opt: torch.optim.Optimizer, loss: torch.Tensor, key: str, where: str) -> None:
    """zero_grad, backward, step; a non-finite loss stops the stage with the key to lower."""
    if not math.isfinite(loss.item()):
        raise FloatingPointError(f"{key}: the loss is {loss.item()} at {where}; lower {key}.lr")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()

def _out_dim(backbone: nn.Module) -> int:
    dim = getattr(backbone, "out_dim", None)
    if isinstance(dim, int):
        return dim
    raise TypeError(f"finetune: {type(backbone).__name__} has no integer `out_dim` (the feature "
                    f"size a new head needs); pass an sslray backbone")


def build_finetune_model(encoder: nn.Module, num_classes: int) -> FinetuneModel:
    """A deep copy of `encoder` (weights and BN statistics as given; MoCo's split BN made plain
    BN, same state, so any batch size trains) and a new linear head with MoCo's classifier init
    (main_lincls.py: N(0, 0.01), bias 0). The encoder itself is not modified."""
    backbone = plain_bn(copy.deepcopy(encoder))
    p = next(encoder.parameters())
    head = classifier(_out_dim(encoder), num_classes).to(p.device)
    return FinetuneModel(backbone, head)


def lr_at(cfg: FinetuneConfig, base: float, step: int, total: int, steps_per_epoch: int) -> float:
    """Linear warm-up over `warmup_epochs`, then cosine to 0 or x0.1 at each milestone."""
    warm = int(cfg.warmup_epochs * steps_per_epoch)
    if step < warm:
        return base * (step + 1) / warm
    if cfg.schedule == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(total - warm, 1)))
    return base * 0.1 ** sum(step >= int(m * total) for m in cfg.milestones)


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """The global RNGs (CPU and `device`'s) seeded with `seed`, restored afterwards."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type=device.type if devices else "cuda"):
        torch.manual_seed(seed)
        yield


def finetune(
    encoder: nn.Module,
    train: ImageArrays,
    test: ImageArrays,
    spec: ImageSpec,
    cfg: FinetuneConfig,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> dict[str, float]:
    """Fine-tune a copy of `encoder` with a new head on `train`; {"top1", "top5"} on `test`
    (top5 only where there are more than 5 classes), images seen as `spec` says.

    Batches are full ones (a set smaller than one batch is one batch); the lr is
    `cfg.lr x batch / 256` with `lr_scaling: linear`.
    """
    device = torch.device(device)
    batch = min(cfg.batch_size, len(train))
    if batch < 1:
        raise ValueError("finetune: the training split is empty")
    steps_per_epoch = len(train) // batch
    total = cfg.epochs * steps_per_epoch
    base = cfg.lr * batch / 256 if cfg.lr_scaling == "linear" else cfg.lr
    views = BatchedViews((cfg.augment,), spec)
    with seeded(seed, device):
        # contiguous weights (a run's train.channels_last copy otherwise; see detection_transfer)
        model = build_finetune_model(encoder, train.num_classes).to(device)
        model.to(memory_format=torch.contiguous_format)  # in place
        opt = torch.optim.SGD(model.parameters(), lr=base, momentum=cfg.momentum,
                              nesterov=cfg.nesterov and cfg.momentum > 0,
                              weight_decay=cfg.weight_decay)
        g = torch.Generator().manual_seed(seed)
        step = 0
        model.train()
        for _ in range(cfg.epochs):
            order = torch.randperm(len(train), generator=g)
            for start in range(0, steps_per_epoch * batch, batch):
                idx = order[start:start + batch]
                (x,) = views(train.images[idx].to(device, non_blocking=True))  # (B, 3, S, S)
                for group in opt.param_groups:
                    group["lr"] = lr_at(cfg, base, step, total, steps_per_epoch)
                loss = F.cross_entropy(model(x), train.labels[idx].to(device))
                guarded_step(opt, loss, "eval.finetune", f"step {step}")
                step += 1
        model.eval()
        logits = []
        with torch.no_grad():
            for start in range(0, len(test), 512):
                x = eval_transform(test.images[start:start + 512].to(device), spec)
                logits.append(model(x).float().cpu())
    out = torch.cat(logits)  # (M, C)
    scores = {"top1": topk_accuracy(out, test.labels, 1)}
    if train.num_classes > 5:
        scores["top5"] = topk_accuracy(out, test.labels, 5)
    return scores
