"""View generation (augmentations) for the two-view methods.

Two implementations of the same `AugmentConfig`:

* `BatchedViews`: per-sample random parameters applied to a whole uint8 batch tensor at once
  (affine-grid crops, per-sample jitter / blur / solarize). This is the fast path for in-memory
  datasets (Fashion-MNIST, CIFAR, ...): on a 2-core CPU a per-sample PIL pipeline costs about as
  much as the small backbone itself. It runs on whatever device the batch lives on.
* `torchvision_views`: the per-sample torchvision.transforms.v2 pipeline, the reference recipe
  (MoCo v1/v2 main_moco.py) for image files (ImageFolder / ImageNet) in DataLoader workers.
* Split between the two (`data.augment_on: device`, image files): `torchvision_crop` decodes and
  crops per sample in the DataLoader workers (RandomResizedCrop needs the full-resolution image),
  `BatchedViews.from_crops` does the rest batched on the training device.

Differences, by design: the batched colour jitter applies brightness, contrast, saturation, hue in
that fixed order (torchvision picks a random order), and its hue shift is a rotation in YIQ space.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from sslray.config_types import AugmentConfig
from sslray.data.catalog import ImageSpec

_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as torchvision rgb_to_grayscale


def _uniform(n: int, lo: float, hi: float, device: torch.device) -> torch.Tensor:
    return torch.empty(n, device=device).uniform_(lo, hi)


def _bernoulli(n: int, p: float, device: torch.device) -> torch.Tensor:
    return torch.rand(n, device=device) < p


def _gray(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 1, H, W) luminance."""
    w = torch.tensor(_LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def random_resized_crop(
    x: torch.Tensor,
    size: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    flip_p: float,
) -> torch.Tensor:
    """Per-sample RandomResizedCrop + horizontal flip via one affine grid: (N,C,H,W)->(N,C,s,s).

    Area fraction ~ U(scale), log aspect ratio ~ U(log ratio), clamped to the image (torchvision
    retries 10 times, then falls back to a centre crop; clamping is the batched equivalent).
    """
    n, dev = x.shape[0], x.device
    area = _uniform(n, *scale, dev)
    log_r = _uniform(n, math.log(ratio[0]), math.log(ratio[1]), dev)
    r = torch.exp(log_r)
    w = torch.sqrt(area * r).clamp(max=1.0)  # crop width as a fraction of the image width
    h = torch.sqrt(area / r).clamp(max=1.0)
    cx = (torch.rand(n, device=dev) * 2 - 1) * (1 - w)  # centre in [-1+w, 1-w] (normalised coords)
    cy = (torch.rand(n, device=dev) * 2 - 1) * (1 - h)
    flip = torch.where(_bernoulli(n, flip_p, dev), -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=dev, dtype=x.dtype)
    theta[:, 0, 0] = w * flip
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, [n, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_flip(x: torch.Tensor, p: float) -> torch.Tensor:
    """Per-sample horizontal flip of (N, C, H, W) with probability p."""
    n = x.shape[0]
    apply = _bernoulli(n, p, x.device).view(n, 1, 1, 1)
    return torch.where(apply, x.flip(-1), x)


def color_jitter(x: torch.Tensor, cfg: AugmentConfig) -> torch.Tensor:
    """Per-sample brightness, contrast, saturation, hue of (N, 3, H, W) in [0, 1]; p = jitter_p."""
    n, dev = x.shape[0], x.device
    apply = _bernoulli(n, cfg.jitter_p, dev).view(n, 1, 1, 1)
    out = x
    if cfg.brightness > 0:
        b = _uniform(n, max(0.0, 1 - cfg.brightness), 1 + cfg.brightness, dev).view(n, 1, 1, 1)
        out = (out * b).clamp(0, 1)
    if cfg.contrast > 0:
        c = _uniform(n, max(0.0, 1 - cfg.contrast), 1 + cfg.contrast, dev).view(n, 1, 1, 1)
        mean = _gray(out).mean(dim=(2, 3), keepdim=True)
        out = (mean + c * (out - mean)).clamp(0, 1)
    if cfg.saturation > 0:
        s = _uniform(n, max(0.0, 1 - cfg.saturation), 1 + cfg.saturation, dev).view(n, 1, 1, 1)
        g = _gray(out)
        out = (g + s * (out - g)).clamp(0, 1)
    if cfg.hue > 0:
        angle = _uniform(n, -cfg.hue, cfg.hue, dev) * 2 * math.pi  # hue factor is a turn fraction
        out = _hue_rotate(out, angle).clamp(0, 1)
    return torch.where(apply, out, x)


def _hue_rotate(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotate chroma in YIQ space by `angle` (N,) radians: a batched hue shift."""
    rgb2yiq = torch.tensor(
        [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
        device=x.device,
        dtype=x.dtype,
    )
    yiq2rgb = torch.linalg.inv(rgb2yiq)
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.zeros(x.shape[0], 3, 3, device=x.device, dtype=x.dtype)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2] = cos, -sin
    rot[:, 2, 1], rot[:, 2, 2] = sin, cos
    m = yiq2rgb @ rot @ rgb2yiq  # (N, 3, 3)
    return torch.einsum("nij,njhw->nihw", m, x)


def random_grayscale(x: torch.Tensor, p: float) -> torch.Tensor:
    n = x.shape[0]
    apply = _bernoulli(n, p, x.device).view(n, 1, 1, 1)
    return torch.where(apply, _gray(x).expand_as(x), x)


def gaussian_blur(x: torch.Tensor, p: float, sigma: tuple[float, float]) -> torch.Tensor:
    """Per-sample Gaussian blur with sigma ~ U(sigma), applied with probability p.

    Kernel size follows SimCLR: about 10% of the image side, odd (23 px at 224 px, 3 px at 28 px).
    """
    n, c, h, w = x.shape
    apply = _bernoulli(n, p, x.device)
    if not bool(apply.any()):
        return x
    k = max(3, int(0.1 * min(h, w)) // 2 * 2 + 1)
    s = _uniform(n, *sigma, x.device)
    t = torch.arange(k, device=x.device, dtype=x.dtype) - k // 2
    kern = torch.exp(-(t.view(1, k) ** 2) / (2 * s.view(n, 1) ** 2))
    kern = kern / kern.sum(dim=1, keepdim=True)  # (N, k)
    kern = kern.repeat_interleave(c, dim=0)  # (N*C, k): one kernel per sample and channel
    y = x.reshape(1, n * c, h, w)
    y = F.conv2d(
        F.pad(y, (k // 2, k // 2, 0, 0), mode="reflect"), kern.view(n * c, 1, 1, k), groups=n * c
    )
    y = F.conv2d(
        F.pad(y, (0, 0, k // 2, k // 2), mode="reflect"), kern.view(n * c, 1, k, 1), groups=n * c
    )
    return torch.where(apply.view(n, 1, 1, 1), y.view(n, c, h, w), x)


def random_solarize(x: torch.Tensor, p: float, threshold: float = 0.5) -> torch.Tensor:
    n = x.shape[0]
    apply = _bernoulli(n, p, x.device).view(n, 1, 1, 1)
    return torch.where(apply & (x >= threshold), 1.0 - x, x)


class BatchedViews:
    """Make augmented, normalised views of a uint8 batch (N, C, H, W), C in {1, 3}.

    Grayscale input is replicated to 3 channels so the RGB path (and the backbones' 3-channel
    stem) runs unchanged. Output: a tuple of float tensors (N, 3, size, size), one per view.
    """

    def __init__(
        self,
        augs: tuple[AugmentConfig, ...],
        spec: ImageSpec,
    ) -> None:
        self.augs = augs
        self.size = spec.size
        self.mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
        self.std = torch.tensor(spec.std).view(1, 3, 1, 1)

    def one(self, images: torch.Tensor, cfg: AugmentConfig, crop: bool = True) -> torch.Tensor:
        """One view; `crop=False`: `images` are already cropped to (N, C, size, size)."""
        x = images.float().div_(255)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if crop:
            x = random_resized_crop(x, self.size, cfg.crop_scale, cfg.crop_ratio, cfg.flip_p)
        else:  # the flip is all that is left of the geometry; it commutes with what follows
            x = random_flip(x, cfg.flip_p)
        if cfg.jitter_p > 0:
            x = color_jitter(x, cfg)
        if cfg.grayscale_p > 0:
            x = random_grayscale(x, cfg.grayscale_p)
        if cfg.blur_p > 0:
            x = gaussian_blur(x, cfg.blur_p, cfg.blur_sigma)
        if cfg.solarize_p > 0:
            x = random_solarize(x, cfg.solarize_p)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.one(images, cfg) for cfg in self.augs)

    def from_crops(self, crops: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """Views from one uint8 crop batch (N, 3, size, size) per view (`torchvision_crop`, in
        DataLoader workers): flip, jitter, grayscale, blur, solarize, normalise, batched."""
        return tuple(self.one(c, cfg, crop=False) for c, cfg in zip(crops, self.augs, strict=True))


def eval_transform(images: torch.Tensor, spec: ImageSpec) -> torch.Tensor:
    """Evaluation view of a uint8 batch: resize to `spec.size` if needed, 3 channels, normalise."""
    size = spec.size
    x = images.float().div_(255)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(
            x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
    m = torch.tensor(spec.mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(spec.std, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def _crop_ops(cfg: AugmentConfig, size: int) -> list[v2.Transform]:
    return [
        v2.ToImage(),
        v2.RGB(),
        v2.RandomResizedCrop(size, scale=cfg.crop_scale, ratio=cfg.crop_ratio, antialias=True),
    ]


def torchvision_crop(cfg: AugmentConfig, size: int) -> v2.Compose:
    """The per-sample part of a view for `BatchedViews.from_crops`: a PIL image or uint8 tensor
    -> RGB, RandomResizedCrop -> uint8 (3, size, size); the same crop as `torchvision_views`."""
    return v2.Compose(_crop_ops(cfg, size))


def torchvision_views(cfg: AugmentConfig, spec: ImageSpec) -> v2.Compose:
    """One view as a per-sample torchvision.transforms.v2 pipeline (MoCo main_moco.py order).

    Input: a PIL image or a uint8 tensor; output: a normalised float (3, size, size) tensor.
    """
    size = spec.size
    ops = _crop_ops(cfg, size)
    if cfg.jitter_p > 0:
        jitter = v2.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)
        ops.append(v2.RandomApply([jitter], p=cfg.jitter_p))
    if cfg.grayscale_p > 0:
        ops.append(v2.RandomGrayscale(p=cfg.grayscale_p))
    if cfg.blur_p > 0:
        k = max(3, int(0.1 * size) // 2 * 2 + 1)
        ops.append(v2.RandomApply([v2.GaussianBlur(k, sigma=cfg.blur_sigma)], p=cfg.blur_p))
    if cfg.solarize_p > 0:
        ops.append(v2.RandomSolarize(threshold=128, p=cfg.solarize_p))
    ops += [
        v2.RandomHorizontalFlip(p=cfg.flip_p),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(spec.mean), list(spec.std)),
    ]
    return v2.Compose(ops)
