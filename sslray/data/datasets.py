"""Datasets from a local root. Nothing is ever downloaded unless `data.download: true`.

In-memory datasets come back as `ImageArrays`: uint8 images (N, C, H, W) with C = 1 (grayscale,
replicated to 3 channels by the view pipelines) or 3, and int64 labels. Image-file datasets
(ImageFolder, e.g. ImageNet) come back as a torchvision `ImageFolder` and are read per sample.

Default roots: `data.root` if set, else `$SSLRAY_DATA/<dataset>` (`$SSLRAY_DATA` defaults to
`./data`); Fashion-MNIST also looks in `/usr/share/datasets/fashion-mnist`, where Debian's
`dataset-fashion-mnist` package (installed by `make`) puts the official 60k/10k IDX files.
"""

from __future__ import annotations

import gzip
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from sslray.config_types import DataConfig
from sslray.data.catalog import dataset_info

Split = Literal["train", "test"]

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

class DatasetError(FileNotFoundError):
    """A dataset that cannot be loaded; the message says where the files must go."""


@dataclass(frozen=True)
class ImageArrays:
    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64; -1 where a split has no labels (STL-10 unlabeled)
    num_classes: int
    name: str

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, n: int | None, seed: int) -> ImageArrays:
        """A seeded random subset of n images (all of them when n is None or >= len)."""
        if n is None or n >= len(self):
            return self
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self), generator=g)[:n].sort().values
        return ImageArrays(self.images[idx], self.labels[idx], self.num_classes, self.name)

    def slice(self, start: int, stop: int) -> ImageArrays:
        return ImageArrays(self.images[start:stop], self.labels[start:stop], self.num_classes,
                           self.name)

    def resized(self, size: int | None) -> ImageArrays:
        if size is None or self.images.shape[-1] == size:
            return self
        x = F.interpolate(self.images.float(), size=(size, size), mode="bilinear", antialias=True)
        images = x.round().clamp(0, 255).to(torch.uint8)
        return ImageArrays(images, self.labels, self.num_classes, self.name)


def data_home() -> Path:
    return Path(os.environ.get("SSLRAY_DATA", "data"))


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (MNIST format; gzipped or raw) into a uint8 array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise DatasetError(f"{path}: cannot read IDX file ({exc}); re-copy the file") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DatasetError(f"{path}: not a uint8 IDX file (bad magic number)")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape)) + 4 + 4 * ndim
    if len(data) != expected:
        raise DatasetError(f"{path}: truncated IDX file ({len(data)} bytes, expected {expected})")
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _find_idx(candidates: list[Path], stem: str) -> Path | None:
    for root in candidates:
        for sub in ("", "raw", "FashionMNIST/raw", "MNIST/raw"):
            for suffix in (".gz", ""):
                p = root / sub / (stem + suffix)
                if p.is_file():
                    return p
    return None


def load_idx_dataset(name: str, split: Split, root: str | None) -> ImageArrays:
    """Fashion-MNIST / MNIST from IDX files (the official files, gzipped or not)."""
    if root is not None:
        candidates = [Path(root)]
    else:
        candidates = [data_home() / name]
        if name == "fashion_mnist":
            candidates.append(DEBIAN_FASHION_MNIST)
    img_stem, lbl_stem = _IDX_FILES[split]
    img_path, lbl_path = _find_idx(candidates, img_stem), _find_idx(candidates, lbl_stem)
    if img_path is None or lbl_path is None:
        where = " or ".join(str(c) for c in candidates)
        hint = (
            "install Debian's package (`apt-get install dataset-fashion-mnist`, which `make` does) "
            if name == "fashion_mnist"
            else ""
        )
        raise DatasetError(
            f"{name} ({split}): {img_stem}[.gz] and {lbl_stem}[.gz] not found in {where}. "
            f"Fix: {hint}put the official IDX files there, or set data.root to their folder."
        )
    images, labels = read_idx(img_path), read_idx(lbl_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DatasetError(
            f"{name}: {img_path} and {lbl_path} do not match (images {images.shape}, "
            f"labels {labels.shape}); are they from the same split?"
        )
    x = torch.from_numpy(images.copy()).unsqueeze(1)  # (N, 1, 28, 28)
    return ImageArrays(x, torch.from_numpy(labels.astype(np.int64)), 10, name)


# The official archives' extracted folders and the files read from them (the formats of
# https://www.cs.toronto.edu/~kriz/cifar.html and https://cs.stanford.edu/~acoates/stl10/).
OFFICIAL_FILES: dict[str, tuple[str, dict[str, list[str]]]] = {
    "cifar10": ("cifar-10-batches-py", {
        "train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"],
        "meta": ["batches.meta"]}),
    "cifar100": ("cifar-100-python", {"train": ["train"], "test": ["test"], "meta": ["meta"]}),
    "stl10": ("stl10_binary", {
        "train": ["train_X.bin", "train_y.bin"], "test": ["test_X.bin", "test_y.bin"],
        "unlabeled": ["unlabeled_X.bin"]}),
}


