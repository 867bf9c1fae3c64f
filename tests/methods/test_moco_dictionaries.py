"""MoCo's three dictionary mechanisms (He et al. 2020, Figure 3): queue, end-to-end, memory bank."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sslray.data.streams import Batch
from sslray.models import MemoryBank
from sslray.training.loop import fit
from tests.conftest import build, tiny_config

BASE = {"name": "moco", "queue_size": 64, "dim": 16}


def _batch(n: int = 8, size: int = 16) -> Batch:
    g = torch.Generator().manual_seed(0)
    views = (torch.randn(n, 3, size, size, generator=g), torch.randn(n, 3, size, size, generator=g))
    return Batch(labels=torch.zeros(n), index=torch.arange(10, 10 + n), views=views)


def test_end_to_end_is_in_batch_infonce_with_gradient_through_keys():
    torch.manual_seed(0)
    model = build(tiny_config(method={**BASE, "dictionary": "end_to_end", "temperature": 0.5}))
    batch = _batch()
    out = model.training_step(batch)
    with torch.no_grad():
        q = F.normalize(model.encoder_q(batch.views[0]), dim=1)
        k = F.normalize(model.encoder_q(batch.views[1]), dim=1)
        expected = F.cross_entropy(q @ k.t() / 0.5, torch.arange(8))
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    model.zero_grad()
    # gradients reach the key path: the loss through k alone moves the query encoder too
    q_fixed = q.detach()
    k_live = F.normalize(model.encoder_q(batch.views[1]), dim=1)
    F.cross_entropy(q_fixed @ k_live.t(), torch.arange(8)).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder_q.parameters())
    assert int(model.queue.ptr) == 0  # no queue in this mode


def test_memory_bank_updates_only_the_batch_rows_by_the_momentum_rule():
    torch.manual_seed(0)
    model = build(tiny_config(method={**BASE, "dictionary": "memory_bank", "bank_momentum": 0.5}),
                  num_samples=100)
    before = model.bank.features.clone()
    batch = _batch()
    model.training_step(batch)
    after = model.bank.features
    touched = batch.index
    untouched = torch.tensor([i for i in range(100) if i not in set(touched.tolist())])
    assert torch.equal(after[untouched], before[untouched])
    assert not torch.allclose(after[touched], before[touched])
    assert torch.allclose(after[touched].norm(dim=1), torch.ones(8), atol=1e-5)


def test_memory_bank_update_rule_exact():
    bank = MemoryBank(5, 2)
    bank.features.copy_(torch.tensor([[1.0, 0.0]] * 5))
    bank.update(torch.tensor([1, 3]), torch.tensor([[0.0, 1.0], [0.0, 1.0]]), momentum=0.5)
    r = 1 / math.sqrt(2)
    assert torch.allclose(bank.features[1], torch.tensor([r, r]))
    assert torch.allclose(bank.features[[0, 2, 4]], torch.tensor([[1.0, 0.0]] * 3))


def test_memory_bank_needs_more_samples_than_negatives():
    with pytest.raises(ValueError, match="memory_bank"):
        build(tiny_config(method={**BASE, "dictionary": "memory_bank"}), num_samples=32)


@pytest.mark.parametrize("dictionary", ["queue", "end_to_end", "memory_bank"])
def test_each_dictionary_trains(dictionary):
    cfg = tiny_config(method={**BASE, "dictionary": dictionary}, train={"epochs": 1})
    metrics = fit(cfg, verbose=False)
    assert math.isfinite(metrics["train/loss"]) and 0 <= metrics["train/pos_acc"] <= 1


def test_momentum_zero_makes_the_key_encoder_a_copy():
    model = build(tiny_config(method={**BASE, "ema_decay": 0.0}))
    with torch.no_grad():
        for p in model.encoder_q.parameters():
            p.mul_(1.5)
    model.after_optimizer_step(0.1)
    for a, b in zip(model.encoder_k.parameters(), model.encoder_q.parameters()):
        assert torch.equal(a, b)
