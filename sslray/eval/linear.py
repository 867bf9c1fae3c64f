"""Linear probe, `fast` protocol: features extracted once, a linear classifier on the cache.

Features are standardised with the training split's mean and std, then a multinomial logistic
regression is fit full-batch with L-BFGS: seconds on 10k x 128 features, deterministic, and no
learning rate to tune. The `paper` protocol (`linear_probe_paper`) is MoCo's recipe: SGD with
augmentation through the frozen network; it runs at the end of a pre-training run, on its Ray
Train worker, when `eval.linear_paper_epochs > 0`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sslray.config_types import AugmentConfig
from sslray.data.datasets import ImageArrays
from sslray.data.views import BatchedViews
from sslray.eval.features import extract_features, frozen

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
) -> dict[str, float]:
    """Fit on (N, D) train features, report {"top1", "top5"} on the test features."""
    x = train_features.double()
    mean, std = x.mean(dim=0), x.std(dim=0).clamp_min(1e-6)
    x = (x - mean) / std
    xt = (test_features.double() - mean) / std
    y = train_labels.long()
    w = torch.zeros(x.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-7, tolerance_change=1e-10, history_size=20)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + weight_decay * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        logits = xt @ w + b
    out = {"top1": topk_accuracy(logits, test_labels.long(), 1)}
    if num_classes > 5:
        out["top5"] = topk_accuracy(logits, test_labels.long(), 5)
    return out


# MoCo's linear classification protocol (main_lincls.py): frozen backbone in eval mode, a linear
# layer on the pooled features, RandomResizedCrop + flip, SGD lr 30, momentum 0.9, wd 0, 100 epochs,
# lr x0.1 at epochs 60 and 80, batch 256.
PAPER_AUGMENT = AugmentConfig(
    crop_scale=(0.08, 1.0), jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, solarize_p=0.0
)


def linear_probe_paper(
    encoder: nn.Module,
    train: ImageArrays,
    test: ImageArrays,
    size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    epochs: int,
    lr: float = 30.0,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> dict[str, float]:
    """Train a linear classifier through the frozen encoder with augmentation; test top-1/top-5.

    The encoder is not modified: it runs in eval mode (BN running statistics frozen) under
    no_grad, and its train/eval mode is restored afterwards.
    """
    views = BatchedViews((PAPER_AUGMENT,), size, mean, std)
    batch_size = min(batch_size, len(train))  # a set smaller than one batch still trains
    milestones = (int(0.6 * epochs), int(0.8 * epochs))  # 60 and 80 of 100
    g = torch.Generator().manual_seed(seed)
    with frozen(encoder):
        head: nn.Linear | None = None  # sized by the first batch's features
        opt: torch.optim.SGD | None = None
        for epoch in range(epochs):
            order = torch.randperm(len(train), generator=g)
            for start in range(0, len(train) - batch_size + 1, batch_size):
                idx = order[start : start + batch_size]
                (x,) = views(train.images[idx].to(device))
                with torch.no_grad():
                    feats = encoder(x).float()
                if head is None or opt is None:
                    head = nn.Linear(feats.shape[1], train.num_classes).to(device)
                    nn.init.normal_(head.weight, std=0.01)  # main_lincls.py: N(0, 0.01), zero bias
                    nn.init.zeros_(head.bias)
                    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=0.0)
                for group in opt.param_groups:
                    group["lr"] = lr * 0.1 ** sum(epoch >= m for m in milestones)
                loss = F.cross_entropy(head(feats), train.labels[idx].to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        if head is None:
            raise ValueError("linear_probe_paper: no training images (or epochs=0)")
        test_feats = extract_features(encoder, test, size, mean, std, 512, device).to(device)
        with torch.no_grad():
            logits = head(test_feats).cpu()
    out = {"top1": topk_accuracy(logits, test.labels, 1)}
    if train.num_classes > 5:
        out["top5"] = topk_accuracy(logits, test.labels, 5)
    return out
