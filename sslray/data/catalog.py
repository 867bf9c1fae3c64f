"""What sslray knows about each dataset, in one table: statistics, native size, split sizes, and
how it is stored. Code asks this table (`dataset_info(name).files`) instead of comparing dataset
names as strings, so a new dataset is one row here plus its loader in `sslray.data.datasets`.

Plain Python (no torch): the config checks read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from sslray.config_types import DataConfig, DatasetName

Storage = Literal["memory", "files", "generated"]


@dataclass(frozen=True)
class ImageSpec:
    """What the network sees: square images of `size` pixels, normalised per channel."""

    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class DatasetInfo:
    mean: tuple[float, ...]  # per-channel statistics of the training set (commonly used values)
    std: tuple[float, ...]
    native_size: int  # pixels of the official images (image folders: the ImageNet crop, 224)
    # "memory": loaded whole as uint8 arrays; "files": read per sample (ImageFolder);
    # "generated": made in memory from a seed (the synthetic test set).
    storage: Storage
    train_size: int | None = None  # official training split; None: counted when loaded
    # False where pre-training reads an unlabelled split (STL-10's 100k `unlabeled` images), so
    # evaluation and supervised training must load the labelled split instead.
    pretrain_labeled: bool = True

    @property
    def files(self) -> bool:
        return self.storage == "files"

    @property
    def transferable(self) -> bool:
        """A labelled real dataset loaded in memory: usable as an `eval.transfer` target."""
        return self.storage == "memory" and self.pretrain_labeled


_GRAY = 3  # grayscale sets are replicated to 3 channels by the view pipelines

DATASETS: dict[str, DatasetInfo] = {
    "fashion_mnist": DatasetInfo((0.2860,) * _GRAY, (0.3530,) * _GRAY, 28, "memory", 60_000),
    "mnist": DatasetInfo((0.1307,) * _GRAY, (0.3081,) * _GRAY, 28, "memory", 60_000),
    "cifar10": DatasetInfo((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 32, "memory",
                           50_000),
    "cifar100": DatasetInfo((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 32, "memory",
                            50_000),
    # STL-10: 100k unlabelled images for pre-training (the SSL papers' use), 5k labelled train.
    "stl10": DatasetInfo((0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713), 96, "memory",
                         None, pretrain_labeled=False),
    # ImageNet statistics; the folder's size is counted when it is read.
    "imagefolder": DatasetInfo((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 224, "files"),
    # scikit-learn's digits: sslray's stratified 80 % of the 1,797 images.
    "digits": DatasetInfo((0.3,) * _GRAY, (0.38,) * _GRAY, 8, "memory", 1_437),
    "synthetic": DatasetInfo((0.5,) * 3, (0.25,) * 3, 32, "generated"),
}
assert set(DATASETS) == set(get_args(DatasetName)), "every DatasetName needs a catalog row"


def dataset_info(name: str) -> DatasetInfo:
    return DATASETS[name]


def image_spec(data: DataConfig) -> ImageSpec:
    """The images a run's network sees: data.image_size (or the native size), its statistics."""
    info = DATASETS[data.dataset]
    return ImageSpec(data.image_size or info.native_size, info.mean, info.std)


def transfer_spec(name: str, size: int) -> ImageSpec:
    """A transfer dataset resized to the pre-training size, normalised with its own statistics."""
    info = DATASETS[name]
    return ImageSpec(size, info.mean, info.std)


def train_split_size(data: DataConfig) -> int | None:
    """Images in the training split a run uses, when known without loading it."""
    n = data.synthetic_size if DATASETS[data.dataset].storage == "generated" \
        else DATASETS[data.dataset].train_size
    if n is not None and data.train_subset is not None:
        n = min(n, data.train_subset)
    return n
