"""Seeded faiss k-means and clustering scores (NMI, purity).

The knowledge-transfer step of Noroozi et al. (CVPR 2018): features of a pre-trained model ->
k-means -> each image's nearest centroid is its pseudo-label. Preprocessing follows DeepCluster
(facebookresearch/deepcluster clustering.py `preprocess_features`): optional PCA-whitening, then
L2 normalisation of every row.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class KMeansResult:
    labels: np.ndarray  # (N,) int64: index of each row's nearest centroid
    centroids: np.ndarray  # (k, D') float32, in the preprocessed space (after PCA / L2 norm)
    sizes: np.ndarray  # (k,) int64: rows assigned to each centroid
    objective: float  # sum over all rows of the squared distance to their centroid
    empty_clusters: int  # centroids no row is assigned to (faiss splits them while training)

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])


def _as_float32(features: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(features, torch.Tensor):
        features = features.detach().float().cpu().numpy()
    x = np.ascontiguousarray(np.asarray(features, dtype=np.float32))
    if x.ndim != 2:
        raise ValueError(f"kmeans: features must be (N, D), got shape {x.shape}")
    return x


def _faiss() -> Any:
    """faiss, imported on first use (importing sslray.eval should not pay for faiss)."""
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # INFO lines repeat per worker
    import faiss

    return faiss


def preprocess(x: np.ndarray, l2_normalize: bool, pca_dim: int | None) -> np.ndarray:
    """DeepCluster's preprocessing: PCA to pca_dim with whitening, then row L2 normalisation."""
    if pca_dim is not None:
        if not 1 <= pca_dim <= x.shape[1]:
            raise ValueError(
                f"kmeans: pca_dim={pca_dim} must be in [1, {x.shape[1]}] (the feature dimension); "
                f"set pca_dim lower or to null"
            )
        if pca_dim > x.shape[0]:
            raise ValueError(
                f"kmeans: pca_dim={pca_dim} needs at least {pca_dim} samples to fit the PCA, got "
                f"{x.shape[0]}; set method.pca_dim to at most {x.shape[0]} (or null)"
            )
        # eigen_power -0.5 whitens (DeepCluster: faiss.PCAMatrix(ndim, 256, eigen_power=-0.5)).
        pca = _faiss().PCAMatrix(x.shape[1], pca_dim, -0.5)
        pca.train(x)
        x = pca.apply(x)
    if l2_normalize:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return np.ascontiguousarray(x, dtype=np.float32)


def kmeans(
    features: np.ndarray | torch.Tensor,
    k: int,
    *,
    seed: int = 0,
    iters: int = 20,  # DeepCluster clustering.py: clus.niter = 20
    l2_normalize: bool = True,  # DeepCluster: rows L2-normalised before k-means
    pca_dim: int | None = None,  # DeepCluster: PCA-whitening to 256 for 4096-d AlexNet features
    use_gpu: bool | None = None,
    max_points_per_centroid: int = 256,  # faiss's default: train on at most 256 * k sampled rows
    nredo: int = 1,  # faiss's default (and DeepCluster's): one run from one random init
) -> KMeansResult:
    """Cluster the rows of features (N, D) into k groups with faiss; every row gets a label.

    Seeded (faiss's `seed` picks the initial centroids and the training subsample), so a CPU run
    is deterministic for a seed. `use_gpu=None` uses a GPU when faiss was built with GPUs and
    sees one. With N > max_points_per_centroid * k faiss trains on a seeded subsample of that many
    rows; all N rows are then assigned to their nearest centroid. faiss starts from k random rows,
    which can merge two true groups and split another; `nredo` > 1 restarts from other random
    rows and keeps the run with the lowest objective.
    """
    x = _as_float32(features)
    n = x.shape[0]
    if k < 2:
        raise ValueError(f"kmeans: k={k} clusters; k must be >= 2 (set method.k to 2 or more)")
    if iters < 1 or nredo < 1:
        raise ValueError(f"kmeans: iters={iters} and nredo={nredo} must both be >= 1")
    if k > n:
        raise ValueError(
            f"kmeans: k={k} clusters for {n} feature rows; k must be <= the number of rows "
            f"(lower method.k or cluster a larger split)"
        )
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise ValueError(
            f"kmeans: {int(bad.sum())} of {n} feature rows are not finite (first at row "
            f"{int(np.argmax(bad))}); the source model probably diverged: check its train/loss, "
            f"or lower its optim.lr"
        )
    x = preprocess(x, l2_normalize, pca_dim)
    faiss = _faiss()
    has_gpu = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    if use_gpu and not has_gpu:
        raise ValueError("kmeans: use_gpu=True but faiss sees no GPU (install faiss-gpu, the "
                         "`gpu` extra, or pass use_gpu=None)")
    use_gpu = has_gpu if use_gpu is None else use_gpu
    km = faiss.Kmeans(
        x.shape[1], k, niter=iters, seed=seed, gpu=1 if use_gpu else False,
        max_points_per_centroid=max_points_per_centroid, nredo=nredo, verbose=False,
    )
    km.train(x)
    dist, assign = km.index.search(x, 1)  # (N, 1) squared L2 distance and nearest centroid
    labels = assign[:, 0].astype(np.int64)
    sizes = np.bincount(labels, minlength=k).astype(np.int64)
    return KMeansResult(
        labels=labels,
        centroids=np.asarray(km.centroids, dtype=np.float32).reshape(k, x.shape[1]),
        sizes=sizes,
        objective=float(dist.astype(np.float64).sum()),  # over all N rows, not the subsample
        empty_clusters=int((sizes == 0).sum()),
    )


def _contingency(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(|A|, |B|) counts of each (label of a, label of b) pair; labels may be any integers."""
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    if a.shape != b.shape:
        raise ValueError(f"labelings differ in length: {a.shape[0]} and {b.shape[0]}")
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    na, nb = int(ai.max(initial=-1)) + 1, int(bi.max(initial=-1)) + 1
    return np.bincount(ai * nb + bi, minlength=na * nb).reshape(na, nb).astype(np.float64)


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def nmi(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised mutual information, MI / mean(H(a), H(b)) (sklearn's default, 'arithmetic').

    1.0 for identical partitions (up to renaming), about 0 for independent ones. As in sklearn,
    two single-cluster labelings score 1.0.
    """
    c = _contingency(a, b)  # (|A|, |B|)
    if c.shape[0] == c.shape[1] <= 1:
        return 1.0
    n = c.sum()
    pa, pb = c.sum(axis=1, keepdims=True), c.sum(axis=0, keepdims=True)  # (|A|, 1), (1, |B|)
    nz = c > 0
    mi = float((c[nz] / n * np.log(c[nz] * n / (pa @ pb)[nz])).sum())
    if mi <= 0:
        return 0.0
    return mi / ((_entropy(pa.ravel()) + _entropy(pb.ravel())) / 2)


def purity(pred: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of rows whose cluster's majority class is their class (1.0: every cluster pure)."""
    c = _contingency(pred, truth)  # (clusters, classes)
    return float(c.max(axis=1).sum() / max(c.sum(), 1.0))
