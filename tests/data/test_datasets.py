"""Datasets, views and training streams."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from sslray.config_types import AugmentConfig
from sslray.data.catalog import ImageSpec
from sslray.data.datasets import (
    DEBIAN_FASHION_MNIST,
    DatasetError,
    load_arrays,
    load_idx_dataset,
    make_synthetic,
    read_idx,
)
from sslray.data.streams import ArrayStream, shard_steps
from sslray.data.views import BatchedViews, eval_transform, torchvision_views
from tests.conftest import tiny_config


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _fake_mnist(root: Path, n: int = 12) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (n, 28, 28)), rng.integers(0, 10, n)
    for img, lbl in [("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                     ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")]:
        _write_idx(root / f"{img}.gz", images)
        _write_idx(root / f"{lbl}.gz", labels)
    return images, labels


def test_idx_round_trip_and_layout(tmp_path: Path):
    images, labels = _fake_mnist(tmp_path)
    data = load_idx_dataset("mnist", "train", str(tmp_path))
    assert data.images.shape == (12, 1, 28, 28) and data.images.dtype == torch.uint8
    assert np.array_equal(data.images[:, 0].numpy(), images)
    assert np.array_equal(data.labels.numpy(), labels)


def test_truncated_idx_is_a_clear_error(tmp_path: Path):
    _fake_mnist(tmp_path)
    good = gzip.open(tmp_path / "train-images-idx3-ubyte.gz").read()
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(good[:-100])
    with pytest.raises(DatasetError, match="truncated IDX file"):
        read_idx(tmp_path / "train-images-idx3-ubyte.gz")


def test_missing_dataset_says_where_to_put_it(tmp_path: Path):
    with pytest.raises(DatasetError) as exc:
        load_idx_dataset("mnist", "train", str(tmp_path / "nowhere"))
    assert "train-images-idx3-ubyte" in str(exc.value) and "data.root" in str(exc.value)


def test_cifar_missing_never_downloads(tmp_path: Path):
    cfg = tiny_config(data={"dataset": "cifar10", "root": str(tmp_path)})
    with pytest.raises(DatasetError, match="download=true"):
        load_arrays(cfg.data, "train")
    assert list(tmp_path.iterdir()) == []  # nothing fetched, nothing written


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_official_split():
    cfg = tiny_config(data={"dataset": "fashion_mnist", "image_size": None})
    train, test = load_arrays(cfg.data, "train"), load_arrays(cfg.data, "test")
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    sub = load_arrays(tiny_config(data={"dataset": "fashion_mnist", "train_subset": 500}).data,
                      "train")
    assert len(sub) == 500


def test_digits_split_and_resize():
    cfg = tiny_config(data={"dataset": "digits", "image_size": 28})
    train, test = load_arrays(cfg.data, "train"), load_arrays(cfg.data, "test")
    assert len(train) + len(test) == 1797 and train.images.shape[1:] == (1, 28, 28)


def test_synthetic_is_deterministic_and_seeded():
    a, b = make_synthetic(40, 4, 16, seed=1), make_synthetic(40, 4, 16, seed=1)
    c = make_synthetic(40, 4, 16, seed=2)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    assert torch.bincount(a.labels).tolist() == [10] * 4


def test_batched_views_replicate_gray_to_rgb_and_vary_per_sample():
    torch.manual_seed(0)
    images = make_synthetic(16, 4, 16, seed=1).images  # (16, 1, 16, 16)
    views = BatchedViews((AugmentConfig(), AugmentConfig()), ImageSpec(16, (0.5,) * 3, (0.25,) * 3))
    v1, v2 = views(images)
    assert v1.shape == v2.shape == (16, 3, 16, 16)
    assert not torch.allclose(v1, v2)


def test_batched_views_without_augmentation_is_the_eval_transform():
    images = make_synthetic(8, 4, 16, seed=1).images
    identity = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0,
                             jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)
    spec = ImageSpec(16, (0.5,) * 3, (0.25,) * 3)
    (view,) = BatchedViews((identity,), spec)(images)
    assert torch.allclose(view, eval_transform(images, spec), atol=1e-5)


def test_batched_flip_and_solarize():
    x = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4).repeat(2, 1, 1, 1) * 16
    flip = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=1.0,
                         jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)
    (v,) = BatchedViews((flip,), ImageSpec(4, (0.0,) * 3, (1.0,) * 3))(x)
    assert torch.allclose(v[0, 0], x[0, 0].float().flip(-1) / 255, atol=1e-5)
    sol = flip.model_copy(update={"flip_p": 0.0, "solarize_p": 1.0})
    (s,) = BatchedViews((sol,), ImageSpec(4, (0.0,) * 3, (1.0,) * 3))(x)
    xf = x[0, 0].float() / 255
    assert torch.allclose(s[0, 0], torch.where(xf >= 0.5, 1 - xf, xf), atol=1e-5)


def test_torchvision_views_moco_v1_v2_shapes():
    img = torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8)
    for aug in (AugmentConfig.moco_v1(), AugmentConfig.moco_v2()):
        out = torchvision_views(aug, ImageSpec(24, (0.5,) * 3, (0.25,) * 3))(img)
        assert out.shape == (3, 24, 24) and out.dtype == torch.float32


def test_streams_partition_the_global_batch_across_workers():
    steps = [shard_steps(100, per_worker=8, world=2, rank=r, seed=0, epoch=3) for r in (0, 1)]
    assert steps[0].shape == (6, 8)  # 100 // 16 full global batches
    for s in range(6):
        assert not set(steps[0][s].tolist()) & set(steps[1][s].tolist())
    one_worker = shard_steps(100, per_worker=16, world=1, rank=0, seed=0, epoch=3)
    assert set(torch.cat([steps[0][2], steps[1][2]]).tolist()) == set(one_worker[2].tolist())
    assert not torch.equal(shard_steps(100, 8, 2, 0, 0, 4), steps[0])  # a new order per epoch


def test_dataset_smaller_than_a_batch_is_a_clear_error():
    data = make_synthetic(20, 4, 8, seed=1)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        ArrayStream(data, per_worker=16, world=2, rank=0, seed=0)


def _write_image_folder(root: Path) -> None:
    from PIL import Image

    data = make_synthetic(48, 3, 20, seed=1)
    for split in ("train", "val"):
        for i in range(len(data)):
            d = root / split / f"class{int(data.labels[i])}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(data.images[i, 0].numpy()).save(d / f"{i}.png")


def test_image_folder_trains_and_evaluates_through_per_sample_views(tmp_path: Path):
    from sslray.training.loop import fit

    _write_image_folder(tmp_path)
    cfg = tiny_config(data={"dataset": "imagefolder", "root": str(tmp_path), "image_size": 16,
                            "loader_workers": 0},
                      train={"epochs": 1, "batch_size": 16})
    metrics = fit(cfg, verbose=False)
    assert metrics["epoch"] == 1.0 and 0 <= metrics["eval/knn_top1"] <= 1
    assert "eval/knn_top1_init" in metrics


def test_image_folder_missing_split_is_clear(tmp_path: Path):
    from sslray.data.datasets import load_image_folder

    cfg = tiny_config(data={"dataset": "imagefolder", "root": str(tmp_path)})
    with pytest.raises(DatasetError, match="train/<class>"):
        load_image_folder(cfg.data, "train")
