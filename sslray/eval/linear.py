"""Linear probe, `fast` protocol: features extracted once, a linear classifier on the cache.

Features are standardised with the training split's mean and std, then a multinomial logistic
regression is fit full-batch with L-BFGS: seconds on 10k x 128 features, deterministic, and no
learning rate to tune. (The `paper` protocol, SGD through the frozen network with augmentation,
is the MoCo/BYOL recipe and lands as a Ray Train job of its own.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

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
