"""Optimisers: SGD (MoCo) and LARS (BYOL), with parameter groups built from the model.

`optim.impl` picks how an update runs, with the same numbers: "loop" (one Python step per
parameter), "foreach" (torch._foreach_* ops over all parameters of a group: a few kernels instead
of ~5 per parameter, which matters for ResNet-50's 161 tensors on a GPU) or "fused" (SGD only:
torch's single fused kernel, CPU and CUDA).
"""

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

    `foreach`: the same update as one set of torch._foreach_* ops per group (equal numbers, see
    tests/training/test_fast_paths.py). An attribute, not a group value, so checkpoints do not
    carry it.
    """

    def __init__(self, params: Iterable[Any], lr: float, momentum: float = 0.9,
                 weight_decay: float = 0.0, eta: float = 0.001, foreach: bool = False) -> None:
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "eta": eta,
                    "lars": True}
        super().__init__(params, defaults)
        self.foreach = foreach

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            if self.foreach:
                self._group_step_foreach(group)
                continue
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

    def _group_step_foreach(self, group: dict[str, Any]) -> None:
        """The loop's update for one group, over all its parameters at once."""
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        d: list[torch.Tensor] | tuple[torch.Tensor, ...] = [p.grad for p in params]
        if group["lars"]:
            if group["weight_decay"]:
                d = torch._foreach_add(d, params, alpha=group["weight_decay"])
            w_norm = torch.stack(torch._foreach_norm(params))  # (P,)
            d_norm = torch.stack(torch._foreach_norm(d))  # (P,)
            trust = torch.where((w_norm > 0) & (d_norm > 0), group["eta"] * w_norm / d_norm,
                                torch.ones_like(w_norm))  # (P,): 1 where either norm is 0
            d = torch._foreach_mul(d, list(trust.unbind()))
        old, new = [], []  # momentum buffers that exist, and their updates
        for p, di in zip(params, d, strict=True):
            state = self.state[p]
            if "momentum_buffer" in state:
                old.append(state["momentum_buffer"])
                new.append(di)
            else:  # first step: v = d, as the loop
                state["momentum_buffer"] = torch.clone(di).detach()
        if old:
            torch._foreach_mul_(old, group["momentum"])
            torch._foreach_add_(old, new)
        torch._foreach_add_(params, [self.state[p]["momentum_buffer"] for p in params],
                            alpha=-group["lr"])


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
                    eta=cfg.lars_eta, foreach=cfg.impl == "foreach")
    # SGD as MoCo uses it: weight decay on every parameter (main_moco.py).
    params = [p for _, p in named]
    if cfg.impl == "fused":
        from torch.optim.optimizer import _get_fused_kernels_supported_devices

        missing = {p.device.type for p in params} - set(_get_fused_kernels_supported_devices())
        if missing:  # a clear error now rather than torch's at the first step
            raise ValueError(f"optim.impl: fused SGD has no kernel on {sorted(missing)}; "
                             f"use optim.impl=foreach (the same update)")
    return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                           foreach=cfg.impl == "foreach", fused=cfg.impl == "fused")


def set_impl(opt: torch.optim.Optimizer, impl: str) -> None:
    """Re-apply the configured `optim.impl` after `load_state_dict`, which restores the flags the
    checkpoint was saved with (so a checkpoint from a fused run resumes as foreach, and back)."""
    if isinstance(opt, LARS):
        opt.foreach = impl == "foreach"
        return
    for group in opt.param_groups:
        group["foreach"], group["fused"] = impl == "foreach", impl == "fused"
