"""BYOL: bootstrap your own latent (Grill et al. 2020).

Reference: google-deepmind/deepmind-research byol/ (f5de0ede): byol_experiment.py, configs/byol.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from sslray.config_types import AugmentConfig
from sslray.methods.protocol import (
    NO_ARTIFACTS,
    MethodConfigBase,
    MethodContext,
    StepOutput,
    TrainBatch,
    feature_std,
)
from sslray.models import build_backbone, cosine_ema_decay, ema_update_, mlp_head, momentum_copy

# BYOL's asymmetric views (paper, Table 6): colour jitter 0.4/0.4/0.2/0.1 with p 0.8, grayscale
# 0.2, crop scale 0.08-1; blur p 1.0 / 0.1 and solarize p 0 / 0.2 for view 1 / view 2.
BYOL_VIEW_1 = AugmentConfig(crop_scale=(0.08, 1.0), saturation=0.2, blur_p=1.0, solarize_p=0.0)
BYOL_VIEW_2 = AugmentConfig(crop_scale=(0.08, 1.0), saturation=0.2, blur_p=0.1, solarize_p=0.2)


class BYOLConfig(MethodConfigBase):
    name: Literal["byol"] = "byol"
    hidden_dim: int = Field(default=4096, ge=1)  # BYOL: projector / predictor MLP 4096
    proj_dim: int = Field(default=256, ge=1)  # BYOL: 256-d projection
    # BYOL: an MLP projector; "linear" (one fc, as MoCo v1's head) is an ablation that keeps the
    # loss's geometry on the backbone's features (what kNN probes); the predictor stays an MLP.
    projector: Literal["mlp", "linear"] = "mlp"
    # BYOL eq. 2: the loss symmetrised over both views (4 passes a step). False: view 1 online,
    # view 2 target only (2 passes, as MoCo's asymmetric loss): half the compute per step.
    symmetric: bool = True
    predictor: bool = True  # ablation (Table 5b): without the predictor BYOL collapses
    tau_base: float = Field(default=0.996, ge=0.0, le=1.0)  # BYOL 1000 ep; 0.99 for <= 300 ep
    tau_schedule: Literal["cosine", "fixed"] = "cosine"  # BYOL: cosine increase to 1
    # BYOL: BN after the heads' hidden layer, statistics over all devices ("sync"); "local" keeps
    # per-worker statistics, "none" drops BN from the heads (an ablation; the backbone keeps it).
    bn: Literal["sync", "local", "none"] = "sync"
    augment_1: AugmentConfig = BYOL_VIEW_1
    augment_2: AugmentConfig = BYOL_VIEW_2

    @property
    def view_augs(self) -> tuple[AugmentConfig, ...]:
        return (self.augment_1, self.augment_2)


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Normalised MSE of BYOL eq. 2: mean over the batch of 2 - 2 cos(p, z).

    p: (N, D) online predictions; z: (N, D) target projections (no gradient flows into z).
    Computed in fp32 even under autocast.
    """
    with torch.autocast(p.device.type, enabled=False):
        p = F.normalize(p.float(), dim=1)
        z = F.normalize(z.detach().float(), dim=1)
        return (2 - 2 * (p * z).sum(dim=1)).mean()


class BYOL(nn.Module):
    Config = BYOLConfig

    def __init__(self, cfg: BYOLConfig, ctx: MethodContext) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = build_backbone(ctx.backbone)
        width = self.backbone.out_dim
        head_bn = cfg.bn != "none"
        self.projector: nn.Module = (
            mlp_head(width, cfg.hidden_dim, cfg.proj_dim, hidden_bn=head_bn)
            if cfg.projector == "mlp"
            else nn.Linear(width, cfg.proj_dim)
        )
        self.predictor = (
            mlp_head(cfg.proj_dim, cfg.hidden_dim, cfg.proj_dim, hidden_bn=head_bn)
            if cfg.predictor
            else nn.Identity()
        )
        self.online = nn.Sequential(self.backbone, self.projector)
        self.target = momentum_copy(self.online)  # EMA of backbone + projector
        self.wants_sync_bn = cfg.bn == "sync"

    def feature_encoder(self) -> nn.Module:
        return self.backbone  # the online backbone (never the target; lightly#1471)

    def artifacts(self) -> Mapping[str, np.ndarray]:
        return NO_ARTIFACTS

    def training_step(self, batch: TrainBatch) -> StepOutput:
        v1, v2 = batch.views
        if not self.cfg.symmetric:
            z1 = self.online(v1)
            with torch.no_grad():
                t2 = self.target(v2)
            loss = byol_loss(self.predictor(z1), t2)
            return StepOutput(loss, {"loss": loss.detach(), "feature_std": feature_std(z1)})
        z1, z2 = self.online(v1), self.online(v2)  # (N, D)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        with torch.no_grad():
            t1, t2 = self.target(v1), self.target(v2)
        # The SUM of the two symmetric terms (BYOL eq. 2); averaging halves the gradient
        # (lightly PR #1286 lost 11 points that way).
        loss = byol_loss(p1, t2) + byol_loss(p2, t1)
        return StepOutput(loss, {"loss": loss.detach(), "feature_std": feature_std(z1)})

    def forward(self, batch: TrainBatch) -> StepOutput:
        return self.training_step(batch)

    def tau(self, progress: float) -> float:
        if self.cfg.tau_schedule == "fixed":
            return self.cfg.tau_base
        return cosine_ema_decay(self.cfg.tau_base, progress)

    def after_optimizer_step(self, progress: float) -> None:
        ema_update_(self.target, self.online, self.tau(progress))
