"""Momentum (EMA) encoders: the key encoder of MoCo, the target network of BYOL."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


@torch.no_grad()
def ema_update_(target: nn.Module, online: nn.Module, decay: float) -> None:
    """target <- decay * target + (1 - decay) * online, parameters only (MoCo eq. 2).

    Buffers (BN running statistics) are the target's own, as in the official MoCo code.
    decay 0 copies the online weights; decay 1 keeps the target unchanged.
    """
    t_params: list[torch.Tensor] = list(target.parameters())
    o_params: list[torch.Tensor] = [p.detach() for p in online.parameters()]
    if len(t_params) != len(o_params):
        raise ValueError("ema_update_: target and online modules differ in structure")
    if decay == 0.0:
        torch._foreach_copy_(t_params, o_params)
    elif decay != 1.0:
        torch._foreach_lerp_(t_params, o_params, 1.0 - decay)


@torch.no_grad()
def copy_params_(target: nn.Module, online: nn.Module) -> None:
    """Initialise a momentum encoder from the online one (MoCo: param_k.data.copy_(param_q))."""
    ema_update_(target, online, 0.0)


def momentum_copy(online: nn.Module) -> nn.Module:
    """A frozen copy of `online`, moved only by `ema_update_` (MoCo key encoder, BYOL target)."""
    target = copy.deepcopy(online)
    copy_params_(target, online)
    for p in target.parameters():
        p.requires_grad = False
    return target


def cosine_ema_decay(base: float, progress: float) -> float:
    """BYOL's target decay schedule: 1 - (1 - base) * (cos(pi * progress) + 1) / 2.

    progress = k / K in [0, 1]; base at the start, 1 at the end (Grill et al. 2020, sec. 3.2).
    """
    progress = min(max(progress, 0.0), 1.0)
    return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1.0) / 2.0