def _official_folder(name: str, part: str, root: str | None, download: bool) -> Path:
    """The folder holding `name`'s `part` files; downloads (torchvision, checksummed) only when
    `download` is set. Raises DatasetError naming the missing file and the fixes."""
    base = Path(root) if root else data_home() / name
    folder_name, parts = OFFICIAL_FILES[name]
    folder = base / folder_name
    missing = [f for f in parts[part] + parts.get("meta", []) if not (folder / f).is_file()]
    if missing and download:
        from torchvision import datasets as tvd

        if name == "stl10":
            tvd.STL10(str(base), split="train", download=True)
        else:
            (tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100)(str(base), download=True)
        missing = [f for f in parts[part] if not (folder / f).is_file()]
    if missing:
        raise DatasetError(
            f"{name} ({part}): {folder / missing[0]} not found (expected the official archive's "
            f"extracted folder {folder_name}/ under {base}). Fix: extract it there, set "
            f"data.root, or set data.download=true to let torchvision download it."
        )
    return folder


def _unpickle(path: Path) -> dict[str, Any]:
    """One CIFAR python batch (a Python 2 pickle: latin1 strings; keys bytes or str)."""
    import pickle

    try:
        with path.open("rb") as f:
            raw = pickle.load(f, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise DatasetError(f"{path}: not a CIFAR python batch ({exc}); re-extract the official "
                           f"archive") from None
    if not isinstance(raw, dict):
        raise DatasetError(f"{path}: not a CIFAR python batch (a {type(raw).__name__})")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}


def load_cifar(name: str, split: Split, root: str | None, download: bool) -> ImageArrays:
    """CIFAR-10/100 from the official python batches: `data` (N, 3072) uint8, each row the
    1024 red, then green, then blue values of a 32x32 image; `labels` (CIFAR-10) or
    `fine_labels` (CIFAR-100, its 100 classes)."""
    folder = _official_folder(name, split, root, download)
    key = "labels" if name == "cifar10" else "fine_labels"
    xs, ys = [], []
    for file in OFFICIAL_FILES[name][1][split]:
        batch = _unpickle(folder / file)
        if "data" not in batch or key not in batch:
            raise DatasetError(f"{folder / file}: no {'data' if 'data' not in batch else key!r} "
                               f"entry (keys: {sorted(batch)}); is it the {name} archive?")
        data = np.asarray(batch["data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(batch[key]):
            raise DatasetError(f"{folder / file}: data {data.shape} and {len(batch[key])} labels; "
                               f"expected (N, 3072) and N labels")
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(np.asarray(batch[key], dtype=np.int64))
    meta = _unpickle(folder / OFFICIAL_FILES[name][1]["meta"][0])
    classes = meta.get("label_names" if name == "cifar10" else "fine_label_names")
    num_classes = len(classes) if classes else (10 if name == "cifar10" else 100)
    return ImageArrays(torch.from_numpy(np.concatenate(xs)),
                       torch.from_numpy(np.concatenate(ys)), num_classes, name)


def load_stl10(split: Split, root: str | None, download: bool, labeled: bool) -> ImageArrays:
    """STL-10 from the official binaries: `<part>_X.bin` uint8 96x96x3 images, each channel
    stored column-major (as MATLAB writes it), `<part>_y.bin` uint8 labels 1..10. Pre-training
    reads the 100k `unlabeled` images (labels -1), as SSL papers do; `labeled` asks `train`."""
    part = "test" if split == "test" else ("train" if labeled else "unlabeled")
    folder = _official_folder("stl10", part, root, download)
    raw = np.fromfile(folder / f"{part}_X.bin", dtype=np.uint8)
    if raw.size % (3 * 96 * 96):
        raise DatasetError(f"{folder / f'{part}_X.bin'}: {raw.size} bytes is not a whole number of "
                           f"96x96x3 images; re-extract the official archive")
    x = raw.reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2)  # column-major -> (N, C, H, W)
    if part == "unlabeled":
        y = np.full(len(x), -1, dtype=np.int64)
    else:
        y = np.fromfile(folder / f"{part}_y.bin", dtype=np.uint8).astype(np.int64) - 1
        if len(y) != len(x) or y.min(initial=0) < 0 or y.max(initial=0) > 9:
            raise DatasetError(f"{folder / f'{part}_y.bin'}: {len(y)} labels in 1..10 expected "
                               f"for {len(x)} images")
    return ImageArrays(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y), 10, "stl10")


