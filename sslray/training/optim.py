"""Optimisers: SGD (MoCo) and LARS (BYOL), with parameter groups built from the model."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from sslray.config import OptimConfig


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling (You et al. 2017) as BYOL uses it.

    For each parameter w with gradient g (groups with `lars=True`):
        d = g + weight_decay * w
        d = d * eta * ||w|| / ||d||      (trust ratio; 1 when either norm is 0)
        v = momentum * v + d;  w = w - lr * v
    Groups with `lars=False` (biases, BN: BYOL excludes them) skip both weight decay and the
    trust ratio: plain momentum SGD.
    """

    def __init__(self, params: Iterable[Any], lr: float, momentum: float = 0.9,
                 weight_decay: float = 0.0, eta: float = 0.001) -> None:
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "eta": eta,
                    "lars": True}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if group["lars"]:
                    if group["weight_decay"]:
                        d = d.add(p, alpha=group["weight_decay"])
                    w_norm, d_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(d)
                    trust = torch.where(
                        (w_norm > 0) & (d_norm > 0), group["eta"] * w_norm / d_norm,
                        torch.ones_like(w_norm),
                    )
                    d = d * trust
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.clone(d).detach()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(d)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def is_excluded(name: str, param: nn.Parameter) -> bool:
    """Biases and normalisation parameters (every 1-D tensor): no weight decay, no adaptation."""
    return param.ndim <= 1


def build_optimizer(cfg: OptimConfig, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if cfg.name == "lars":
        regular = [p for n, p in named if not is_excluded(n, p)]
        excluded = [p for n, p in named if is_excluded(n, p)]
        groups = [{"params": regular}, {"params": excluded, "lars": False, "weight_decay": 0.0}]
        return LARS(groups, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                    eta=cfg.lars_eta)
    # SGD as MoCo uses it: weight decay on every parameter (main_moco.py).
    return torch.optim.SGD([p for _, p in named], lr=lr, momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay)
