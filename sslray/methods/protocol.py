"""The small protocol every method satisfies (no implementation base class: compose helpers)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from sslray.config_types import AugmentConfig


@dataclass
class StepOutput:
    """What a training step returns: the loss to minimise and detached scalar metrics.

    Metrics stay tensors during the epoch (no per-step device sync); the loop averages them and
    calls `.item()` once per epoch. Names are bare ("loss"); the loop prefixes "train/".
    """

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


@runtime_checkable
class SSLMethod(Protocol):
    view_augs: tuple[AugmentConfig, ...]  # one AugmentConfig per view the step consumes
    wants_sync_bn: bool  # convert BatchNorm to SyncBatchNorm (GPU workers only)

    def training_step(self, batch: Any) -> StepOutput: ...

    def after_optimizer_step(self, progress: float) -> None:
        """EMA / momentum updates; progress = step / total_steps in [0, 1]."""

    def feature_encoder(self) -> nn.Module:
        """The module kNN / linear probe / k-means read (the online encoder, never the EMA one)."""
        ...


def feature_std(z: torch.Tensor) -> torch.Tensor:
    """Collapse monitor: mean per-dimension std of L2-normalised outputs z (N, D).

    About 1/sqrt(D) for well-spread features, 0 when every sample maps to the same point.
    """
    z = torch.nn.functional.normalize(z.detach().float(), dim=1)
    return z.std(dim=0).mean()
