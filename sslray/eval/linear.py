"""Linear probe, `fast` protocol: features extracted once, a linear classifier on the cache.

Features are standardised with the training split's mean and std, then a multinomial logistic
regression is fit full-batch with L-BFGS: seconds on 10k x 128 features, deterministic, and no
learning rate to tune. The `paper` protocol (`linear_probe_paper`) is MoCo's recipe: SGD with
augmentation through the frozen network, on in-memory arrays or on image folders
(`linear_probe_paper_folder`); it runs at the end of a pre-training run, on its Ray Train worker,
when `eval.linear_paper_epochs > 0`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from sslray.config_types import AugmentConfig
from sslray.data.catalog import ImageSpec
from sslray.data.datasets import ImageArrays
from sslray.data.views import BatchedViews, torchvision_views
from sslray.eval.features import extract_features, extract_folder_features, frozen

# L2 penalty on the weights, chosen for standardised features (sklearn's default C=1 scaled
# per sample is about 1e-4 at 10k samples): enough to keep L-BFGS finite on separable data.
DEFAULT_WEIGHT_DECAY = 1e-4


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices  # (M, k)
    return float((top == labels.view(-1, 1)).any(dim=1).float().mean())


def linear_probe_fast(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    weight_decay: float = DEFAULT_WEIGHT_DECAY,
    max_iter: int = 200,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Fit on (N, D) train features, report {"top1", "top5"} on the test features (on
    `device`: rank 0's GPU on a GPU run)."""
    x = train_features.to(device).double()
    mean, std = x.mean(dim=0), x.std(dim=0).clamp_min(1e-6)
    x = (x - mean) / std
    xt = (test_features.to(device).double() - mean) / std
    y = train_labels.to(device).long()
    # The weight is (C, D), as nn.Linear's: its gradient is then g^T @ x, a GEMM over x as
    # stored; with a (D, C) weight it is x^T @ g, which CPU BLAS runs 3-5x slower on a
    # (10k, 2048) x (the whole probe: 71 s -> 29 s on one AVX2 core, MEASUREMENTS.md).
    w = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, device=device,
                    requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, device=device, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-7, tolerance_change=1e-10, history_size=20)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(F.linear(x, w, b), y) + weight_decay * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        logits = F.linear(xt, w, b)
    labels = test_labels.to(device).long()
    out = {"top1": topk_accuracy(logits, labels, 1)}
    if num_classes > 5:
        out["top5"] = topk_accuracy(logits, labels, 5)
    return out


# MoCo's linear classification protocol (main_lincls.py): frozen backbone in eval mode, a linear
# layer on the pooled features, RandomResizedCrop + flip, SGD lr 30, momentum 0.9, wd 0, 100 epochs,
# lr x0.1 at epochs 60 and 80, batch 256.
PAPER_AUGMENT = AugmentConfig(
    crop_scale=(0.08, 1.0), jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, solarize_p=0.0
)


def _train_paper_head(
    encoder: nn.Module,
    epoch_batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]],
    num_classes: int,
    epochs: int,
    lr: float,
    device: torch.device | str,
) -> nn.Linear:
    """The paper protocol's training loop, shared by the in-memory and the image-folder probes.

    `epoch_batches()` is called once per epoch and yields (augmented images, labels) batches.
    The encoder runs frozen (eval mode, no_grad); the head is sized by the first batch's features.
    """
    milestones = (int(0.6 * epochs), int(0.8 * epochs))  # 60 and 80 of 100
    head: nn.Linear | None = None
    opt: torch.optim.SGD | None = None
    with frozen(encoder):
        for epoch in range(epochs):
            for x, y in epoch_batches():
                with torch.no_grad():
                    feats = encoder(x.to(device, non_blocking=True)).float()
                if head is None or opt is None:
                    head = nn.Linear(feats.shape[1], num_classes).to(device)
                    nn.init.normal_(head.weight, std=0.01)  # main_lincls.py: N(0, 0.01), zero bias
                    nn.init.zeros_(head.bias)
                    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=0.0)
                for group in opt.param_groups:
                    group["lr"] = lr * 0.1 ** sum(epoch >= m for m in milestones)
                loss = F.cross_entropy(head(feats), y.to(device, non_blocking=True))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    if head is None:
        raise ValueError("linear_probe_paper: no training images (or epochs=0)")
    return head


def _paper_scores(
    head: nn.Linear, test_feats: torch.Tensor, test_labels: torch.Tensor, num_classes: int
) -> dict[str, float]:
    with torch.no_grad():
        logits = head(test_feats.to(head.weight.device)).cpu()
    out = {"top1": topk_accuracy(logits, test_labels, 1)}
    if num_classes > 5:
        out["top5"] = topk_accuracy(logits, test_labels, 5)
    return out


def linear_probe_paper(
    encoder: nn.Module,
    train: ImageArrays,
    test: ImageArrays,
    spec: ImageSpec,
    epochs: int,
    lr: float = 30.0,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> dict[str, float]:
    """Train a linear classifier through the frozen encoder with augmentation; test top-1/top-5.

    The encoder is not modified: it runs in eval mode (BN running statistics frozen) under
    no_grad, and its train/eval mode is restored afterwards. `seed` orders the batches; the
    augmentations and the head's init draw from the global torch RNG.
    """
    views = BatchedViews((PAPER_AUGMENT,), spec)
    batch_size = min(batch_size, len(train))  # a set smaller than one batch still trains
    g = torch.Generator().manual_seed(seed)

    def epoch_batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(train), generator=g)
        for start in range(0, len(train) - batch_size + 1, batch_size):  # full batches only
            idx = order[start : start + batch_size]
            (x,) = views(train.images[idx].to(device))
            yield x, train.labels[idx]

    head = _train_paper_head(encoder, epoch_batches, train.num_classes, epochs, lr, device)
    test_feats = extract_features(encoder, test, spec, 512, device)
    return _paper_scores(head, test_feats, test.labels, train.num_classes)


def linear_probe_paper_folder(
    encoder: nn.Module,
    train_folder: Any,
    test_folder: Any,
    spec: ImageSpec,
    epochs: int,
    lr: float = 30.0,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    seed: int = 0,
    num_workers: int = 0,
) -> dict[str, float]:
    """`linear_probe_paper` on image files (torchvision ImageFolder train and test splits).

    Training views come from a per-sample v2 pipeline in DataLoader workers (RandomResizedCrop,
    flip, normalise: main_lincls.py); test features are the centre-crop view of
    `extract_folder_features`. Batches are shuffled by a generator seeded with `seed` (which
    also seeds the workers); as in the in-memory probe, only full batches train (a set smaller
    than one batch is one batch). `train_folder` itself is not modified.
    """
    if list(train_folder.classes) != list(test_folder.classes):
        raise ValueError(
            f"linear_probe_paper_folder: the train and test folders' classes differ "
            f"({len(train_folder.classes)} vs {len(test_folder.classes)}); labels would not match"
        )
    train = copy.copy(train_folder)  # its own transform; the samples list is shared
    train.transform = torchvision_views(PAPER_AUGMENT, spec)
    g = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        train, batch_size=min(batch_size, len(train)), shuffle=True, generator=g,
        num_workers=num_workers, persistent_workers=num_workers > 0, drop_last=True,
        pin_memory=torch.device(device).type == "cuda",
    )
    num_classes = len(train_folder.classes)
    head = _train_paper_head(encoder, lambda: loader, num_classes, epochs, lr, device)
    test_feats, test_labels = extract_folder_features(
        encoder, test_folder, spec, batch_size, device, num_workers
    )
    return _paper_scores(head, test_feats, test_labels, num_classes)
