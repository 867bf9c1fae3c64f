"""Feature extraction from a frozen encoder (the online/query encoder, never a momentum one)."""

from __future__ import annotations

import torch
from torch import nn

from sslray.data.datasets import ImageArrays
from sslray.data.views import eval_transform


@torch.no_grad()
def extract_features(
    encoder: nn.Module,
    data: ImageArrays,
    size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    batch_size: int = 512,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """(N, D) float32 features of every image, encoder in eval mode (BN running statistics).

    The encoder's train/eval mode is restored afterwards.
    """
    was_training = encoder.training
    encoder.eval()
    out = []
    try:
        for start in range(0, len(data), batch_size):
            x = data.images[start : start + batch_size].to(device, non_blocking=True)
            out.append(encoder(eval_transform(x, size, mean, std)).float().cpu())
    finally:
        encoder.train(was_training)
    return torch.cat(out) if out else torch.empty(0, 0)
