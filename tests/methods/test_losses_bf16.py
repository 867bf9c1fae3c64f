"""Every method's loss is a pure function computed in fp32, also under bf16 autocast.

Each loss gets bf16 inputs inside `torch.autocast("cpu", dtype=torch.bfloat16)` (what a GPU run
with `train.precision: bf16` hands it): its result must be fp32 and equal the loss of the same
inputs (upcast) computed without autocast. A loss computed in bf16 differs from it by ~1e-2
relative (3 significant digits), far above the 1e-6 tolerance, so a regression fails here.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from sslray.methods.byol import byol_loss
from sslray.methods.jigsaw_pp import jigsaw_loss
from sslray.methods.moco import end_to_end_loss, info_nce_loss
from sslray.methods.supervised import classification_loss


def _unit(*shape: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape), dim=1)


def _cases() -> dict[str, tuple[Callable[..., torch.Tensor], tuple[torch.Tensor, ...]]]:
    torch.manual_seed(0)
    labels = torch.randint(0, 100, (32,))

    def first(fn: Callable[..., tuple[torch.Tensor, torch.Tensor]]) -> Callable[..., torch.Tensor]:
        return lambda *a: fn(*a)[0]

    return {
        "moco_queue": (lambda q, k, neg: info_nce_loss(q, k, neg, 0.07),
                       (_unit(32, 128), _unit(32, 128), _unit(4096, 128))),
        "moco_end_to_end": (first(lambda q, k: end_to_end_loss(q, k, 32, 0.07)),
                            (_unit(32, 128), _unit(96, 128))),
        "byol": (byol_loss, (torch.randn(32, 256), torch.randn(32, 256))),
        "jigsaw": (lambda logits: jigsaw_loss(logits, labels), (5 * torch.randn(32, 100),)),
        "classification": (first(lambda logits: classification_loss(logits, labels)),
                           (5 * torch.randn(32, 100),)),
    }


@pytest.mark.parametrize("name", sorted(_cases()))
def test_loss_is_fp32_under_bf16_autocast(name: str) -> None:
    fn, inputs = _cases()[name]
    low = tuple(x.to(torch.bfloat16) for x in inputs)
    reference = fn(*(x.float() for x in low))  # the same (bf16-rounded) inputs, no autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = fn(*low)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6, abs=1e-6)


def test_logits_computed_under_autocast_would_fail_the_tolerance() -> None:
    """The old end-to-end code (`q @ k_all.t()` inside autocast): bf16 logits are off by far
    more than the 1e-6 the test above allows."""
    torch.manual_seed(0)
    q, k_all = _unit(32, 128).to(torch.bfloat16), _unit(96, 128).to(torch.bfloat16)
    target = torch.arange(32) + 32
    reference = F.cross_entropy(q.float() @ k_all.float().t() / 0.07, target)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = q @ k_all.t() / 0.07
    assert logits.dtype == torch.bfloat16
    assert abs(F.cross_entropy(logits.float(), target).item() - reference.item()) > 1e-4


def test_end_to_end_loss_by_hand() -> None:
    torch.manual_seed(1)
    q, k_all = _unit(4, 8), _unit(12, 8)
    loss, acc = end_to_end_loss(q, k_all, offset=4, temperature=0.5)
    logits = q @ k_all.t() / 0.5
    expected = -torch.log_softmax(logits, dim=1)[torch.arange(4), torch.arange(4) + 4].mean()
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    assert acc.item() == (logits.argmax(1) == torch.arange(4) + 4).float().mean().item()