def load_digits_dataset(split: Split) -> ImageArrays:
    """scikit-learn's bundled digits (1,797 8x8 images): a stratified 80/20 split, seed 0."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    images = np.clip(d.images * 16, 0, 255).astype(np.uint8)  # values 0..16 -> 0..255
    idx_tr, idx_te = train_test_split(
        np.arange(len(images)), test_size=0.2, stratify=d.target, random_state=0
    )
    idx = idx_tr if split == "train" else idx_te
    x = torch.from_numpy(images[idx]).unsqueeze(1)
    return ImageArrays(x, torch.from_numpy(d.target[idx].astype(np.int64)), 10, "digits")


def make_synthetic(n: int, num_classes: int, size: int, seed: int) -> ImageArrays:
    """A procedurally generated, seeded dataset: one oriented grating + blob per class.

    Each image is its class's pattern, randomly shifted (up to size/8 px), with a random contrast
    and pixel noise. Deterministic for (n, num_classes, size, seed); touches no disk.
    """
    g = torch.Generator().manual_seed(10_000 + num_classes)  # class patterns: split-independent
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    protos = []
    for _ in range(num_classes):
        angle = torch.rand((), generator=g) * math.pi
        freq = 2 + torch.rand((), generator=g) * 4
        phase = torch.rand((), generator=g) * 2 * math.pi
        u = xx * torch.cos(angle) + yy * torch.sin(angle)
        grating = torch.sin(2 * math.pi * freq * u / size + phase)
        cy, cx = torch.rand(2, generator=g) * size * 0.6 + size * 0.2
        blob = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (size / 6) ** 2))
        protos.append(0.5 + 0.25 * grating + 0.4 * blob - 0.2)
    proto = torch.stack(protos)  # (K, H, W)
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % num_classes
    labels = labels[torch.randperm(n, generator=g)]
    shift = size // 8
    dy = torch.randint(-shift, shift + 1, (n,), generator=g)
    dx = torch.randint(-shift, shift + 1, (n,), generator=g)
    contrast = 0.7 + 0.6 * torch.rand(n, generator=g)
    imgs = torch.empty(n, size, size)
    for i in range(n):
        p = torch.roll(proto[labels[i]], shifts=(int(dy[i]), int(dx[i])), dims=(0, 1))
        imgs[i] = 0.5 + contrast[i] * (p - 0.5)
    imgs = imgs + 0.08 * torch.randn(n, size, size, generator=g)
    x = (imgs.clamp(0, 1) * 255).round().to(torch.uint8).unsqueeze(1)
    return ImageArrays(x, labels.long(), num_classes, "synthetic")


def load_arrays(cfg: DataConfig, split: Split, labeled: bool = False) -> ImageArrays:
    """Load an in-memory dataset split as a `DataConfig` describes it (subset and resize applied).

    `labeled=True` asks for a labelled training split (STL-10: `train` instead of `unlabeled`).
    """
    name = cfg.dataset
    root = cfg.root
    if name in ("fashion_mnist", "mnist"):
        data = load_idx_dataset(name, split, root)
    elif name in ("cifar10", "cifar100"):
        data = load_cifar(name, split, root, cfg.download)
    elif name == "stl10":
        data = load_stl10(split, root, cfg.download, labeled)
    elif name == "digits":
        data = load_digits_dataset(split)
    elif name == "synthetic":
        size = cfg.image_size or dataset_info("synthetic").native_size
        seed = 1 if split == "train" else 2
        data = make_synthetic(cfg.synthetic_size, cfg.synthetic_classes,
                              size, seed)
    elif name == "imagefolder":
        raise ValueError("imagefolder is read from files per sample: use load_image_folder()")
    else:
        raise ValueError(f"unknown dataset {name!r}")
    n = cfg.train_subset if split == "train" else cfg.test_subset
    return data.subset(n, cfg.subset_seed).resized(cfg.image_size)


def load_image_folder(cfg: DataConfig, split: Split) -> Any:
    """An ImageFolder split (`<root>/train/<class>/*.jpg`, `<root>/val/<class>/*.jpg`)."""
    from torchvision.datasets import ImageFolder

    root = Path(cfg.root or data_home() / "imagefolder")
    folder = root / ("train" if split == "train" else "val")  # ImageNet: val = test split
    if not folder.is_dir():
        raise DatasetError(
            f"imagefolder ({split}): {folder} does not exist. Fix: set data.root to a folder "
            f"holding train/<class>/*.jpg and val/<class>/*.jpg (the ImageNet layout)."
        )
    try:
        return ImageFolder(str(folder))
    except (FileNotFoundError, RuntimeError) as exc:
        raise DatasetError(f"imagefolder ({split}): {folder}: {exc}") from None
