"""Split BatchNorm: per-GPU BN statistics emulated in one process.

MoCo's key encoder must not see BN statistics of its own batch only in a way that leaks which
sample is the positive (He et al. 2020, sec. 3.3, "Shuffling BN"). On several workers the keys are
shuffled across workers; on one device the CIFAR demo of the official code emulates N GPUs by
computing BN statistics over N sub-batches (facebookresearch/moco colab-notebook, SplitBatchNorm).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


class SplitBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics come from `num_splits` equal sub-batches.

    Split j holds samples j, j+s, j+2s, ... (the reference's `view(-1, C * s, H, W)`).
    Running statistics are the mean over the splits, so evaluation behaves like plain BN.
    """

    def __init__(self, num_features: int, num_splits: int, **kwargs: object) -> None:
        super().__init__(num_features, **kwargs)  # type: ignore[arg-type]
        self.num_splits = num_splits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        if not self.training or self.num_splits == 1:
            return super().forward(x)
        if n % self.num_splits:
            raise ValueError(
                f"SplitBatchNorm2d: batch {n} is not divisible by num_splits {self.num_splits}"
            )
        s = self.num_splits
        assert self.running_mean is not None and self.running_var is not None
        assert self.num_batches_tracked is not None
        mean_split = self.running_mean.repeat(s)  # (C*s,)
        var_split = self.running_var.repeat(s)
        # (N, C, H, W) -> (N/s, C*s, H, W): each split's channels are normalised on their own.
        out = F.batch_norm(
            x.reshape(-1, c * s, h, w),  # reshape: channels_last inputs are not viewable
            mean_split,
            var_split,
            self.weight.repeat(s),
            self.bias.repeat(s),
            True,
            self.momentum if self.momentum is not None else 0.1,
            self.eps,
        ).reshape(n, c, h, w)
        with torch.no_grad():
            self.running_mean.copy_(mean_split.view(s, c).mean(dim=0))
            self.running_var.copy_(var_split.view(s, c).mean(dim=0))
            self.num_batches_tracked.add_(1)
        return out


def norm_layer(bn_splits: int) -> Callable[[int], nn.Module]:
    """The norm layer factory for backbones: plain BN, or split BN when bn_splits > 1."""
    if bn_splits <= 1:
        return nn.BatchNorm2d
    return functools.partial(SplitBatchNorm2d, num_splits=bn_splits)
