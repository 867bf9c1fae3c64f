"""Evaluation on frozen features: kNN (faiss) and the fast linear probe; k-means comes later."""

from sslray.eval.features import extract_features
from sslray.eval.knn import knn_classify, knn_top1
from sslray.eval.linear import linear_probe_fast

__all__ = ["extract_features", "knn_classify", "knn_top1", "linear_probe_fast"]
