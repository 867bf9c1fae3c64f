"""Supervised baseline: backbone + linear classifier, cross-entropy on the true labels.

The upper reference every SSL table prints next to the self-supervised rows. The ImageNet recipe
it scales down is torchvision's reference (references/classification/train.py: RandomResizedCrop
224 with scale (0.08, 1) + horizontal flip, SGD lr 0.1 at batch 256, momentum 0.9, wd 1e-4).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from sslray.config_types import AugmentConfig, DataConfig
from sslray.data.catalog import dataset_info
from sslray.methods.protocol import (
    NO_ARTIFACTS,
    MethodConfigBase,
    MethodContext,
    StepOutput,
    TrainBatch,
    feature_std,
)
from sslray.models import build_backbone

if TYPE_CHECKING:
    from sslray.config import RunConfig

# One view, crop + flip only: chosen for Fashion-MNIST (28 px grayscale): colour ops do nothing
# on grayscale and crops below half the image lose the garment (fmnist configs); torchvision's
# ImageNet reference uses crop scale (0.08, 1) + flip and no colour jitter.
CLASSIFICATION_VIEW = AugmentConfig(
    crop_scale=(0.5, 1.0), jitter_p=0.0, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0,
    grayscale_p=0.0, blur_p=0.0, solarize_p=0.0,
)


class SupervisedConfig(MethodConfigBase):
    name: Literal["supervised"] = "supervised"
    # None: read from the dataset (the training split must be labelled: STL-10's unlabelled
    # pre-training split is refused); setting it skips loading the split at construction.
    num_classes: int | None = Field(default=None, ge=2)
    augment: AugmentConfig = CLASSIFICATION_VIEW

    @property
    def view_augs(self) -> tuple[AugmentConfig, ...]:
        return (self.augment,)

    def check_run(self, run: RunConfig) -> None:
        require_labels(run.data)


def require_labels(data: DataConfig) -> None:
    """Refuse a dataset whose pre-training split has no labels (STL-10's unlabelled split)."""
    if not dataset_info(data.dataset).pretrain_labeled:
        raise ValueError(
            f"data.dataset {data.dataset}: runs train on its unlabelled split (labels -1), so a "
            f"supervised method has no labels to train on; use a labelled dataset"
        )


def classification_loss(
    logits: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy and top-1 accuracy of logits (N, C) against integer targets (N,).

    Computed in fp32 even under autocast. Returns (loss, accuracy); accuracy is detached.
    """
    with torch.autocast(logits.device.type, enabled=False):
        logits = logits.float()
        targets = targets.to(logits.device, torch.long)
        loss = F.cross_entropy(logits, targets)
        acc = (logits.detach().argmax(dim=1) == targets).float().mean()
    return loss, acc


def classification_step(backbone: nn.Module, head: nn.Module, batch: TrainBatch,
                        targets: torch.Tensor) -> StepOutput:
    """Cross-entropy of head(backbone(view)) against `targets` (B,) on the batch's one view;
    metrics loss, train_acc (agreement with the targets) and feature_std."""
    (view,) = batch.views
    h = backbone(view)  # (N, D)
    loss, acc = classification_loss(head(h), targets)
    return StepOutput(loss, {"loss": loss.detach(), "train_acc": acc,
                             "feature_std": feature_std(h)})


def classifier(in_dim: int, num_classes: int) -> nn.Linear:
    """fc layer with MoCo's linear-classifier init (main_lincls.py: N(0, 0.01), bias 0): logits
    start near 0, so the initial loss is about log(num_classes)."""
    fc = nn.Linear(in_dim, num_classes)
    nn.init.normal_(fc.weight, std=0.01)
    nn.init.zeros_(fc.bias)
    return fc


def dataset_num_classes(data: DataConfig) -> int:
    """Number of classes of the training split a run trains on; errors if it has no labels."""
    from sslray.data.datasets import data_home, load_arrays, load_image_folder

    info = dataset_info(data.dataset)
    if info.storage == "generated":
        return data.synthetic_classes
    require_labels(data)
    if info.files:
        from torchvision.datasets.folder import find_classes

        folder = Path(data.root or data_home() / "imagefolder") / "train"
        if not folder.is_dir():
            load_image_folder(data, "train")  # raises the dataset's own "where to put it" error
        return len(find_classes(str(folder))[0])  # the class folders only: no file scan
    arrays = load_arrays(data, "train")
    if len(arrays) and int(arrays.labels.min()) < 0:
        raise ValueError(f"data.dataset {data.dataset}: the training split has no labels")
    return arrays.num_classes


class Supervised(nn.Module):
    Config = SupervisedConfig

    def __init__(self, cfg: SupervisedConfig, ctx: MethodContext) -> None:
        super().__init__()
        self.cfg = cfg
        require_labels(ctx.data)
        self.num_classes = cfg.num_classes or dataset_num_classes(ctx.data)
        self.backbone = build_backbone(ctx.backbone)
        self.classifier = classifier(self.backbone.out_dim, self.num_classes)
        self.wants_sync_bn = False  # torchvision's reference: plain BN unless --sync-bn

    def feature_encoder(self) -> nn.Module:
        return self.backbone

    def artifacts(self) -> Mapping[str, np.ndarray]:
        return NO_ARTIFACTS

    def training_step(self, batch: TrainBatch) -> StepOutput:
        return classification_step(self.backbone, self.classifier, batch, batch.labels)

    def forward(self, batch: TrainBatch) -> StepOutput:
        return self.training_step(batch)

    def after_optimizer_step(self, progress: float) -> None:
        pass
