"""The method contract: what a method's config and its module must provide, and nothing more.

A method is one file: its config (a `MethodConfigBase`), its loss as a pure function, and an
`nn.Module` satisfying `SSLMethod`. The training loop, the checkpoints and the evaluation see a
method only through these two types; no implementation base class (compose helpers).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from sslray.config_types import AugmentConfig, BackboneConfig, DataConfig, StrictModel

if TYPE_CHECKING:
    from sslray.config import RunConfig


class MethodConfigBase(StrictModel):
    """The part of every method config that the rest of sslray reads (a schema, no behaviour
    beyond these defaults). Each method config adds `name: Literal[...]` and its own fields."""

    name: str

    @property
    def view_augs(self) -> tuple[AugmentConfig, ...]:
        """One augmentation per view a training step consumes (the data stream makes them)."""
        raise NotImplementedError(f"{type(self).__name__} must define view_augs")

    def check_run(self, run: RunConfig) -> None:
        """Raise ValueError (naming the dotted keys) if this method cannot train as `run` says:
        the checks that need more than the method's own fields (batch size, dataset size)."""

    def smoke(self, batch_size: int) -> MethodConfigBase:
        """This config shrunk for `--smoke` runs, whose global batch is `batch_size` (the run's
        own sections are shrunk by `RunConfig.smoke`). Returns a validated copy."""
        return self


@dataclass(frozen=True)
class MethodContext:
    """What a method's constructor may need besides its own config.

    Built by the training loop (and `sslray eval`) from the run config and the training split;
    stage outputs of a pipeline (the cc pseudo-labels) are passed here, never through the config.
    """

    backbone: BackboneConfig
    data: DataConfig
    channels_last: bool = False  # train.channels_last: Jigsaw++ lays its tiles out to match
    num_samples: int | None = None  # training split size (MoCo's memory bank: one row each)
    # (N,) int64 cluster ids of the training split, row i labels sample i: the cc target's
    # targets, from the pipeline's k-means stage. None outside a cc training run (an evaluation
    # rebuilds the module and fills its buffers from the checkpoint).
    pseudo_labels: np.ndarray | None = None
    # False when the module is built only to load a trained state into it (`sslray eval`, the
    # pipeline's feature pass): inputs that only training needs may then be absent.
    for_training: bool = True

    @classmethod
    def of(cls, run: RunConfig, **kw: Any) -> MethodContext:
        return cls(run.backbone, run.data, run.train.channels_last, **kw)


@dataclass
class TrainBatch:
    """What a training step sees: one augmented view per `view_augs` entry, made by the loop."""

    views: tuple[torch.Tensor, ...]  # each (B, 3, H, W) float, normalised
    labels: torch.Tensor  # (B,) int64 true labels (-1 where the split has none)
    index: torch.Tensor  # (B,) training-split row of each sample (memory bank, pseudo-labels)


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
    """A method's module (an `nn.Module`; `as_module` gives that view of it).

    Optional: `probe_encoder(layer, grid) -> nn.Module`, what the frozen-feature probes read when
    it is not the trunk itself (Jigsaw++'s tile grid), reading the trunk's `layer` (`eval.layer`)
    pooled over a `grid` (`eval.pool_grid`); `probe_encoder(method, layer, grid)` falls back to
    `feature_encoder()`, tapped there."""

    wants_sync_bn: bool  # convert BatchNorm to SyncBatchNorm (GPU workers only)

    def training_step(self, batch: TrainBatch) -> StepOutput: ...

    def after_optimizer_step(self, progress: float) -> None:
        """EMA / momentum updates; progress = step / total_steps in [0, 1]."""

    def feature_encoder(self) -> nn.Module:
        """The module kNN / linear probe / k-means read (the online encoder, never the EMA one)."""
        ...

    def artifacts(self) -> Mapping[str, np.ndarray]:
        """Arrays to leave beside final.pt (Jigsaw++: its permutation set); {} for most."""
        ...


class MethodClass(Protocol):
    """A registered method: its config class and a constructor from (config, context).

    `cfg` is typed Any here because each constructor takes its own config class (a Protocol
    parameter is contravariant); `build_method` pairs them through the registry.
    """

    @property
    def Config(self) -> type[MethodConfigBase]: ...  # noqa: N802 (the registry's spelling)

    def __call__(self, cfg: Any, ctx: MethodContext) -> SSLMethod: ...


def as_module(method: SSLMethod) -> nn.Module:
    """The torch view of a method (state_dict, .to, DDP): every method is an nn.Module."""
    if not isinstance(method, nn.Module):
        raise TypeError(f"{type(method).__name__} is not an nn.Module")
    return method


def probe_encoder(method: SSLMethod, layer: str = "final", grid: int | None = None) -> nn.Module:
    """The module the frozen-feature probes read (kNN, linear, transfer, CC's clustering at
    layer "final"): a method's optional `probe_encoder(layer, grid)` (Jigsaw++'s tile grid,
    `method.probe: tiles`), else its `feature_encoder()`; `layer` (`eval.layer`): that layer of
    the trunk, pooled over space, or over a `grid` x `grid` grid of regions (`eval.pool_grid`;
    `sslray.models.taps`). Fine-tuning and detection always take `feature_encoder()`: they need
    the backbone itself."""
    hook = getattr(method, "probe_encoder", None)
    if callable(hook):
        return hook(layer, grid)
    return tapped(method.feature_encoder(), layer, grid)


def tapped(trunk: nn.Module, layer: str, grid: int | None = None) -> nn.Module:
    """`trunk` itself for layer "final" pooled as trained (`grid` None), else a view reading
    that layer of it, pooled over a `grid` x `grid` grid or over all of space (no copy)."""
    if layer == "final" and grid is None:
        return trunk
    from sslray.models.taps import LayerFeatures

    return LayerFeatures(trunk, layer, grid)


def feature_std(z: torch.Tensor) -> torch.Tensor:
    """Collapse monitor: mean per-dimension std of L2-normalised outputs z (N, D).

    About 1/sqrt(D) for well-spread features, 0 when every sample maps to the same point.
    """
    z = torch.nn.functional.normalize(z.detach().float(), dim=1)
    return z.std(dim=0).mean()


NO_ARTIFACTS: Mapping[str, np.ndarray] = {}  # what methods without artifacts return
