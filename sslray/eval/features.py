"""Feature extraction from a frozen encoder (the online/query encoder, never a momentum one)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchvision.transforms import v2

from sslray.data.catalog import ImageSpec
from sslray.data.datasets import ImageArrays
from sslray.data.views import eval_transform


@contextmanager
def frozen(encoder: nn.Module) -> Iterator[nn.Module]:
    """The encoder in eval mode (BN running statistics, no updates); its mode is restored after."""
    was_training = encoder.training
    encoder.eval()
    try:
        yield encoder
    finally:
        encoder.train(was_training)


@torch.no_grad()
def extract_features(
    encoder: nn.Module,
    data: ImageArrays,
    spec: ImageSpec,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """(N, D) float32 features of every image, encoder in eval mode (BN running statistics).

    The encoder's train/eval mode is restored afterwards.
    """
    out = []
    with frozen(encoder):
        for start in range(0, len(data), batch_size):
            x = data.images[start : start + batch_size].to(device, non_blocking=True)
            out.append(encoder(eval_transform(x, spec)).float().cpu())
    return torch.cat(out) if out else torch.empty(0, 0)


def folder_eval_transform(spec: ImageSpec) -> Any:
    """The standard ImageNet evaluation view: resize to size/0.875, centre crop, normalise."""
    size, mean, std = spec.size, list(spec.mean), list(spec.std)
    return v2.Compose([
        v2.ToImage(), v2.RGB(), v2.Resize(int(round(size / 0.875)), antialias=True),
        v2.CenterCrop(size), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std),
    ])


@torch.no_grad()
def extract_folder_features(
    encoder: nn.Module,
    folder: Any,
    spec: ImageSpec,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    indices: range | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) features and (N,) labels of an image-file dataset (torchvision ImageFolder), or of
    its samples `indices` (one rank's share)."""
    folder.transform = folder_eval_transform(spec)
    data = folder if indices is None else Subset(folder, indices)
    loader = DataLoader(data, batch_size=batch_size, num_workers=num_workers)
    feats, labels = [], []
    with frozen(encoder):
        for x, y in loader:
            feats.append(encoder(x.to(device, non_blocking=True)).float().cpu())
            labels.append(y)
    if not feats:  # an empty share (fewer samples than ranks)
        return torch.empty(0, 0), torch.empty(0, dtype=torch.long)
    return torch.cat(feats), torch.cat(labels)
