"""Knowledge transfer by cluster classification, "CC" (Noroozi et al., CVPR 2018, sec. 4).

A pre-trained source model's features are clustered by k-means; each training image's cluster is
its pseudo-label; a target network (any architecture, typically a different one) is trained from
scratch to classify the pseudo-labels, then evaluated like any pre-trained encoder. This module
is the last step: the pipeline (`sslray run` with a cc config) pre-trains the source, taps
`layer`, runs `sslray.eval.kmeans.kmeans`, and hands the pseudo-labels to this module's
constructor (`MethodContext.pseudo_labels`): they never pass through the config.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from sslray.config_types import AugmentConfig
from sslray.data.catalog import train_split_size
from sslray.methods.protocol import (
    NO_ARTIFACTS,
    MethodConfigBase,
    MethodContext,
    StepOutput,
    TrainBatch,
)
from sslray.methods.supervised import CLASSIFICATION_VIEW, classification_step, classifier
from sslray.models import build_backbone

if TYPE_CHECKING:
    from sslray.config import RunConfig

RUN_HINT = (
    "run the pipeline: `sslray run <cc config>` pre-trains method.source and clusters its "
    "features first, then trains this target on the pseudo-labels"
)


class ClusterTransferConfig(MethodConfigBase):
    name: Literal["cc"] = "cc"
    # The source model: a builtin config name ("fmnist_jigsaw_pp"), a YAML path or a finished run
    # directory; the pipeline resolves it. No default: the transfer is meaningless without one.
    source: str = Field(min_length=1)
    # Dotted overrides for the source config, e.g. {"train.epochs": 5}.
    source_set: dict[str, Any] = Field(default_factory=dict)
    source_smoke: bool = False  # shrink the source run too (set by `--smoke`)
    # Paper: k=2000 for ImageNet's 1.28M images (2x the classes, 640 images per cluster).
    # Chosen for Fashion-MNIST's 10k-image subset: 100 images per cluster (faiss wants >= 39)
    # and 10x the 10 classes (DeepCluster over-clusters ImageNet 10x with k=10000).
    k: int = Field(default=100, ge=2)
    # Which source layer is clustered: UNVERIFIED in the paper (a port uses VGG16 conv4; VISSL
    # ClusterFit res5, i.e. the final stage); "final" is what the source's own probes read (its
    # eval.layer, pooled; a Jigsaw++ source with method.probe: tiles, on its tile grid).
    layer: str = "final"
    kmeans_iters: int = Field(default=50, ge=1)  # VISSL ClusterFit: NUM_ITER 50
    # PCA-whitening before k-means (DeepCluster: 256 for 4096-d AlexNet fc features). None:
    # chosen for the <= 512-d pooled features of the small backbones, which need no reduction.
    pca_dim: int | None = Field(default=None, ge=1)
    # The paper's target is a standard AlexNet trained for classification (fc6-fc7-fc8 on conv5;
    # its fc layers are re-initialised for evaluation). "linear": one fc layer on the pooled
    # features (a ResNet classifier); "mlp": fc-BN-ReLU-fc, standing in for AlexNet's fc6/fc7.
    head: Literal["linear", "mlp"] = "linear"
    hidden_dim: int = Field(default=512, ge=1)  # mlp head: chosen for 128-d small backbones
    # The target's training view. Paper: ImageNet classification augmentation (crop + flip);
    # here scaled to Fashion-MNIST (see methods/supervised.py).
    augment: AugmentConfig = CLASSIFICATION_VIEW

    @property
    def view_augs(self) -> tuple[AugmentConfig, ...]:
        return (self.augment,)

    def check_run(self, run: RunConfig) -> None:
        n = train_split_size(run.data)
        if n is not None and self.k > n:
            raise ValueError(
                f"method.k ({self.k} clusters) is more than the {n} training images k-means "
                f"would cluster; lower method.k or raise data.train_subset"
            )

    def smoke(self, batch_size: int) -> ClusterTransferConfig:
        # the source run is shrunk too, and k fits the smoke run's 256 images
        return self.model_validate({**self.model_dump(), "source_smoke": True,
                                    "k": min(self.k, 16)})


def check_pseudo_labels(labels: np.ndarray, num_samples: int | None, k: int,
                       where: str) -> np.ndarray:
    """`labels` as (N,) int64 after checking they can be this run's targets: 1-D integers in
    [0, k), one per training sample (`where` names their file in errors)."""
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{where}: expected a 1-D integer array, got {labels.dtype} "
                         f"{labels.shape}; {RUN_HINT}")
    if labels.size and int(labels.min()) < 0:
        raise ValueError(f"{where}: pseudo-labels must be >= 0, found {int(labels.min())}")
    if num_samples is not None and labels.shape[0] != num_samples:
        raise ValueError(
            f"{where} holds {labels.shape[0]} pseudo-labels but the training split has "
            f"{num_samples} samples (row i must label sample i). Were they made for another "
            f"data.train_subset? {RUN_HINT}")
    if labels.size and int(labels.max()) >= k:
        raise ValueError(f"{where} has labels up to {int(labels.max())} but method.k is {k}; "
                         f"set method.k to the k that made them")
    return labels.astype(np.int64)


class ClusterTransfer(nn.Module):
    Config = ClusterTransferConfig
    pseudo_labels: torch.Tensor  # (N,) int64 buffer, registered in __init__

    def __init__(self, cfg: ClusterTransferConfig, ctx: MethodContext) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = build_backbone(ctx.backbone)  # the TARGET architecture
        width = self.backbone.out_dim
        self.classifier = (
            classifier(width, cfg.k) if cfg.head == "linear"
            else nn.Sequential(nn.Linear(width, cfg.hidden_dim, bias=False),
                               nn.BatchNorm1d(cfg.hidden_dim), nn.ReLU(inplace=True),
                               classifier(cfg.hidden_dim, cfg.k))
        )
        # (N,) persistent: a checkpoint carries the labels the run started with, so a resume
        # continues the same trajectory even if the file was regenerated (GPU k-means is not
        # bit-reproducible). 8 bytes per sample (80 KB for 10k images, 10 MB for ImageNet); the
        # Ray worker wraps DDP with forward_sync_buffers=False, so it is not broadcast per step.
        if ctx.pseudo_labels is not None:
            labels = check_pseudo_labels(ctx.pseudo_labels, ctx.num_samples, cfg.k,
                                         "the pseudo-labels")
        elif ctx.for_training:
            raise ValueError(f"method cc: no pseudo-labels to train on; {RUN_HINT}")
        else:  # an evaluation: the checkpoint's buffer replaces this placeholder
            labels = np.zeros(ctx.num_samples or 0, dtype=np.int64)
        self.register_buffer("pseudo_labels", torch.from_numpy(labels))
        self.wants_sync_bn = False  # classification: plain BN (torchvision reference default)

    def feature_encoder(self) -> nn.Module:
        return self.backbone

    def artifacts(self) -> Mapping[str, np.ndarray]:
        return NO_ARTIFACTS

    def targets(self, index: torch.Tensor) -> torch.Tensor:
        """(B,) pseudo-labels of the training-split rows `index` (B,)."""
        return self.pseudo_labels[index.to(self.pseudo_labels.device)]

    def training_step(self, batch: TrainBatch) -> StepOutput:
        # train_acc: agreement with the pseudo-labels (not with the true labels)
        return classification_step(self.backbone, self.classifier, batch,
                                   self.targets(batch.index))

    def forward(self, batch: TrainBatch) -> StepOutput:
        return self.training_step(batch)

    def after_optimizer_step(self, progress: float) -> None:
        pass
