"""Evaluation on frozen features: kNN (faiss); linear probe and k-means land with later issues."""

from sslray.eval.features import extract_features
from sslray.eval.knn import knn_classify, knn_top1

__all__ = ["extract_features", "knn_classify", "knn_top1"]
