"""Config building blocks shared by the run config and the method configs.

Kept apart from `sslray.config` so that method files can import these without a cycle
(`sslray.config` imports the method registry to build the discriminated union of methods).
Plain pydantic: no torch here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from sslray.strict import StrictModel  # re-exported: the method configs import it from here


def _check_range(name: str, pair: tuple[float, float], lo: float, hi: float) -> None:
    a, b = pair
    if not (lo <= a <= b <= hi):
        raise ValueError(f"{name} must satisfy {lo} <= min <= max <= {hi}, got {pair}")


class AugmentConfig(StrictModel):
    """One view's augmentation. Defaults are MoCo v2's `aug_plus` (moco/main_moco.py, 7397dfe1).

    The same description drives both implementations in `sslray.data.views`: the batched tensor
    pipeline (in-memory datasets, the fast CPU path) and the per-sample torchvision.transforms.v2
    pipeline (image files).
    """

    crop_scale: tuple[float, float] = (0.2, 1.0)  # MoCo v1/v2 RandomResizedCrop(scale=(0.2, 1.))
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # torchvision RandomResizedCrop default
    flip_p: float = 0.5  # RandomHorizontalFlip() in MoCo v1/v2
    jitter_p: float = 0.8  # MoCo v2: RandomApply([ColorJitter(...)], p=0.8)
    brightness: float = 0.4  # MoCo v2 ColorJitter(0.4, 0.4, 0.4, 0.1)
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    grayscale_p: float = 0.2  # MoCo v2 RandomGrayscale(p=0.2)
    blur_p: float = 0.5  # MoCo v2 RandomApply([GaussianBlur([.1, 2.])], p=0.5)
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # MoCo v2 / SimCLR sigma range, in pixels
    solarize_p: float = 0.0  # BYOL view 2 uses 0.2; MoCo never solarizes

    @model_validator(mode="after")
    def _ranges(self) -> AugmentConfig:
        _check_range("crop_scale", self.crop_scale, 0.0, 1.0)
        if self.crop_scale[0] <= 0:
            raise ValueError("crop_scale min must be > 0")
        _check_range("crop_ratio", self.crop_ratio, 1e-3, 1e3)
        _check_range("blur_sigma", self.blur_sigma, 1e-3, 1e3)
        for name in ("flip_p", "jitter_p", "grayscale_p", "blur_p", "solarize_p"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} is a probability, must be in [0, 1], got {p}")
        for name in ("brightness", "contrast", "saturation"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {self.hue}")
        return self

    @classmethod
    def moco_v1(cls) -> AugmentConfig:
        """MoCo v1 augmentation (main_moco.py without --aug-plus): jitter always, no blur."""
        return cls(jitter_p=1.0, hue=0.4, blur_p=0.0)  # ColorJitter(0.4, 0.4, 0.4, 0.4), p=1

    @classmethod
    def moco_v2(cls) -> AugmentConfig:
        """MoCo v2 augmentation (main_moco.py --aug-plus)."""
        return cls()


DatasetName = Literal[
    "fashion_mnist", "mnist", "cifar10", "cifar100", "stl10", "imagefolder", "digits", "synthetic"
]


class DataConfig(StrictModel):
    dataset: DatasetName = "fashion_mnist"  # the embedded default (Debian dataset-fashion-mnist)
    root: str | None = None  # None: the dataset's default root (see sslray.data.datasets)
    image_size: int | None = None  # None: native size (28 for *MNIST, 32 CIFAR, 96 STL-10)
    train_subset: int | None = None  # None: the whole training split
    test_subset: int | None = None  # None: the whole test split
    subset_seed: int = 0  # fixed, so every run of a sweep sees the same subset
    download: bool = False  # never download unless asked (no hidden downloads)
    # DataLoader worker processes per training worker, image-file datasets only (decode, crop, and
    # with augment_on: loader the rest of the views); persistent across epochs, and on GPU runs
    # their batches land in pinned memory (FileStream). Chosen: 2 fits a 2-core CPU; MoCo's
    # main_moco.py uses 32 per 8-GPU node = 4 per GPU (the imagenet_* configs set 8).
    loader_workers: int = Field(default=2, ge=0)
    # Where an image-file dataset's views are augmented: "loader" runs the whole torchvision
    # pipeline per sample in the DataLoader workers; "device" has them decode and RandomResizedCrop
    # only (it needs the full-resolution image) and ship uint8 crops (4x fewer bytes than float
    # views); flip, jitter, grayscale, blur, solarize and normalise then run batched on the
    # training device (BatchedViews). "auto": device on GPU runs (CPU-side augmentation is the
    # usual ImageNet bottleneck, the reason DALI and FFCV exist), loader on CPU runs (there both
    # use the same cores). In-memory datasets are always augmented batched on the device.
    augment_on: Literal["auto", "loader", "device"] = "auto"
    synthetic_size: int = Field(default=1024, ge=20)  # images per split of the synthetic set
    synthetic_classes: int = Field(default=4, ge=2)

    @model_validator(mode="after")
    def _sizes(self) -> DataConfig:
        for name in ("train_subset", "test_subset", "image_size"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1 or null, got {v}")
        return self


class BackboneConfig(StrictModel):
    # MoCo/BYOL papers: R50. alexnet_small: an AlexNet-style conv tower (the Jigsaw++/CC target
    # architecture) where `blocks` counts convs per stage (AlexNet: [1, 1, 3]).
    arch: Literal["resnet18", "resnet50", "small_resnet", "alexnet_small"] = "resnet50"
    small_stem: bool = False  # 3x3 stride-1 conv1, no max-pool: the CIFAR recipes' stem
    width: int = Field(default=32, ge=4)  # small_resnet, alexnet_small: first-stage channels
    blocks: tuple[int, ...] = (1, 1, 1)  # small_resnet: BasicBlocks per stage (stride 1, 2, 2, ...)
    # small_resnet, alexnet_small: the last map average-pooled over a g x g grid of regions
    # (out_dim = channels * g^2) instead of globally (1, the ResNet default): the features keep
    # where in the image a pattern is (a spatial pyramid level, Lazebnik et al. 2006).
    pool_grid: int = Field(default=1, ge=1, le=4)

    @model_validator(mode="after")
    def _blocks(self) -> BackboneConfig:
        if not self.blocks or any(b < 1 for b in self.blocks):
            raise ValueError(f"blocks must be a non-empty list of positive ints, got {self.blocks}")
        if self.pool_grid > 1 and self.arch not in ("small_resnet", "alexnet_small"):
            raise ValueError(f"backbone.pool_grid: {self.pool_grid} is for small_resnet and "
                             f"alexnet_small (torchvision {self.arch} pools globally); set 1")
        return self
