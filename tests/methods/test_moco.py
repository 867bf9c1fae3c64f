"""MoCo's parts against closed forms: InfoNCE, the queue, EMA."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sslray.methods.moco import info_nce_loss
from sslray.models import FeatureQueue, cosine_ema_decay, ema_update_


def test_info_nce_matches_hand_computation():
    q = F.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8]]), dim=1)
    k = F.normalize(torch.tensor([[0.8, 0.6], [0.0, 1.0]]), dim=1)
    queue = F.normalize(torch.tensor([[0.0, 1.0], [-1.0, 0.0], [0.6, -0.8]]), dim=1)
    t = 0.5
    losses = []
    for i in range(2):
        pos = float(q[i] @ k[i]) / t
        negs = [float(q[i] @ queue[j]) / t for j in range(3)]
        logsumexp = math.log(sum(math.exp(v) for v in [pos, *negs]))
        losses.append(logsumexp - pos)
    expected = sum(losses) / 2
    assert info_nce_loss(q, k, queue, t).item() == pytest.approx(expected, abs=1e-6)


def test_info_nce_uniform_logits_is_log_k_plus_1():
    n, c, k = 4, 8, 31
    q = torch.zeros(n, c)
    q[:, 0] = 1
    keys = torch.zeros(n, c)
    keys[:, 1] = 1  # orthogonal: positive logit 0
    queue = torch.zeros(k, c)
    queue[:, 2] = 1  # orthogonal: every negative logit 0
    assert info_nce_loss(q, keys, queue, 0.07).item() == pytest.approx(math.log(k + 1), abs=1e-6)


def test_info_nce_gradient_flows_to_query_only():
    q = F.normalize(torch.randn(3, 4), dim=1).requires_grad_()
    k = F.normalize(torch.randn(3, 4), dim=1)
    info_nce_loss(q, k, F.normalize(torch.randn(5, 4), dim=1), 0.2).backward()
    assert q.grad is not None and q.grad.abs().sum() > 0


def test_queue_is_fifo_and_wraps_around():
    queue = FeatureQueue(size=5, dim=2)
    batches = [torch.full((2, 2), float(i)) for i in range(1, 5)]  # 8 keys into 5 slots
    for b in batches:
        queue.enqueue(b)
    # slots: writes went to [0,1], [2,3], [4,0], [1,2] -> newest 5 keys survive
    assert queue.features[:, 0].tolist() == [3.0, 4.0, 4.0, 2.0, 3.0]
    assert int(queue.ptr) == 3
    assert set(queue.state_dict()) == {"features", "ptr"}  # persistent: checkpointed


def test_queue_larger_batch_than_queue():
    queue = FeatureQueue(size=3, dim=1)
    queue.enqueue(torch.arange(5.0).view(5, 1))
    assert queue.features[:, 0].tolist() == [2.0, 3.0, 4.0]


def test_ema_decay_zero_copies_and_one_keeps():
    online, target = nn.Linear(3, 2), nn.Linear(3, 2)
    before = [p.clone() for p in target.parameters()]
    ema_update_(target, online, 1.0)
    assert all(torch.equal(a, b) for a, b in zip(target.parameters(), before))
    ema_update_(target, online, 0.0)
    assert all(torch.equal(a, b) for a, b in zip(target.parameters(), online.parameters()))


def test_ema_interpolates():
    online, target = nn.Linear(2, 1), nn.Linear(2, 1)
    t0 = target.weight.detach().clone()
    ema_update_(target, online, 0.9)
    assert torch.allclose(target.weight, 0.9 * t0 + 0.1 * online.weight.detach())


def test_cosine_ema_decay_endpoints():
    assert cosine_ema_decay(0.996, 0.0) == pytest.approx(0.996)
    assert cosine_ema_decay(0.996, 1.0) == pytest.approx(1.0)
    assert cosine_ema_decay(0.996, 0.5) == pytest.approx(0.998)
