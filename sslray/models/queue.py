"""MoCo's dictionary: a FIFO queue of key features kept as persistent buffers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FeatureQueue(nn.Module):
    """A FIFO queue of K L2-normalised features of dimension C.

    `features` (K, C) and `ptr` are persistent buffers: they travel in `state_dict()`, so a
    checkpoint restores the dictionary exactly. Enqueue writes the oldest rows and wraps around.
    """

    features: torch.Tensor
    ptr: torch.Tensor

    def __init__(self, size: int, dim: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        # MoCo initialises the queue with random unit vectors (moco/builder.py).
        init = F.normalize(torch.randn(size, dim, generator=generator), dim=1)
        self.register_buffer("features", init)  # (K, C)
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return self.features.shape[0]

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Replace the oldest rows with `keys` (B, C); B may exceed K (then the last K win)."""
        keys = keys.detach().to(self.features.dtype)
        b, k = keys.shape[0], self.size
        if b >= k:
            self.features.copy_(keys[-k:])
            self.ptr.fill_((int(self.ptr) + b) % k)
            return
        start = int(self.ptr)
        idx = (torch.arange(b, device=keys.device) + start) % k
        self.features.index_copy_(0, idx.to(self.features.device), keys)
        self.ptr.fill_((start + b) % k)


class MemoryBank(nn.Module):
    """InstDisc's memory bank (Wu et al. 2018): one stored feature per training sample.

    `features` (N, C) is a persistent buffer indexed by dataset index. After each step the rows
    of the batch move towards the new features with momentum and are renormalised; negatives
    are sampled uniformly from the whole bank.
    """

    features: torch.Tensor

    def __init__(self, num_samples: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("features", F.normalize(torch.randn(num_samples, dim), dim=1))

    @torch.no_grad()
    def sample(self, k: int) -> torch.Tensor:
        """k rows drawn uniformly with replacement: (k, C)."""
        idx = torch.randint(self.features.shape[0], (k,), device=self.features.device)
        return self.features[idx].clone()

    @torch.no_grad()
    def update(self, index: torch.Tensor, feats: torch.Tensor, momentum: float) -> None:
        """v_i <- normalize(m v_i + (1 - m) f_i) for dataset indices (B,) and feats (B, C)."""
        index = index.to(self.features.device)
        old = self.features[index]
        new = F.normalize(momentum * old + (1 - momentum) * feats.detach().to(old.dtype), dim=1)
        self.features.index_copy_(0, index, new)
