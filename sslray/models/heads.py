"""Projection / prediction heads."""

from __future__ import annotations

from torch import nn


def linear_head(in_dim: int, out_dim: int) -> nn.Module:
    """MoCo v1: a single fc layer to the 128-d embedding (He et al. 2020, sec. 3.3)."""
    return nn.Linear(in_dim, out_dim)


def mlp_head(
    in_dim: int, hidden_dim: int, out_dim: int, *, hidden_bn: bool = False, last_bn: bool = False
) -> nn.Module:
    """Two-layer MLP head: fc-(BN)-ReLU-fc-(BN).

    MoCo v2 (Chen et al. 2020): fc(2048)-ReLU-fc(128), no BN. BYOL (Grill et al. 2020):
    fc(4096)-BN-ReLU-fc(256), no BN after the last layer.
    """
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim, bias=not hidden_bn)]
    if hidden_bn:
        layers.append(nn.BatchNorm1d(hidden_dim))
    layers += [nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim, bias=not last_bn)]
    if last_bn:
        layers.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*layers)
