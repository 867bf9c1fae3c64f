"""Detection datasets: fmnist_det's exact boxes and labels, VOC and COCO files in their official
formats converted to the common format, and the clear errors for missing data."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from sslray.data.datasets import (
    DEBIAN_FASHION_MNIST,
    DatasetError,
    ImageArrays,
    load_idx_dataset,
    make_synthetic,
)
from sslray.data.detection import (
    VOC_CLASSES,
    CocoDetectionSet,
    FashionMNISTDetection,
    VOCDetectionSet,
    coco_split,
    detection_collate,
    load_detection,
)

needs_fmnist = pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(),
                                  reason="dataset-fashion-mnist not installed")


@pytest.fixture(scope="module")
def garments() -> ImageArrays:
    """The real Fashion-MNIST test split where installed, else synthetic 28 px garments."""
    if DEBIAN_FASHION_MNIST.is_dir():
        return load_idx_dataset("fashion_mnist", "test", None)
    data = make_synthetic(200, 10, 28, seed=0)
    images = torch.where(data.images > 128, data.images, 0)  # black background, as garments
    return ImageArrays(images, data.labels, 10, "synthetic")


# --- fmnist_det ---------------------------------------------------------------------------------


def test_fmnist_det_deterministic_under_a_seed(garments):
    a = FashionMNISTDetection(40, seed=3, garments=garments)
    b = FashionMNISTDetection(40, seed=3, garments=garments)
    c = FashionMNISTDetection(40, seed=4, garments=garments)
    assert torch.equal(a.images, b.images)
    for i in range(40):
        assert torch.equal(a.boxes[i], b.boxes[i]) and torch.equal(a.labels[i], b.labels[i])
        ia, ta = a[i]
        ib, tb = b[i]
        assert torch.equal(ia, ib) and torch.equal(ta["boxes"], tb["boxes"])
    assert not torch.equal(a.images, c.images)


def test_fmnist_det_boxes_inside_tight_and_labels(garments):
    canvas = 96
    ds = FashionMNISTDetection(60, canvas=canvas, seed=0, garments=garments)
    counts = []
    for i in range(len(ds)):
        image, target = ds[i]
        boxes, labels = target["boxes"], target["labels"]
        assert image.shape == (3, canvas, canvas) and image.dtype == torch.float32
        assert torch.equal(image[0], image[1]) and torch.equal(image[0], image[2])
        assert 0.0 <= image.min() and image.max() <= 1.0
        assert boxes.dtype == torch.float32 and labels.dtype == torch.int64
        assert boxes.shape == (len(labels), 4) and 1 <= len(labels) <= 4
        assert ((labels >= 1) & (labels <= 10)).all()
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= canvas).all()
        assert (boxes[:, 2:] > boxes[:, :2]).all()
        assert torch.equal(boxes, boxes.round())  # whole pixels
        # the box sides: at most the pasted size (56 px), at least one pixel
        assert ((boxes[:, 2:] - boxes[:, :2]) <= 56).all()
        inside = torch.zeros(canvas, canvas, dtype=torch.bool)
        gray = image[0]
        for x0, y0, x1, y1 in boxes.long().tolist():
            inside[y0:y1, x0:x1] = True
            patch = gray[y0:y1, x0:x1]
            # tight: every border row and column of the box holds a nonzero pixel
            assert patch[0].any() and patch[-1].any() and patch[:, 0].any() and patch[:, -1].any()
        assert (gray[~inside] == 0).all()  # nothing drawn outside the boxes
        # overlap limit: no box covers more than 25 % of the smaller box of a pair
        b = boxes.tolist()
        for j in range(len(b)):
            for k in range(j):
                iw = max(0.0, min(b[j][2], b[k][2]) - max(b[j][0], b[k][0]))
                ih = max(0.0, min(b[j][3], b[k][3]) - max(b[j][1], b[k][1]))
                area = min((b[j][2] - b[j][0]) * (b[j][3] - b[j][1]),
                           (b[k][2] - b[k][0]) * (b[k][3] - b[k][1]))
                assert iw * ih <= 0.25 * area + 1e-9
        counts.append(len(labels))
    assert max(counts) >= 3 and min(counts) == 1  # the 1-4 garments are actually drawn


def test_fmnist_det_exact_box_and_label_of_a_known_garment():
    # One garment: a 255 rectangle at rows 5..20, cols 8..15 of the 28x28 image, class 6.
    img = torch.zeros(1, 1, 28, 28, dtype=torch.uint8)
    img[0, 0, 5:21, 8:16] = 255
    src = ImageArrays(img, torch.tensor([6]), 10, "one")
    ds = FashionMNISTDetection(20, canvas=64, seed=0, max_objects=1, min_size=28, max_size=28,
                               garments=src)
    for i in range(len(ds)):
        image, target = ds[i]
        assert target["labels"].tolist() == [7]  # class 6 + 1
        x0, y0, x1, y1 = target["boxes"][0].tolist()
        assert (x1 - x0, y1 - y0) == (8.0, 16.0)  # no resize: the rectangle itself
        ox, oy = int(x0) - 8, int(y0) - 5  # the patch's offset
        assert 0 <= ox <= 64 - 28 and 0 <= oy <= 64 - 28  # pasted inside the canvas
        expected = torch.zeros(64, 64)
        expected[int(y0):int(y1), int(x0):int(x1)] = 1.0
        assert torch.equal(image[0], expected)


def test_fmnist_det_scaled_box_and_label_per_garment():
    # Full-frame garments of intensity 20 * (label + 1): the box is the pasted square (side s in
    # [min_size, max_size]) and the brightest pixel tells which garment was pasted.
    labels = torch.arange(10)
    img = (20 * (labels + 1)).to(torch.uint8).view(10, 1, 1, 1).expand(10, 1, 28, 28).clone()
    src = ImageArrays(img, labels, 10, "flat")
    ds = FashionMNISTDetection(30, canvas=96, seed=1, max_objects=1, min_size=20, max_size=56,
                               garments=src)
    sides = set()
    for i in range(len(ds)):
        image, target = ds[i]
        x0, y0, x1, y1 = target["boxes"][0].long().tolist()
        assert x1 - x0 == y1 - y0 and 20 <= x1 - x0 <= 56
        sides.add(x1 - x0)
        value = round(float(image[0, y0:y1, x0:x1].max()) * 255)
        assert target["labels"].item() == value // 20  # (label + 1) == value / 20
        assert (image[0, y0:y1, x0:x1] * 255).round().eq(value).all()
    assert len(sides) > 5  # sizes are drawn, not fixed


@needs_fmnist
def test_fmnist_det_reads_the_matching_split(garments):
    test = FashionMNISTDetection(10, split="test", seed=5)
    same = FashionMNISTDetection(10, split="test", seed=5,
                                 garments=load_idx_dataset("fashion_mnist", "test", None))
    train = FashionMNISTDetection(10, split="train", seed=5)
    assert torch.equal(test.images, same.images)
    assert not torch.equal(test.images, train.images)
    assert FashionMNISTDetection(5, split="test").images.shape == (5, 1, 96, 96)


@needs_fmnist
def test_fmnist_det_2000_canvases_in_seconds(garments):
    t = time.perf_counter()
    ds = FashionMNISTDetection(2000, split="test", garments=garments)
    assert time.perf_counter() - t < 20  # ~2 s on a busy 2-core CPU
    assert len(ds) == 2000


def test_fmnist_det_missing_fashion_mnist_names_the_path(tmp_path):
    with pytest.raises(DatasetError, match=str(tmp_path / "nowhere")):
        FashionMNISTDetection(4, root=str(tmp_path / "nowhere"))


def test_fmnist_det_bad_arguments():
    with pytest.raises(ValueError, match="max_size <= canvas"):
        FashionMNISTDetection(4, canvas=32, max_size=56, garments=make_synthetic(20, 2, 28, 0))
    with pytest.raises(ValueError, match="n_images"):
        FashionMNISTDetection(0, garments=make_synthetic(20, 2, 28, 0))


def test_detection_collate_keeps_lists(garments):
    ds = FashionMNISTDetection(3, seed=0, garments=garments)
    images, targets = detection_collate([ds[0], ds[1], ds[2]])
    assert isinstance(images, list) and len(images) == 3 and images[0].shape == (3, 96, 96)
    assert [t["labels"].tolist() for t in targets] == [ds.labels[i].tolist() for i in range(3)]


# --- PASCAL VOC ---------------------------------------------------------------------------------


def _voc_xml(objects: list[tuple[str, int, tuple[int, int, int, int]]]) -> str:
    objs = "".join(
        f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
        f"<difficult>{hard}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for name, hard, b in objects)
    return (f"<annotation><folder>VOC2007</folder><filename>x.jpg</filename><size><width>40"
            f"</width><height>30</height><depth>3</depth></size><segmented>0</segmented>{objs}"
            f"</annotation>")


def _write_voc(root: Path, year: str = "2007", image_set: str = "trainval") -> Path:
    voc = root / "VOCdevkit" / f"VOC{year}"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), (255, 0, 0)).save(voc / "JPEGImages" / "000001.jpg")
    Image.new("RGB", (40, 30), (0, 0, 255)).save(voc / "JPEGImages" / "000002.jpg")
    (voc / "Annotations" / "000001.xml").write_text(_voc_xml(
        [("dog", 0, (1, 2, 20, 30)), ("person", 1, (10, 5, 40, 25)), ("car", 0, (5, 6, 7, 8))]))
    (voc / "Annotations" / "000002.xml").write_text(_voc_xml([("tvmonitor", 0, (3, 4, 13, 14))]))
    (voc / "ImageSets" / "Main" / f"{image_set}.txt").write_text("000001\n000002\n")
    return voc


def test_voc_loader_converts_boxes_labels_and_difficult(tmp_path):
    _write_voc(tmp_path)
    ds = VOCDetectionSet(tmp_path, "2007", "trainval")
    assert len(ds) == 2 and ds.num_classes == 20
    image, target = ds[0]
    assert image.shape == (3, 30, 40) and image.dtype == torch.float32
    assert abs(float(image[0].mean()) - 1.0) < 0.02 and float(image[2].mean()) < 0.02  # red
    # VOC's 1-based inclusive pixels -> (xmin - 1, ymin - 1, xmax, ymax), as detectron2
    assert target["boxes"].tolist() == [[0, 1, 20, 30], [9, 4, 40, 25], [4, 5, 7, 8]]
    assert target["boxes"].dtype == torch.float32
    assert target["labels"].tolist() == [VOC_CLASSES.index(c) + 1 for c in ("dog", "person",
                                                                            "car")]
    assert target["labels"].tolist() == [12, 15, 7]
    assert target["difficult"].tolist() == [False, True, False]
    _, single = ds[1]  # one object: torchvision's parser returns it as a one-element list
    assert single["boxes"].tolist() == [[2, 3, 13, 14]] and single["labels"].tolist() == [20]
    _, easy = VOCDetectionSet(tmp_path, "2007", "trainval", keep_difficult=False)[0]
    assert easy["labels"].tolist() == [12, 7] and not easy["difficult"].any()


def test_voc_unknown_class_is_an_error(tmp_path):
    voc = _write_voc(tmp_path)
    (voc / "Annotations" / "000002.xml").write_text(_voc_xml([("unicorn", 0, (1, 1, 5, 5))]))
    with pytest.raises(DatasetError, match="unicorn"):
        VOCDetectionSet(tmp_path)[1]


def test_voc_missing_data_names_the_path(tmp_path):
    with pytest.raises(DatasetError) as err:
        VOCDetectionSet(tmp_path, "2007", "test")
    msg = str(err.value)
    assert str(tmp_path / "VOCdevkit" / "VOC2007") in msg and "host.robots.ox.ac.uk" in msg
    assert "never downloads" in msg
    _write_voc(tmp_path)  # trainval only: the test list is missing
    with pytest.raises(DatasetError, match=str(tmp_path / "VOCdevkit/VOC2007/ImageSets/Main/"
                                                          "test.txt")):
        VOCDetectionSet(tmp_path, "2007", "test")
    with pytest.raises(DatasetError, match="VOC2012"):  # MoCo's train set needs VOC2012 too
        load_detection("voc", "train", root=str(tmp_path))
    with pytest.raises(ValueError, match="image_set"):
        VOCDetectionSet(tmp_path, "2012", "test")
    assert isinstance(DatasetError("x"), FileNotFoundError)


def test_voc0712_and_test_split_via_load_detection(tmp_path):
    _write_voc(tmp_path, "2007", "trainval")
    _write_voc(tmp_path, "2012", "trainval")
    _write_voc(tmp_path, "2007", "test")
    assert len(load_detection("voc", "train", root=str(tmp_path))) == 4  # VOC07+12 trainval
    test = load_detection("voc", "test", root=str(tmp_path))
    assert len(test) == 2 and test[1][1]["labels"].tolist() == [20]


# --- COCO ---------------------------------------------------------------------------------------


def _write_coco(root: Path) -> tuple[Path, Path]:
    images, ann_dir = root / "images", root / "annotations"
    images.mkdir()
    ann_dir.mkdir()
    Image.new("RGB", (50, 40), (0, 255, 0)).save(images / "a.jpg")
    Image.new("L", (30, 20), 128).save(images / "b.jpg")  # grayscale: read as RGB
    Image.new("RGB", (10, 10)).save(images / "c.jpg")
    ann = {
        "images": [{"id": 7, "file_name": "a.jpg", "width": 50, "height": 40},
                   {"id": 3, "file_name": "b.jpg", "width": 30, "height": 20},
                   {"id": 9, "file_name": "c.jpg", "width": 10, "height": 10}],
        "categories": [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"},
                       {"id": 3, "name": "car"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 3, "bbox": [1.5, 2.0, 10.0, 20.25],
             "area": 202.5, "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 90, "bbox": [0, 0, 50, 40], "area": 2000,
             "iscrowd": 0},
            {"id": 3, "image_id": 7, "category_id": 1, "bbox": [5, 5, 10, 10], "area": 100,
             "iscrowd": 1},  # crowd: dropped
            {"id": 4, "image_id": 3, "category_id": 1, "bbox": [4, 4, 0, 5], "area": 0,
             "iscrowd": 0},  # zero width: dropped
            {"id": 5, "image_id": 3, "category_id": 1, "bbox": [2, 3, 4, 5], "area": 20,
             "iscrowd": 0},
            {"id": 6, "image_id": 9, "category_id": 3, "bbox": [1, 1, 2, 2], "area": 4,
             "iscrowd": 1},  # image 9 holds only a crowd box
        ],
    }
    ann_file = ann_dir / "instances_val2017.json"
    ann_file.write_text(json.dumps(ann))
    return images, ann_file


def test_coco_loader_converts_boxes_and_contiguous_labels(tmp_path, capsys):
    images, ann_file = _write_coco(tmp_path)
    ds = CocoDetectionSet(images, ann_file)
    assert capsys.readouterr().out == ""  # pycocotools' prints are swallowed
    assert len(ds) == 3 and ds.num_classes == 3
    assert ds.category_ids == [1, 3, 90] and ds.class_names == ("person", "car", "toothbrush")
    # sorted by image id: 3 (b.jpg), 7 (a.jpg), 9 (c.jpg)
    image, target = ds[0]
    assert image.shape == (3, 20, 30) and torch.allclose(image, torch.full_like(image, 128 / 255),
                                                         atol=0.02)
    assert target["boxes"].tolist() == [[2, 3, 6, 8]] and target["labels"].tolist() == [1]
    image, target = ds[1]
    assert image.shape == (3, 40, 50)
    assert target["boxes"].tolist() == [[1.5, 2.0, 11.5, 22.25], [0, 0, 50, 40]]
    assert target["labels"].tolist() == [2, 3]  # category 3 -> 2, 90 -> 3
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
    _, empty = ds[2]
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)
    assert len(CocoDetectionSet(images, ann_file, skip_empty=True)) == 2


def test_coco_missing_files_name_the_path(tmp_path):
    images, ann_file = _write_coco(tmp_path)
    missing = tmp_path / "annotations" / "instances_train2017.json"
    with pytest.raises(DatasetError) as err:
        CocoDetectionSet(images, missing)
    assert str(missing) in str(err.value) and "cocodataset.org" in str(err.value)
    with pytest.raises(DatasetError, match=str(tmp_path / "nope")):
        CocoDetectionSet(tmp_path / "nope", ann_file)
    with pytest.raises(DatasetError, match=str(tmp_path / "val2017")):
        coco_split(tmp_path, "val2017")  # the official layout wants <root>/val2017/
    (images / "a.jpg").unlink()
    with pytest.raises(DatasetError, match="a.jpg"):
        CocoDetectionSet(images, ann_file)[1]
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DatasetError, match="bad.json"):
        CocoDetectionSet(images, bad)
