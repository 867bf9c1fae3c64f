"""Backbones and heads: shapes, the small-image stem, split BN plumbing."""

import pytest
import torch

from sslray.config_types import BackboneConfig
from sslray.models import SplitBatchNorm2d, build_backbone, mlp_head
from sslray.models.norm import norm_layer


@pytest.mark.parametrize(
    "cfg, size, dim",
    [
        (BackboneConfig(arch="small_resnet", width=8, blocks=(1, 1, 1)), 28, 32),
        (BackboneConfig(arch="small_resnet", width=16, blocks=(2, 2)), 28, 32),
        (BackboneConfig(arch="resnet18", small_stem=True), 32, 512),
        (BackboneConfig(arch="resnet50", small_stem=False), 64, 2048),
        (BackboneConfig(arch="small_resnet", width=16, blocks=(1, 1, 1, 1), pool_grid=2), 28, 512),
        (BackboneConfig(arch="alexnet_small", width=16, blocks=(1, 1, 3), pool_grid=2), 28, 256),
    ],
)
def test_backbone_output_dims(cfg, size, dim):
    net = build_backbone(cfg)
    assert net.out_dim == dim
    assert net(torch.randn(2, 3, size, size)).shape == (2, dim)


def test_pool_grid_averages_each_region_of_the_last_map():
    """pool_grid 2: the features are the last map's 2x2 quadrant means (channel-major), whose
    mean over the quadrants is the global-pool feature."""
    torch.manual_seed(0)
    grid = build_backbone(BackboneConfig(arch="small_resnet", width=8, blocks=(1, 1), pool_grid=2))
    grid.eval()
    x = torch.randn(3, 3, 16, 16)
    last = grid.stages(grid.stem(x))  # (3, 16, 8, 8)
    out = grid(x).view(3, 16, 2, 2)
    assert torch.allclose(out[:, :, 0, 1], last[:, :, :4, 4:].mean((2, 3)), atol=1e-6)
    assert torch.allclose(out.mean((2, 3)), last.mean((2, 3)), atol=1e-6)
    with pytest.raises(ValueError, match="pool_grid"):
        BackboneConfig(arch="resnet18", pool_grid=2)


def test_small_stem_keeps_resolution():
    small = build_backbone(BackboneConfig(arch="resnet18", small_stem=True)).net
    big = build_backbone(BackboneConfig(arch="resnet18", small_stem=False)).net
    x = torch.randn(1, 3, 32, 32)
    assert small.maxpool(small.relu(small.bn1(small.conv1(x)))).shape[-1] == 32
    assert big.maxpool(big.relu(big.bn1(big.conv1(x)))).shape[-1] == 8
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)


def test_split_bn_is_used_throughout_when_requested():
    net = build_backbone(BackboneConfig(arch="small_resnet", width=8), norm_layer(4))
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(isinstance(m, SplitBatchNorm2d) and m.num_splits == 4 for m in bns)


def test_mlp_heads():
    moco = mlp_head(512, 512, 128)  # MoCo v2: fc-ReLU-fc
    assert [type(m).__name__ for m in moco] == ["Linear", "ReLU", "Linear"]
    byol = mlp_head(512, 4096, 256, hidden_bn=True)  # BYOL: fc-BN-ReLU-fc, no BN at the end
    assert [type(m).__name__ for m in byol] == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert byol(torch.randn(4, 512)).shape == (4, 256)
