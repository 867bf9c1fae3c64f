"""Datasets (real loaders, the embedded default, a synthetic set), views, training streams."""

from sslray.data.datasets import DatasetError, ImageArrays, load_arrays, load_image_folder
from sslray.data.streams import ArrayStream, Batch, FileStream
from sslray.data.views import BatchedViews, eval_transform, torchvision_crop, torchvision_views

__all__ = [
    "ArrayStream",
    "Batch",
    "BatchedViews",
    "DatasetError",
    "FileStream",
    "ImageArrays",
    "eval_transform",
    "load_arrays",
    "load_image_folder",
    "torchvision_crop",
    "torchvision_views",
]
