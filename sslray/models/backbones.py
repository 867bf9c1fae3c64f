"""Backbones: torchvision ResNet-18/50 (optional small-image stem), a small ResNet for CPUs and
an AlexNet-style small tower (`alexnet_small`).

Every backbone maps (N, 3, H, W) -> (N, D) pooled features and carries `out_dim = D`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torchvision.models import resnet18, resnet50
from torchvision.models.resnet import BasicBlock

from sslray.config_types import BackboneConfig


class SmallResNet(nn.Module):
    """A ResNet sized for 28-32 px images on a CPU: 3x3 stem, stages of BasicBlocks.

    Stage i has width * 2**i channels and stride 1 for the first stage, 2 afterwards, so a
    28x28 input is pooled from 7x7 with three stages. `out_dim = width * 2**(len(blocks) - 1)`
    (times pool_grid**2: the last map averaged over a pool_grid x pool_grid grid).
    """

    def __init__(
        self, width: int, blocks: tuple[int, ...], norm_layer: Callable[[int], nn.Module],
        pool_grid: int = 1,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, 1, 1, bias=False), norm_layer(width), nn.ReLU(inplace=True)
        )
        stages: list[nn.Module] = []
        in_ch = width
        for i, n in enumerate(blocks):
            out_ch = width * 2**i
            stride = 1 if i == 0 else 2
            layers: list[nn.Module] = []
            for j in range(n):
                s = stride if j == 0 else 1
                down = None
                if s != 1 or in_ch != out_ch:
                    down = nn.Sequential(
                        nn.Conv2d(in_ch, out_ch, 1, s, bias=False), norm_layer(out_ch)
                    )
                layers.append(BasicBlock(in_ch, out_ch, s, down, norm_layer=norm_layer))
                in_ch = out_ch
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(pool_grid)
        self.out_dim: int = in_ch * pool_grid**2
        for m in self.modules():  # torchvision ResNet init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.stages(self.stem(x))).flatten(1)


class TorchvisionResNet(nn.Module):
    def __init__(self, arch: str, small_stem: bool, norm_layer: Callable[[int], nn.Module]):
        super().__init__()
        net = {"resnet18": resnet18, "resnet50": resnet50}[arch](norm_layer=norm_layer)
        if small_stem:
            # CIFAR recipes (MoCo CIFAR demo, lightly, solo-learn): 3x3 stride-1 conv1, no max-pool.
            net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
            net.maxpool = nn.Identity()
        self.out_dim: int = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class AlexNetSmall(nn.Module):
    """An AlexNet-style plain conv tower for 16-64 px inputs (no residuals): the knowledge-transfer
    target architecture (Noroozi et al. 2018 train a standard AlexNet on the pseudo-labels).

    Stage i: `blocks[i]` conv-BN-ReLU layers of width * 2**i channels, then AlexNet's overlapping
    3x3 stride-2 max-pool (padding 1, so any input >= 1 px keeps a valid map). AlexNet's layout is
    blocks (1, 1, 3): conv1-pool, conv2-pool, conv3-conv4-conv5-pool. conv1 is 5x5 stride 1 (the
    11x11 stride-4 conv1 of 224 px AlexNet scaled to small images), the rest 3x3; BN stands in for
    LRN. Global average pooling; `out_dim = width * 2**(len(blocks) - 1)`.
    """

    def __init__(
        self, width: int, blocks: tuple[int, ...], norm_layer: Callable[[int], nn.Module],
        pool_grid: int = 1,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for i, n in enumerate(blocks):
            out_ch = width * 2**i
            for j in range(n):
                k = 5 if i == 0 and j == 0 else 3
                layers += [nn.Conv2d(in_ch, out_ch, k, 1, k // 2, bias=False),
                           norm_layer(out_ch), nn.ReLU(inplace=True)]
                in_ch = out_ch
            layers.append(nn.MaxPool2d(3, 2, padding=1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(pool_grid)
        self.out_dim: int = in_ch * pool_grid**2
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x)).flatten(1)


Backbone = SmallResNet | TorchvisionResNet | AlexNetSmall


def build_backbone(
    cfg: BackboneConfig, norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d
) -> Backbone:
    """Build the backbone a `BackboneConfig` describes."""
    if cfg.arch == "small_resnet":
        return SmallResNet(cfg.width, tuple(cfg.blocks), norm_layer, cfg.pool_grid)
    if cfg.arch == "alexnet_small":
        return AlexNetSmall(cfg.width, tuple(cfg.blocks), norm_layer, cfg.pool_grid)
    return TorchvisionResNet(cfg.arch, cfg.small_stem, norm_layer)


def backbone_layers(cfg: BackboneConfig) -> list[str]:
    """The layer names this backbone offers the probes (`eval.layer`; `sslray.models.taps`),
    "final" first; built on the meta device (no memory, no initialisation cost)."""
    from sslray.models.taps import available_layers

    with torch.device("meta"):
        return available_layers(build_backbone(cfg))


def has_last_map(cfg: BackboneConfig) -> bool:
    """Whether the probes can pool this backbone's last map over a grid at layer "final"
    (`eval.pool_grid`; `sslray.models.taps.last_map`); built on the meta device."""
    from sslray.models.taps import last_map

    with torch.device("meta"):
        return last_map(build_backbone(cfg)) is not None


def channels_last_hazard(cfg: BackboneConfig) -> str | None:
    """Why this backbone must not train channels_last on a CPU, or None when it may.

    torch 2.14.1's oneDNN corrupts the heap ("double free or corruption", then SIGABRT) computing
    the weight gradient of a channels_last 1x1 stride-2 convolution over 2-7 input channels in
    fp32 on a 1-thread AVX2 CPU (measured here: in_channels 2-7 abort, 1, 8, 10, 12 and 20 do
    not; forward and input gradient do not). Such convolutions are ResNet downsample shortcuts
    of a stage under 8 channels wide, which only toy widths (small_resnet width < 8) have, so the
    rule declines channels_last for any 1x1 strided convolution over fewer than 8 channels. The
    backbone is built on the meta device: no memory, no initialisation cost.
    """
    with torch.device("meta"):
        net = build_backbone(cfg)
    for name, m in net.named_modules():
        if (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1)
                and m.in_channels < 8):
            return (f"backbone {cfg.arch} width {cfg.width}: {name} is a 1x1 stride-"
                    f"{m.stride[0]} convolution over {m.in_channels} channels, whose "
                    "channels_last weight gradient corrupts the heap in torch 2.14.1 on AVX2 "
                    "CPUs (declined on every CPU, so a config trains in one layout everywhere)")
    return None
