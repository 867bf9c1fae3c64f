"""Weighted cosine kNN on frozen features with faiss (Wu et al. 2018, InstDisc protocol).

Each of the k nearest training features (cosine similarity s_i) votes for its label with weight
exp(s_i / T); the prediction is the class with the largest total vote.
"""

from __future__ import annotations

import logging

logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its INFO lines repeat per worker

import faiss  # noqa: E402  (after the logger level: faiss logs while importing)
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def _index(dim: int) -> faiss.Index:
    index: faiss.Index = faiss.IndexFlatIP(dim)
    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    return index


@torch.no_grad()
def knn_classify(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    k: int = 200,
    temperature: float = 0.07,
    num_classes: int | None = None,
    batch_size: int = 4096,
    center: bool = False,
) -> torch.Tensor:
    """Predicted labels (M,) for test_features (M, D) from train_features (N, D), labels (N,).

    Features are L2-normalised here, so inner product = cosine similarity. k is capped at N.
    `center`: subtract the memory's mean feature (D,) from both sets first (SimpleShot's CL2N,
    Wang et al. 2019): cosine similarity then measures directions away from the mean.
    """
    if train_features.shape[0] != train_labels.shape[0]:
        raise ValueError("train_features and train_labels differ in length")
    if train_features.shape[0] == 0:
        raise ValueError("knn_classify: no training features")
    n_cls = int(num_classes if num_classes is not None else int(train_labels.max()) + 1)
    k = min(k, train_features.shape[0])
    train_f, test_f = train_features.float(), test_features.float()
    if center:
        mean = train_f.mean(dim=0, keepdim=True)  # (1, D)
        train_f, test_f = train_f - mean, test_f - mean.to(test_f.device)
    train = F.normalize(train_f, dim=1).cpu().numpy()
    test = F.normalize(test_f, dim=1).cpu().numpy()
    index = _index(train.shape[1])
    index.add(np.ascontiguousarray(train))
    labels = train_labels.long().cpu()
    preds = []
    for start in range(0, test.shape[0], batch_size):
        sim, idx = index.search(np.ascontiguousarray(test[start : start + batch_size]), k)
        sim_t, idx_t = torch.from_numpy(sim), torch.from_numpy(idx)  # (m, k)
        weights = (sim_t / temperature).exp()  # (m, k)
        votes = torch.zeros(sim_t.shape[0], n_cls)
        votes.scatter_add_(1, labels[idx_t], weights)  # (m, C)
        preds.append(votes.argmax(dim=1))
    return torch.cat(preds)


def knn_top1(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    k: int = 200,
    temperature: float = 0.07,
    num_classes: int | None = None,
    center: bool = False,
) -> float:
    """Top-1 accuracy of `knn_classify` on labelled test features."""
    pred = knn_classify(train_features, train_labels, test_features, k, temperature, num_classes,
                        center=center)
    return float((pred == test_labels.cpu()).float().mean())
