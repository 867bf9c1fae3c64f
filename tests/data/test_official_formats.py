"""CIFAR-10/100 and STL-10 read from synthesized files in their exact official on-disk formats.

The files are written the way the official archives hold them (CIFAR: protocol-2 pickles of
{data: (N, 3072) uint8 rows of R, G, B planes, labels / fine_labels}, plus the meta file;
STL-10: raw uint8 images, each channel column-major, and uint8 labels 1..10), with a known
image per sample, so a wrong reshape, transpose or label offset fails the pixel check.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from sslray.data.datasets import DatasetError, load_arrays
from tests.conftest import tiny_config


def _images(n: int, size: int, seed: int) -> np.ndarray:
    """(N, 3, size, size) uint8 with distinct channels and no symmetry (a transposed or
    channel-mixed read does not match)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 3, size, size), dtype=np.uint8)


def _pickle(path: Path, obj: dict) -> None:
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10(root: Path, per_batch: int = 6) -> tuple[np.ndarray, np.ndarray]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    xs, ys = [], []
    for i, name in enumerate([f"data_batch_{j}" for j in range(1, 6)] + ["test_batch"]):
        x = _images(per_batch, 32, seed=i)
        y = [(i + j) % 10 for j in range(per_batch)]
        _pickle(folder / name, {"batch_label": f"batch {i}", "labels": y,
                                "data": x.reshape(per_batch, 3072), "filenames": []})
        xs.append(x)
        ys.append(y)
    _pickle(folder / "batches.meta", {"label_names": [f"c{i}" for i in range(10)],
                                      "num_cases_per_batch": per_batch, "num_vis": 3072})
    return np.concatenate(xs[:5]), np.concatenate(ys[:5])


def test_cifar10_official_batches(tmp_path: Path) -> None:
    x, y = write_cifar10(tmp_path)
    cfg = tiny_config(data={"dataset": "cifar10", "root": str(tmp_path), "image_size": None,
                            "train_subset": None, "test_subset": None})
    train, test = load_arrays(cfg.data, "train"), load_arrays(cfg.data, "test")
    assert train.images.shape == (30, 3, 32, 32) and test.images.shape == (6, 3, 32, 32)
    assert torch.equal(train.images, torch.from_numpy(x))
    assert train.labels.tolist() == y.tolist() and train.num_classes == 10
    # the first pixel of image 0 is the first byte of its row's red plane
    assert int(train.images[0, 0, 0, 0]) == int(x.reshape(30, 3072)[0, 0])
    assert int(train.images[0, 2, 0, 1]) == int(x.reshape(30, 3072)[0, 2048 + 1])


def test_cifar100_fine_labels(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    x = _images(8, 32, seed=5)
    for name in ("train", "test"):
        _pickle(folder / name, {"filenames": [], "batch_label": name,
                                "fine_labels": [99, 0, 50, 7, 1, 2, 3, 4],
                                "coarse_labels": [19, 0, 10, 1, 0, 0, 0, 0],
                                "data": x.reshape(8, 3072)})
    _pickle(folder / "meta", {"fine_label_names": [f"f{i}" for i in range(100)],
                              "coarse_label_names": [f"c{i}" for i in range(20)]})
    cfg = tiny_config(data={"dataset": "cifar100", "root": str(tmp_path), "image_size": None,
                            "train_subset": None})
    train = load_arrays(cfg.data, "train")
    assert train.num_classes == 100 and train.labels.tolist()[:3] == [99, 0, 50]
    assert torch.equal(train.images, torch.from_numpy(x))


def write_stl10(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    parts: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    for i, (part, n) in enumerate((("train", 5), ("test", 4), ("unlabeled", 7))):
        x = _images(n, 96, seed=10 + i)
        # the official binaries store each channel column-major (MATLAB order)
        x.transpose(0, 1, 3, 2).tofile(folder / f"{part}_X.bin")
        y = None
        if part != "unlabeled":
            y = np.arange(1, n + 1, dtype=np.uint8)  # labels 1..10 on disk
            y.tofile(folder / f"{part}_y.bin")
        parts[part] = (x, y)
    (folder / "class_names.txt").write_text("\n".join(f"c{i}" for i in range(10)) + "\n")
    return parts


def test_stl10_binaries_with_the_unlabeled_split_for_pretraining(tmp_path: Path) -> None:
    parts = write_stl10(tmp_path)
    cfg = tiny_config(data={"dataset": "stl10", "root": str(tmp_path), "image_size": None,
                            "train_subset": None, "test_subset": None})
    pretrain = load_arrays(cfg.data, "train")  # the 100k unlabeled images in the real set
    assert torch.equal(pretrain.images, torch.from_numpy(parts["unlabeled"][0]))
    assert pretrain.labels.tolist() == [-1] * 7
    labeled = load_arrays(cfg.data, "train", labeled=True)
    assert torch.equal(labeled.images, torch.from_numpy(parts["train"][0]))
    assert labeled.labels.tolist() == [0, 1, 2, 3, 4]  # 1..10 on disk -> 0..9
    test = load_arrays(cfg.data, "test")
    assert test.images.shape == (4, 3, 96, 96) and test.labels.tolist() == [0, 1, 2, 3]


def test_truncated_or_wrong_files_name_the_file(tmp_path: Path) -> None:
    write_stl10(tmp_path)
    bad = tmp_path / "stl10_binary" / "unlabeled_X.bin"
    bad.write_bytes(bad.read_bytes()[:-5])
    cfg = tiny_config(data={"dataset": "stl10", "root": str(tmp_path)})
    with pytest.raises(DatasetError, match="unlabeled_X.bin.*whole number"):
        load_arrays(cfg.data, "train")
    write_cifar10(tmp_path / "c")
    (tmp_path / "c" / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    cfg = tiny_config(data={"dataset": "cifar10", "root": str(tmp_path / "c")})
    with pytest.raises(DatasetError, match="data_batch_3: not a CIFAR python batch"):
        load_arrays(cfg.data, "train")
    (tmp_path / "c" / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DatasetError, match="data_batch_3 not found.*download=true"):
        load_arrays(cfg.data, "train")
