"""Knowledge transfer by cluster classification, "CC" (Noroozi et al., CVPR 2018, sec. 4).

A pre-trained source model's features are clustered by k-means; each training image's cluster is
its pseudo-label; a target network (any architecture, typically a different one) is trained from
scratch to classify the pseudo-labels, then evaluated like any pre-trained encoder. This module
is the last step: the pipeline (`sslray run` with a cc config) pre-trains the source, taps
`layer`, runs `sslray.eval.kmeans.kmeans` and fills `pseudo_labels` before building it.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from sslray.config_types import AugmentConfig, StrictModel
from sslray.methods.protocol import StepOutput
from sslray.methods.supervised import CLASSIFICATION_VIEW, classification_step, classifier
from sslray.models import build_backbone
from sslray.storage import location

RUN_HINT = (
    "run the pipeline: `sslray run <cc config>` pre-trains method.source and clusters its "
    "features first, then trains this target on the pseudo-labels"
)


class ClusterTransferConfig(StrictModel):
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
    # ClusterFit res5, i.e. the final stage); "final" is the source's pooled output.
    layer: str = "final"
    kmeans_iters: int = Field(default=50, ge=1)  # VISSL ClusterFit: NUM_ITER 50
    # PCA-whitening before k-means (DeepCluster: 256 for 4096-d AlexNet fc features). None:
    # chosen for the <= 512-d pooled features of the small backbones, which need no reduction.
    pca_dim: int | None = Field(default=None, ge=1)
    # Filled by the pipeline: the pseudo_labels.npy whose row i labels training-split sample i.
    pseudo_labels: str | None = None
    # The paper's target is a standard AlexNet trained for classification (fc6-fc7-fc8 on conv5;
    # its fc layers are re-initialised for evaluation). "linear": one fc layer on the pooled
    # features (a ResNet classifier); "mlp": fc-BN-ReLU-fc, standing in for AlexNet's fc6/fc7.
    head: Literal["linear", "mlp"] = "linear"
    hidden_dim: int = Field(default=512, ge=1)  # mlp head: chosen for 128-d small backbones
    # The target's training view. Paper: ImageNet classification augmentation (crop + flip);
    # here scaled to Fashion-MNIST (see methods/supervised.py).
    augment: AugmentConfig = CLASSIFICATION_VIEW


def read_pseudo_labels(cfg: ClusterTransferConfig, num_samples: int | None) -> torch.Tensor:
    """(N,) int64 pseudo-labels of the training split, checked against N and k."""
    from sslray.eval.kmeans import check_pseudo_labels  # here: the registry stays free of faiss
    if cfg.pseudo_labels is None:
        raise ValueError(f"method.pseudo_labels is not set (no pseudo-labels to train on); "
                         f"{RUN_HINT}")
    path = cfg.pseudo_labels
    where = location(path)  # a local path or a URI (the pipeline's storage may be a bucket)
    if not where.exists():
        raise FileNotFoundError(f"method.pseudo_labels: {path} does not exist; {RUN_HINT}")
    try:
        labels = check_pseudo_labels(where.load_npy(), path, num_samples)
    except ValueError as exc:
        raise ValueError(
            f"method.pseudo_labels: {exc}. Were they made for another data.train_subset? "
            f"{RUN_HINT}"
        ) from None
    if labels.size and int(labels.max()) >= cfg.k:
        raise ValueError(f"method.pseudo_labels: {path} has labels up to {int(labels.max())} "
                         f"but method.k is {cfg.k}; set method.k to the k that made them")
    return torch.from_numpy(labels)


def clustering_metrics(cfg: ClusterTransferConfig) -> dict[str, float]:
    """What the pipeline's clusters.json (beside the pseudo-labels) says, for every report:
    cluster/nmi, cluster/purity against the true labels, cluster/k, and the source's kNN."""
    if cfg.pseudo_labels is None:
        return {}
    info_file = location(cfg.pseudo_labels).sibling("clusters.json")
    if not info_file.exists():
        return {}
    info = json.loads(info_file.read_text())
    keys = ("nmi", "purity", "k", "wall_s", "device_hours")  # the last two: the stage's cost
    out = {f"cluster/{k}": float(info[k]) for k in keys if k in info}
    out.update({f"source/{k}": float(v) for k, v in info.get("source_metrics", {}).items()})
    return out


class ClusterTransfer(nn.Module):
    Config = ClusterTransferConfig
    pseudo_labels: torch.Tensor  # (N,) int64 buffer, registered in __init__

    def __init__(self, run_cfg: Any, num_samples: int | None = None) -> None:
        super().__init__()
        cfg: ClusterTransferConfig = run_cfg.method
        self.cfg = cfg
        self.backbone = build_backbone(run_cfg.backbone)  # the TARGET architecture
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
        self.register_buffer("pseudo_labels", read_pseudo_labels(cfg, num_samples))
        self.run_metrics = clustering_metrics(cfg)
        self.view_augs = (cfg.augment,)
        self.wants_sync_bn = False  # classification: plain BN (torchvision reference default)

    def feature_encoder(self) -> nn.Module:
        return self.backbone

    def targets(self, index: torch.Tensor) -> torch.Tensor:
        """(B,) pseudo-labels of the training-split rows `index` (B,)."""
        return self.pseudo_labels[index.to(self.pseudo_labels.device)]

    def training_step(self, batch: Any) -> StepOutput:
        # train_acc: agreement with the pseudo-labels (not with the true labels)
        return classification_step(self.backbone, self.classifier, batch,
                                   self.targets(batch.index))

    def forward(self, batch: Any) -> StepOutput:
        return self.training_step(batch)

    def after_optimizer_step(self, progress: float) -> None:
        pass
