"""MoCo v1/v2: momentum contrast with a queue (He et al. 2020; Chen et al. 2020, MoCo v2).

Reference: facebookresearch/moco@7397dfe1 (moco/builder.py, main_moco.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from sslray import distributed as dist
from sslray.config_types import AugmentConfig
from sslray.methods.protocol import (
    NO_ARTIFACTS,
    MethodConfigBase,
    MethodContext,
    StepOutput,
    TrainBatch,
    feature_std,
)
from sslray.models import (
    FeatureQueue,
    MemoryBank,
    build_backbone,
    ema_update_,
    linear_head,
    mlp_head,
    momentum_copy,
)
from sslray.models.norm import norm_layer

if TYPE_CHECKING:
    from sslray.config import RunConfig


class MoCoConfig(MethodConfigBase):
    name: Literal["moco"] = "moco"
    dim: int = Field(default=128, ge=1)  # MoCo: 128-d embedding
    mlp: bool = True  # MoCo v2: 2-layer MLP head (v1: linear)
    mlp_hidden: int | None = None  # None: the backbone's width (MoCo v2: 2048 for ResNet-50)
    queue_size: int = Field(default=65536, ge=1)  # MoCo: K = 65536
    ema_decay: float = Field(default=0.999, ge=0.0, le=1.0)  # MoCo: m = 0.999
    temperature: float = Field(default=0.2, gt=0.0)  # MoCo v2: T = 0.2 (v1: 0.07)
    # Key-encoder BN: MoCo's shuffling BN (sec. 3.3) across workers; "split": shuffle within a
    # worker only (with bn_splits > 1, the single-GPU emulation); "sync": SyncBatchNorm in both
    # encoders (MoCo v3 / solo-learn's alternative; GPU only); "none": plain per-worker BN.
    bn: Literal["shuffle", "split", "sync", "none"] = "shuffle"
    bn_splits: int = Field(default=1, ge=1)  # >1: BN over sub-batches (MoCo CIFAR demo: 8)
    symmetric: bool = False  # both views as query and key (MoCo CIFAR demo option); off in MoCo
    # The three dictionary mechanisms of MoCo's Figure 3: "queue" (MoCo), "end_to_end" (keys from
    # the query encoder, negatives = the rest of the global batch, gradients through both) and
    # "memory_bank" (InstDisc: one stored feature per sample, queue_size negatives sampled).
    dictionary: Literal["queue", "end_to_end", "memory_bank"] = "queue"
    bank_momentum: float = Field(default=0.5, ge=0.0, le=1.0)  # InstDisc memory update: 0.5
    augment: AugmentConfig = AugmentConfig.moco_v2()  # MoCo v2 aug_plus

    @model_validator(mode="after")
    def _split_bn(self) -> MoCoConfig:
        if self.bn == "split" and self.bn_splits < 2:
            raise ValueError("bn: split needs bn_splits >= 2 (sub-batches for BatchNorm)")
        return self

    @property
    def view_augs(self) -> tuple[AugmentConfig, ...]:
        return (self.augment, self.augment)  # MoCo: two views of the same augmentation

    def check_run(self, run: RunConfig) -> None:
        batch = run.train.batch_size
        if self.dictionary == "queue" and self.queue_size % batch:
            raise ValueError(
                f"method.queue_size ({self.queue_size}) must be a multiple of train.batch_size "
                f"({batch}) so the queue holds whole batches (MoCo asserts this)"
            )

    def smoke(self, batch_size: int) -> MoCoConfig:
        # 4 batches of negatives; at most 2 BN sub-batches of the small smoke batch
        return self.model_validate({**self.model_dump(), "queue_size": batch_size * 4,
                                    "bn_splits": min(self.bn_splits, 2)})


def info_nce_loss(
    q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float
) -> torch.Tensor:
    """InfoNCE (MoCo eq. 1): mean cross-entropy with the positive at logit 0.

    q, k: (N, C) L2-normalised queries and their positive keys; queue: (K, C) negatives.
    logits = [q.k, q.queue^T] / T, shape (N, 1 + K). Computed in fp32 even under autocast:
    bf16 logits (3 significant digits) at T = 0.07 would blur the positive among 65k negatives.
    """
    with torch.autocast(q.device.type, enabled=False):
        q, k, queue = q.float(), k.float(), queue.float()
        l_pos = (q * k).sum(dim=1, keepdim=True)  # (N, 1)
        l_neg = q @ queue.t()  # (N, K)
        logits = torch.cat([l_pos, l_neg], dim=1) / temperature
        labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
        return F.cross_entropy(logits, labels)


def end_to_end_loss(
    q: torch.Tensor, k_all: torch.Tensor, offset: int, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """MoCo Fig. 3a (end-to-end): each query's positive is its own key among all keys of the
    global batch, the other keys are its negatives. Returns (loss, top-1 accuracy).

    q: (N, C) this worker's L2-normalised queries; k_all: (N_global, C) every worker's keys
    (gathered with gradient); offset: where this worker's keys start in k_all (rank * N).
    In fp32 even under autocast, as info_nce_loss: the `moco_dictionary` sweep compares the
    three dictionaries, so their logits must have the same precision.
    """
    with torch.autocast(q.device.type, enabled=False):
        q, k_all = q.float(), k_all.float()
        logits = q @ k_all.t() / temperature
        target = torch.arange(q.shape[0], device=q.device) + offset
        acc = (logits.detach().argmax(dim=1) == target).float().mean()
        return F.cross_entropy(logits, target), acc


class MoCo(nn.Module):
    Config = MoCoConfig

    def __init__(self, cfg: MoCoConfig, ctx: MethodContext) -> None:
        super().__init__()
        self.cfg = cfg
        num_samples = ctx.num_samples
        backbone = build_backbone(ctx.backbone, norm_layer(cfg.bn_splits))
        width = backbone.out_dim
        head = (
            mlp_head(width, cfg.mlp_hidden or width, cfg.dim)
            if cfg.mlp
            else linear_head(width, cfg.dim)
        )
        self.backbone = backbone
        self.encoder_q = nn.Sequential(backbone, head)
        self.encoder_k = momentum_copy(self.encoder_q)  # the key encoder moves only by momentum
        self.queue = FeatureQueue(cfg.queue_size, cfg.dim)
        if cfg.dictionary == "memory_bank":
            if num_samples is None or num_samples <= cfg.queue_size:
                raise ValueError(
                    f"method.dictionary memory_bank: needs more training samples ({num_samples}) "
                    f"than sampled negatives (method.queue_size {cfg.queue_size})"
                )
            self.bank = MemoryBank(num_samples, cfg.dim)
        self.wants_sync_bn = cfg.bn == "sync"

    def feature_encoder(self) -> nn.Module:
        return self.backbone  # the query backbone (never the momentum one; lightly#1471)

    def artifacts(self) -> Mapping[str, np.ndarray]:
        return NO_ARTIFACTS

    @torch.no_grad()
    def _keys(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.bn == "shuffle" or self.cfg.bn == "split":
            if self.cfg.bn == "split" and dist.world_size() > 1:
                idx = torch.randperm(x.shape[0], device=x.device)  # local shuffle only
                k = self.encoder_k(x[idx])
                k = k[torch.argsort(idx)]
            else:
                x, idx_unshuffle = dist.batch_shuffle(x)
                k = dist.batch_unshuffle(self.encoder_k(x), idx_unshuffle)
        else:
            k = self.encoder_k(x)
        return F.normalize(k.float(), dim=1)

    def _contrast(
        self, x_q: torch.Tensor, x_k: torch.Tensor, index: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        q = F.normalize(self.encoder_q(x_q).float(), dim=1)  # (N, C), fp32 under autocast
        if self.cfg.dictionary == "end_to_end":
            k = F.normalize(self.encoder_q(x_k).float(), dim=1)  # with gradient
            k_all = dist.all_gather_with_grad(k)  # (N_global, C): the other keys are negatives
            loss, acc = end_to_end_loss(q, k_all, dist.rank() * q.shape[0], self.cfg.temperature)
            return loss, q, k, acc
        if self.cfg.dictionary == "memory_bank":
            k = self.bank.features[index.to(q.device)].clone()  # positive: the stored v_i
            negatives = self.bank.sample(self.cfg.queue_size)  # (K, C)
        else:
            k = self._keys(x_k)  # (N, C)
            # clone: the queue is updated in place after this step, before backward.
            negatives = self.queue.features.clone().detach()  # (K, C)
        loss = info_nce_loss(q, k, negatives, self.cfg.temperature)
        with torch.no_grad():
            l_pos = (q * k).sum(dim=1)
            acc = (l_pos > (q @ negatives.t()).max(dim=1).values).float().mean()
        return loss, q, k, acc

    def training_step(self, batch: TrainBatch) -> StepOutput:
        v1, v2 = batch.views
        loss, q, k, acc = self._contrast(v1, v2, batch.index)
        keys, queries = [k], [q]
        if self.cfg.symmetric:
            loss2, q2, k2, acc2 = self._contrast(v2, v1, batch.index)
            loss, acc = loss + loss2, (acc + acc2) / 2  # CIFAR demo: loss_12 + loss_21
            keys.append(k2)
            queries.append(q2)
        # Every worker applies the same gathered update, so all hold the same dictionary.
        if self.cfg.dictionary == "queue":
            self.queue.enqueue(dist.concat_all_gather(torch.cat(keys)))
        elif self.cfg.dictionary == "memory_bank":
            index = dist.concat_all_gather(batch.index.to(q.device))
            feats = dist.concat_all_gather(torch.stack(queries).mean(dim=0).detach())
            self.bank.update(index, F.normalize(feats, dim=1), self.cfg.bank_momentum)
        metrics = {"loss": loss.detach(), "pos_acc": acc, "feature_std": feature_std(q)}
        return StepOutput(loss, metrics)

    def forward(self, batch: TrainBatch) -> StepOutput:
        return self.training_step(batch)  # DDP hooks run on forward()

    def after_optimizer_step(self, progress: float) -> None:
        ema_update_(self.encoder_k, self.encoder_q, self.cfg.ema_decay)
