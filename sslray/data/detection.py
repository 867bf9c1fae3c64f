"""Object-detection datasets in one common format, for the detection transfer (MoCo Tables 2-5).

Every sample is `(image, target)`: `image` a float tensor (3, H, W) in [0, 1] (grayscale
replicated to 3 channels), `target` a dict with

- `boxes`: float32 (K, 4), xyxy in pixels, pixel-edge coordinates (a box covering pixel columns
  c0..c1 inclusive spans x0 = c0 to x1 = c1 + 1), as torchvision's detectors and detectron2 use;
- `labels`: int64 (K,) in 1..C; 0 is the background class (torchvision's convention);
- PASCAL VOC only: `difficult`: bool (K,), VOC's "difficult" flag (`coco_ap` ignores such boxes).

Datasets:

- `fmnist_det` (`FashionMNISTDetection`): generated in memory from a seed; Fashion-MNIST garments
  (the project's loader, `sslray.data.datasets.load_idx_dataset`) pasted onto black canvases.
- PASCAL VOC (`VOCDetectionSet`, torchvision's `VOCDetection`) and COCO (`CocoDetectionSet`,
  torchvision's `CocoDetection`) from a local root. Nothing is ever downloaded: a missing file
  raises `DatasetError` naming the path and where to get the data.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, Dataset

from sslray.data.datasets import DatasetError, ImageArrays, Split, data_home, load_idx_dataset

Target = dict[str, torch.Tensor]
Sample = tuple[torch.Tensor, Target]

FMNIST_DET = "fmnist_det"
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # Fashion-MNIST's labels 0..9 (Xiao et al. 2017); fmnist_det label = index + 1

# detectron2's PASCAL VOC class order (detectron2/data/datasets/pascal_voc.py): name -> 1..20.
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
VOC_URL = "http://host.robots.ox.ac.uk/pascal/VOC/"
COCO_URL = "https://cocodataset.org/#download"


def empty_target() -> Target:
    """A target with no objects: boxes (0, 4) float32, labels (0,) int64."""
    return {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}


def detection_collate(batch: Sequence[Sample]) -> tuple[list[torch.Tensor], list[Target]]:
    """DataLoader collate for detection: images differ in size, so lists, not stacked tensors.

    Returns ([image (3, H_i, W_i)] * B, [target] * B), what torchvision's detectors take.
    """
    return [image for image, _ in batch], [target for _, target in batch]


def _pil_to_float(image: Any) -> torch.Tensor:
    """A PIL image -> float (3, H, W) in [0, 1]."""
    from torchvision.transforms.functional import pil_to_tensor

    return pil_to_tensor(image.convert("RGB")).float().div_(255)


# --- fmnist_det: Fashion-MNIST garments on black canvases ---------------------------------------


def _tight_boxes(patches: torch.Tensor) -> torch.Tensor:
    """(K, s, s) uint8 patches -> (K, 4) int64 tight boxes (x0, y0, x1, y1) of nonzero pixels,
    pixel-edge coordinates (x1, y1 exclusive); all -1 for an all-zero patch."""
    s = patches.shape[-1]
    rows, cols = patches.amax(dim=2) > 0, patches.amax(dim=1) > 0  # (K, s) each
    idx = torch.arange(s)
    y0 = torch.where(rows, idx, s).amin(dim=1)
    y1 = torch.where(rows, idx, -1).amax(dim=1) + 1
    x0 = torch.where(cols, idx, s).amin(dim=1)
    x1 = torch.where(cols, idx, -1).amax(dim=1) + 1
    boxes = torch.stack([x0, y0, x1, y1], dim=1)
    return torch.where(rows.any(dim=1, keepdim=True), boxes, torch.full_like(boxes, -1))


def _overlap_ok(box: tuple[int, int, int, int], placed: list[tuple[int, int, int, int]],
                max_overlap: float) -> bool:
    """True if `box` covers at most `max_overlap` of the smaller box of every placed pair."""
    x0, y0, x1, y1 = box
    area = (x1 - x0) * (y1 - y0)
    for a0, b0, a1, b1 in placed:
        inter = max(0, min(x1, a1) - max(x0, a0)) * max(0, min(y1, b1) - max(y0, b0))
        if inter > max_overlap * min(area, (a1 - a0) * (b1 - b0)):
            return False
    return True


class FashionMNISTDetection(Dataset[Sample]):
    """`fmnist_det`: 1-`max_objects` Fashion-MNIST garments per black square canvas.

    Each garment of the matching Fashion-MNIST split (`split`) is resized (bilinear, antialiased)
    from 28x28 to s x s, s uniform in [min_size, max_size], and pasted at a uniform position
    inside the canvas with max-blending (a pixel keeps the brightest garment over it), so every
    garment pixel stays nonzero. Its box is the tight box of its nonzero pixels after resizing,
    so pixels outside all boxes are 0 and every box edge touches a nonzero pixel; its label is
    the garment's class + 1 (1..10). A garment whose box would cover more than `max_overlap` of
    the smaller of its box and an earlier garment's box is moved (up to `tries` positions) or
    dropped; the first garment of a canvas is always kept.

    Deterministic for (arguments, seed, the Fashion-MNIST files): the random draws have fixed
    shapes, so rejection never shifts a later canvas's randomness. `seed=None`: 1 for train, 2
    for test (as `load_arrays` seeds the synthetic set). `garments` replaces the loaded split
    (tests, subsets); `root` is passed to `load_idx_dataset`.

    Attributes: `images` uint8 (N, 1, canvas, canvas); `boxes`/`labels`: lists of N tensors
    (K_i, 4) float32 and (K_i,) int64; `num_classes` 10; `class_names`.
    """

    def __init__(
        self,
        n_images: int,
        canvas: int = 96,  # chosen: STL-10's 96 px, small enough for CPU detectors
        split: Split = "train",
        seed: int | None = None,
        min_objects: int = 1,  # chosen: every canvas has an object
        max_objects: int = 4,  # chosen: a few objects, as VOC's ~2.4 per image
        min_size: int = 20,  # chosen: ~0.7x the native 28 px, still recognisable
        max_size: int = 56,  # chosen: 2x the native 28 px, well inside a 96 px canvas
        max_overlap: float = 0.25,  # chosen: >= 75 % of every box stays free of other boxes
        tries: int = 10,  # chosen: positions tried per garment before dropping it
        root: str | None = None,
        garments: ImageArrays | None = None,
    ) -> None:
        if n_images < 1:
            raise ValueError(f"fmnist_det: n_images must be >= 1, got {n_images}")
        if not 1 <= min_objects <= max_objects:
            raise ValueError(f"fmnist_det: need 1 <= min_objects <= max_objects, got "
                             f"{min_objects}, {max_objects}")
        if not 1 <= min_size <= max_size <= canvas:
            raise ValueError(f"fmnist_det: need 1 <= min_size <= max_size <= canvas, got "
                             f"{min_size}, {max_size}, {canvas}")
        if not 0.0 <= max_overlap <= 1.0 or tries < 1:
            raise ValueError(f"fmnist_det: max_overlap in [0, 1] and tries >= 1, got "
                             f"{max_overlap}, {tries}")
        src = garments if garments is not None else load_idx_dataset("fashion_mnist", split, root)
        self.name = FMNIST_DET
        self.num_classes = 10
        self.class_names = FASHION_MNIST_CLASSES
        self.images, self.boxes, self.labels = _paste_garments(
            src, n_images, canvas, (1 if split == "train" else 2) if seed is None else seed,
            (min_objects, max_objects), (min_size, max_size), max_overlap, tries)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> Sample:
        image = self.images[index].float().div_(255).repeat(3, 1, 1)  # (3, canvas, canvas)
        return image, {"boxes": self.boxes[index].clone(), "labels": self.labels[index].clone()}


def _paste_garments(
    src: ImageArrays, n: int, canvas: int, seed: int, objects: tuple[int, int],
    sizes: tuple[int, int], max_overlap: float, tries: int,
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """The canvases of `FashionMNISTDetection`: uint8 (N, 1, canvas, canvas), boxes, labels."""
    g = torch.Generator().manual_seed(seed)
    m = objects[1]
    count = torch.randint(objects[0], m + 1, (n,), generator=g)  # (N,) garments per canvas
    pick = torch.randint(0, len(src), (n, m), generator=g)  # (N, M) garment indices
    size = torch.randint(sizes[0], sizes[1] + 1, (n, m), generator=g)  # (N, M) pasted sizes
    pos = torch.rand(n, m, tries, 2, generator=g)  # (N, M, T, 2) positions as fractions
    used = torch.arange(m).view(1, m) < count.view(n, 1)  # (N, M)
    garments = src.images[:, 0]  # (G, 28, 28) uint8
    # Resize every used slot, grouped by size (one interpolate call per distinct size).
    patches: dict[tuple[int, int], np.ndarray] = {}
    boxes_in_patch: dict[tuple[int, int], tuple[int, int, int, int]] = {}
    for s in size[used].unique().tolist():
        slots = (used & (size == s)).nonzero()  # (k, 2) (canvas, slot)
        x = garments[pick[slots[:, 0], slots[:, 1]]].unsqueeze(1).float()  # (k, 1, 28, 28)
        x = F.interpolate(x, size=(s, s), mode="bilinear", antialias=True, align_corners=False)
        scaled = x.round().clamp(0, 255).to(torch.uint8)[:, 0]  # (k, s, s)
        tight = _tight_boxes(scaled).tolist()
        arr = scaled.numpy()
        for j, (i, k) in enumerate(slots.tolist()):
            patches[i, k] = arr[j]
            boxes_in_patch[i, k] = tuple(tight[j])
    out = np.zeros((n, canvas, canvas), np.uint8)
    labels_src = src.labels.tolist()
    pick_l, size_l, pos_l, count_l = pick.tolist(), size.tolist(), pos.tolist(), count.tolist()
    all_boxes, all_labels = [], []
    for i in range(n):
        placed: list[tuple[int, int, int, int]] = []
        labels: list[int] = []
        for k in range(count_l[i]):
            s = size_l[i][k]
            bx0, by0, bx1, by1 = boxes_in_patch[i, k]
            if bx0 < 0:  # an all-black garment at this size: nothing to detect
                continue
            for fx, fy in pos_l[i][k]:
                ox, oy = int(fx * (canvas - s + 1)), int(fy * (canvas - s + 1))
                box = (ox + bx0, oy + by0, ox + bx1, oy + by1)
                if not placed or _overlap_ok(box, placed, max_overlap):
                    view = out[i, oy:oy + s, ox:ox + s]
                    np.maximum(view, patches[i, k], out=view)
                    placed.append(box)
                    labels.append(labels_src[pick_l[i][k]] + 1)
                    break
        all_boxes.append(torch.tensor(placed, dtype=torch.float32).reshape(-1, 4))
        all_labels.append(torch.tensor(labels, dtype=torch.int64))
    return torch.from_numpy(out).unsqueeze(1), all_boxes, all_labels


# --- PASCAL VOC ---------------------------------------------------------------------------------

VOCYear = Literal["2007", "2012"]


def _voc_missing(path: Path, root: Path, year: str, what: str) -> DatasetError:
    archives = {"2007": "VOCtrainval_06-Nov-2007.tar and VOCtest_06-Nov-2007.tar",
                "2012": "VOCtrainval_11-May-2012.tar"}[year]
    return DatasetError(
        f"voc {year}: {path} not found ({what}). Fix: download {archives} from {VOC_URL} and "
        f"extract them in {root}, so that {root / 'VOCdevkit' / f'VOC{year}'} holds JPEGImages/, "
        f"Annotations/ and ImageSets/Main/; sslray never downloads them."
    )


class VOCDetectionSet(Dataset[Sample]):
    """PASCAL VOC detection (torchvision's `VOCDetection`, download=False) in the common format.

    `root` holds `VOCdevkit/VOC<year>/` (the official tars' layout). Labels: `VOC_CLASSES` ->
    1..20. Boxes: VOC's 1-based inclusive pixel indices -> pixel-edge coordinates
    (xmin - 1, ymin - 1, xmax, ymax), as detectron2's `load_voc_instances` converts them.
    `keep_difficult=True` keeps the objects VOC marks difficult, with `target["difficult"]`
    True: detectron2 (used by MoCo) trains on them ("they don't hurt accuracy") and VOC's
    evaluation ignores them; False drops them.
    """

    def __init__(
        self,
        root: str | Path,
        year: VOCYear = "2007",  # MoCo VOC test set: VOC2007 test
        image_set: str = "trainval",  # MoCo VOC training: VOC07+12 trainval
        keep_difficult: bool = True,  # detectron2 trains on difficult objects (pascal_voc.py)
    ) -> None:
        from torchvision.datasets import VOCDetection

        if year not in ("2007", "2012"):
            raise ValueError(f"voc: year must be '2007' or '2012', got {year!r}")
        valid = ("train", "val", "trainval", "test") if year == "2007" else ("train", "val",
                                                                               "trainval")
        if image_set not in valid:
            raise ValueError(f"voc {year}: image_set must be one of {valid}, got {image_set!r}")
        root = Path(root)
        voc = root / "VOCdevkit" / f"VOC{year}"
        split_file = voc / "ImageSets" / "Main" / f"{image_set}.txt"
        for path, what in ((voc, "the VOC folder"), (split_file, f"the {image_set} image list"),
                           (voc / "JPEGImages", "the images"),
                           (voc / "Annotations", "the XML annotations")):
            if not path.exists():
                raise _voc_missing(path, root, year, what)
        self._voc = VOCDetection(str(root), year=year, image_set=image_set, download=False)
        self.name = f"voc{year}_{image_set}"
        self.keep_difficult = keep_difficult
        self.num_classes = len(VOC_CLASSES)
        self.class_names = VOC_CLASSES

    def __len__(self) -> int:
        return len(self._voc)

    def __getitem__(self, index: int) -> Sample:
        xml_path = Path(self._voc.annotations[index])
        image_path = Path(self._voc.images[index])
        for path in (image_path, xml_path):
            if not path.is_file():
                raise DatasetError(f"voc: {path} not found (listed in the image set); re-extract "
                                   f"the official archive")
        image, parsed = self._voc[index]
        return _pil_to_float(image), self._convert(parsed, xml_path)

    def _convert(self, parsed: dict[str, Any], xml_path: Path) -> Target:
        objects = parsed.get("annotation", {}).get("object", [])
        if isinstance(objects, dict):
            objects = [objects]
        boxes, labels, difficult = [], [], []
        for obj in objects:
            name = str(obj.get("name", "")).strip()
            if name not in VOC_CLASSES:
                raise DatasetError(f"{xml_path}: object class {name!r} is not a VOC class "
                                   f"({', '.join(VOC_CLASSES)})")
            hard = str(obj.get("difficult", "0")).strip() == "1"
            if hard and not self.keep_difficult:
                continue
            try:
                bb = obj["bndbox"]
                x0, y0, x1, y1 = (float(bb[k]) for k in ("xmin", "ymin", "xmax", "ymax"))
            except (KeyError, TypeError, ValueError):
                raise DatasetError(f"{xml_path}: object {name!r} has no valid bndbox "
                                   f"(xmin, ymin, xmax, ymax)") from None
            boxes.append([x0 - 1.0, y0 - 1.0, x1, y1])
            labels.append(VOC_CLASSES.index(name) + 1)
            difficult.append(hard)
        return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                "labels": torch.tensor(labels, dtype=torch.int64),
                "difficult": torch.tensor(difficult, dtype=torch.bool)}


def voc0712_trainval(root: str | Path, keep_difficult: bool = True) -> ConcatDataset[Sample]:
    """MoCo's VOC training set (its detectron2 config `voc_2007_trainval` + `voc_2012_trainval`):
    both trainval sets under one `root` (VOCdevkit/VOC2007 and VOCdevkit/VOC2012)."""
    return ConcatDataset([VOCDetectionSet(root, "2007", "trainval", keep_difficult),
                          VOCDetectionSet(root, "2012", "trainval", keep_difficult)])


# --- COCO ---------------------------------------------------------------------------------------


class CocoDetectionSet(Dataset[Sample]):
    """COCO detection (torchvision's `CocoDetection` over an `instances_*.json`), common format.

    Category ids (COCO's 1..90 with gaps) are mapped in sorted order to contiguous 1..K (K = 80
    for COCO), kept in `category_ids` (label l is category `category_ids[l - 1]`). Boxes: COCO's
    xywh -> xyxy (x, y, x + w, y + h), not clamped. Dropped: crowd annotations (`iscrowd` 1, as
    detectron2 and torchvision's references train without them) and empty boxes (w or h <= 0).
    `skip_empty=True` also drops images left without boxes (detectron2 does for training).
    """

    def __init__(
        self,
        image_dir: str | Path,
        ann_file: str | Path,
        skip_empty: bool = False,  # keep all; detectron2 filters empty images for training only
    ) -> None:
        from torchvision.datasets import CocoDetection

        image_dir, ann_file = Path(image_dir), Path(ann_file)
        fix = (f"Fix: download the images (e.g. val2017.zip) and annotations_trainval2017.zip "
               f"from {COCO_URL} and extract them so that {image_dir}/*.jpg and {ann_file} exist; "
               f"sslray never downloads them.")
        if not ann_file.is_file():
            raise DatasetError(f"coco: annotation file {ann_file} not found. {fix}")
        if not image_dir.is_dir():
            raise DatasetError(f"coco: image folder {image_dir} not found. {fix}")
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints its progress
                self._coco = CocoDetection(str(image_dir), str(ann_file))
        except (json.JSONDecodeError, KeyError, TypeError, AssertionError) as exc:
            raise DatasetError(f"coco: {ann_file} is not a COCO instances file "
                               f"({type(exc).__name__}: {exc})") from None
        api = self._coco.coco
        self.category_ids: list[int] = sorted(api.getCatIds())
        self._label = {c: i + 1 for i, c in enumerate(self.category_ids)}
        self.class_names = tuple(api.cats[c].get("name", str(c)) for c in self.category_ids)
        self.num_classes = len(self.category_ids)
        self.name = f"coco_{ann_file.stem.removeprefix('instances_')}"
        self._ann_file = ann_file
        self._indices = list(range(len(self._coco)))
        if skip_empty:
            self._indices = [i for i in self._indices
                             if len(self._convert(api.loadAnns(api.getAnnIds(self._coco.ids[i]))
                                                  )["labels"])]

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, index: int) -> Sample:
        i = self._indices[index]
        info = self._coco.coco.loadImgs(self._coco.ids[i])[0]
        path = Path(self._coco.root) / info["file_name"]
        if not path.is_file():
            raise DatasetError(f"coco: {path} not found (image {info['id']} of "
                               f"{self._ann_file}); extract the matching image archive there")
        image, anns = self._coco[i]
        return _pil_to_float(image), self._convert(anns)

    def _convert(self, anns: list[dict[str, Any]]) -> Target:
        boxes, labels = [], []
        for ann in anns:
            if ann.get("iscrowd", 0):
                continue
            x, y, w, h = (float(v) for v in ann["bbox"])
            if w <= 0 or h <= 0:
                continue
            if ann["category_id"] not in self._label:
                raise DatasetError(f"{self._ann_file}: annotation {ann.get('id')} has category "
                                   f"{ann['category_id']}, not in its categories list")
            boxes.append([x, y, x + w, y + h])
            labels.append(self._label[ann["category_id"]])
        return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                "labels": torch.tensor(labels, dtype=torch.int64)}


def coco_split(
    root: str | Path,
    split: str = "val2017",  # MoCo's COCO evaluation set (Tables 5-6: val2017)
    skip_empty: bool = False,  # as CocoDetectionSet
) -> CocoDetectionSet:
    """A split of the official layout: `<root>/<split>/*.jpg`, `<root>/annotations/
    instances_<split>.json` (MoCo: train2017 to fine-tune, val2017 to evaluate)."""
    root = Path(root)
    return CocoDetectionSet(root / split, root / "annotations" / f"instances_{split}.json",
                            skip_empty)


DetectionName = Literal["fmnist_det", "voc", "coco"]


def load_detection(
    name: DetectionName,
    split: Split,
    root: str | None = None,  # None: the default roots below
    n_images: int = 2000,  # fmnist_det canvases per split, chosen: ~5k objects, seconds to make
) -> Dataset[Sample]:
    """A detection split by name, as MoCo's transfer uses it.

    - `fmnist_det`: `n_images` canvases from the Fashion-MNIST split (`root`: its IDX files).
    - `voc`: train = VOC07+12 trainval, test = VOC07 test (`root` holds VOCdevkit/).
    - `coco`: train = train2017 (images without boxes skipped), test = val2017.
    Default roots: `$SSLRAY_DATA/voc`, `$SSLRAY_DATA/coco` (as `sslray.data.datasets`).
    """
    if name == FMNIST_DET:
        return FashionMNISTDetection(n_images, split=split, root=root)
    if name == "voc":
        voc_root = Path(root) if root else data_home() / "voc"
        if split == "train":
            return voc0712_trainval(voc_root)
        return VOCDetectionSet(voc_root, "2007", "test")
    if name == "coco":
        coco_root = Path(root) if root else data_home() / "coco"
        if split == "train":
            return coco_split(coco_root, "train2017", skip_empty=True)
        return coco_split(coco_root, "val2017")
    raise ValueError(f"unknown detection dataset {name!r}; expected fmnist_det, voc or coco")
