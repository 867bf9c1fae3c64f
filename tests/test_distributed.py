"""Single-process behaviour of the distributed helpers and split BatchNorm."""

import torch
import torch.nn.functional as F

from sslray import distributed as dist
from sslray.models import SplitBatchNorm2d


def test_single_process_fallbacks():
    assert dist.world_size() == 1 and dist.rank() == 0
    x = torch.randn(6, 3)
    assert torch.equal(dist.concat_all_gather(x), x)


def test_single_process_shuffle_round_trip():
    x = torch.arange(10.0).view(10, 1)
    shuffled, idx_un = dist.batch_shuffle(x)
    assert sorted(shuffled[:, 0].tolist()) == x[:, 0].tolist()
    assert torch.equal(dist.batch_unshuffle(shuffled, idx_un), x)


def test_split_bn_normalises_each_sub_batch_on_its_own():
    torch.manual_seed(0)
    bn = SplitBatchNorm2d(3, num_splits=2)
    x = torch.randn(8, 3, 4, 4)
    x[1::2] += 5.0  # split 1 (samples 1, 3, 5, 7) has another mean than split 0
    y = bn(x)
    # As the MoCo CIFAR demo's view(-1, C * s, H, W): split j holds samples j, j+s, j+2s, ...
    for j in range(2):
        ref = F.batch_norm(x[j::2], None, None, training=True, eps=bn.eps)
        assert torch.allclose(y[j::2], ref, atol=1e-5)
    assert not torch.allclose(y, F.batch_norm(x, None, None, training=True, eps=bn.eps))
    # running mean is the mean over splits of each split's momentum update (0.1 * batch mean)
    expected = 0.1 * torch.stack([x[0::2].mean((0, 2, 3)), x[1::2].mean((0, 2, 3))]).mean(0)
    assert torch.allclose(bn.running_mean, expected, atol=1e-5)
    bn.eval()
    assert torch.allclose(bn(x), F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight,
                                              bn.bias, False, 0.0, bn.eps), atol=1e-6)
