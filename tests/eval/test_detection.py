"""Detection transfer: COCO AP against closed forms, and detectors that hold the given weights."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops.misc import FrozenBatchNorm2d

from sslray.config_types import BackboneConfig
from sslray.data.catalog import dataset_info
from sslray.data.datasets import DEBIAN_FASHION_MNIST, ImageArrays, load_idx_dataset, make_synthetic
from sslray.data.detection import FashionMNISTDetection, detection_collate
from sslray.eval.detection import build_detector, coco_ap
from sslray.models.backbones import build_backbone
from sslray.models.norm import SplitBatchNorm2d, norm_layer

# --- coco_ap ------------------------------------------------------------------------------------

# 3 images, 2 classes, boxes of different sizes (none of the same class overlap)
TARGETS = [
    {"boxes": torch.tensor([[10.0, 10.0, 50.0, 40.0], [60.0, 5.0, 90.0, 85.0]]),
     "labels": torch.tensor([1, 2])},
    {"boxes": torch.tensor([[0.0, 0.0, 20.0, 20.0]]), "labels": torch.tensor([1])},
    {"boxes": torch.tensor([[30.0, 30.0, 94.0, 70.0], [5.0, 50.0, 25.0, 90.0]]),
     "labels": torch.tensor([2, 2])},
]


def _perfect(targets=TARGETS) -> list[dict[str, torch.Tensor]]:
    return [{"boxes": t["boxes"].clone(), "scores": torch.ones(len(t["labels"])),
             "labels": t["labels"].clone()} for t in targets]


def _shifted(fraction: float) -> list[dict[str, torch.Tensor]]:
    """Each box moved right by `fraction` of its width: IoU = (1 - f) / (1 + f)."""
    preds = _perfect()
    for p in preds:
        w = p["boxes"][:, 2] - p["boxes"][:, 0]
        p["boxes"][:, [0, 2]] += (fraction * w)[:, None]
    return preds


def test_coco_ap_perfect_predictions_is_one(capsys):
    ap = coco_ap(_perfect(), TARGETS)
    assert ap == pytest.approx({"AP": 1.0, "AP50": 1.0, "AP75": 1.0}, abs=1e-12)
    assert capsys.readouterr().out == ""  # pycocotools' prints are swallowed


def test_coco_ap_shifted_boxes_closed_form():
    # f = 0.2: IoU 2/3 passes the thresholds 0.50, 0.55, 0.60, 0.65 -> AP = 4/10, AP75 = 0
    ap = coco_ap(_shifted(0.2), TARGETS)
    assert ap == pytest.approx({"AP": 0.4, "AP50": 1.0, "AP75": 0.0}, abs=1e-12)
    # f = 0.1: IoU 9/11 = 0.818 passes 0.50..0.80 (7 thresholds) -> AP = 0.7, AP75 = 1
    ap = coco_ap(_shifted(0.1), TARGETS)
    assert ap == pytest.approx({"AP": 0.7, "AP50": 1.0, "AP75": 1.0}, abs=1e-12)
    # f = 0.5: IoU 1/3 < 0.5 everywhere
    assert coco_ap(_shifted(0.5), TARGETS) == {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}


def test_coco_ap_ranking_of_false_positives():
    target = [{"boxes": torch.tensor([[10.0, 10.0, 30.0, 30.0]]), "labels": torch.tensor([1])}]
    fp_box, tp_box = [60.0, 60.0, 80.0, 80.0], [10.0, 10.0, 30.0, 30.0]
    # a false positive scored above the true one: precision 1/2 at recall 1 -> AP 0.5
    above = [{"boxes": torch.tensor([fp_box, tp_box]), "scores": torch.tensor([0.9, 0.8]),
              "labels": torch.tensor([1, 1])}]
    assert coco_ap(above, target) == pytest.approx({"AP": 0.5, "AP50": 0.5, "AP75": 0.5})
    # scored below it, the false positive costs nothing
    below = [{"boxes": torch.tensor([fp_box, tp_box]), "scores": torch.tensor([0.1, 0.8]),
              "labels": torch.tensor([1, 1])}]
    assert coco_ap(below, target)["AP"] == pytest.approx(1.0)
    # the right box with the wrong class is no detection of class 1
    wrong = [{"boxes": torch.tensor([tp_box]), "scores": torch.tensor([0.9]),
              "labels": torch.tensor([2])}]
    assert coco_ap(wrong, target)["AP"] == 0.0


def test_coco_ap_mean_over_classes():
    # class 1 found perfectly, class 2 missed entirely -> mean over the 2 classes = 0.5
    preds = _perfect()
    for p in preds:
        keep = p["labels"] == 1
        p["boxes"], p["scores"], p["labels"] = p["boxes"][keep], p["scores"][keep], \
            p["labels"][keep]
    assert coco_ap(preds, TARGETS) == pytest.approx({"AP": 0.5, "AP50": 0.5, "AP75": 0.5})


def test_coco_ap_empty_predictions_is_zero():
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
             "labels": torch.zeros(0, dtype=torch.int64)}
    assert coco_ap([dict(empty) for _ in TARGETS], TARGETS) == {"AP": 0.0, "AP50": 0.0,
                                                               "AP75": 0.0}
    # predictions on some images only: the images without are recall lost, not errors
    partial = _perfect()[:1] + [dict(empty), dict(empty)]
    ap = coco_ap(partial, TARGETS)
    assert 0.0 < ap["AP"] < 1.0


def test_coco_ap_difficult_ground_truth_is_ignored():
    targets = [dict(t) for t in TARGETS]
    targets[2] = {**TARGETS[2], "difficult": torch.tensor([False, True])}
    preds = _perfect()
    preds[2] = {k: v[:1] for k, v in preds[2].items()}  # the difficult box is not detected
    assert coco_ap(preds, targets)["AP"] == pytest.approx(1.0)
    assert coco_ap(preds, TARGETS)["AP"] < 1.0  # without the flag it is a miss


def test_coco_ap_bad_input():
    with pytest.raises(ValueError, match="2 predictions for 3 targets"):
        coco_ap(_perfect()[:2], TARGETS)
    with pytest.raises(ValueError, match="no .*ground-truth"):
        coco_ap([{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
                  "labels": torch.zeros(0, dtype=torch.int64)}],
                [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}])
    with pytest.raises(ValueError, match="'scores'"):
        coco_ap([{"boxes": TARGETS[1]["boxes"], "labels": TARGETS[1]["labels"]}], TARGETS[1:2])


# --- build_detector -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def canvases() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Two fmnist_det canvases (96 px), from the real Fashion-MNIST test split if installed."""
    if DEBIAN_FASHION_MNIST.is_dir():
        garments = load_idx_dataset("fashion_mnist", "test", None)
    else:
        data = make_synthetic(64, 10, 28, seed=0)
        garments = ImageArrays(torch.where(data.images > 128, data.images, 0), data.labels, 10,
                               "synthetic")
    ds = FashionMNISTDetection(2, seed=0, garments=garments)
    return detection_collate([ds[0], ds[1]])


def _perturb(backbone: torch.nn.Module, seed: int) -> None:
    """New weights and BN statistics: a detector built afterwards must hold these, not fresh
    or torchvision-initialised ones."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in backbone.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
        for m in backbone.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.add_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))


def _assert_same_tensors(source: dict[str, torch.Tensor], body: dict[str, torch.Tensor],
                         prefix: str = "") -> None:
    """Every trunk tensor of the detector equals the source's (FrozenBatchNorm2d keeps all but
    num_batches_tracked); the source has nothing the trunk lacks."""
    src = {k.removeprefix(prefix): v for k, v in source.items()}
    compared = 0
    for key, value in src.items():
        if key not in body:
            assert key.endswith("num_batches_tracked"), key
            continue
        assert torch.equal(body[key], value), key
        compared += 1
    assert compared >= len([k for k in src if not k.endswith("num_batches_tracked")])
    assert set(body) <= set(src), set(body) - set(src)


SMALL = BackboneConfig(arch="small_resnet", width=8, blocks=(1, 1, 1))


@pytest.mark.parametrize("bn", ["train", "frozen"])
def test_small_detector_holds_the_given_weights(bn):
    bb = build_backbone(SMALL)
    _perturb(bb, seed=1)
    det = build_detector(bb, num_classes=10, image_size=96, bn=bn)
    body = det.backbone.body
    assert body is not bb  # a copy: fine-tuning never touches the pre-trained backbone
    _assert_same_tensors(bb.state_dict(), body.state_dict())
    bn_types = {type(m) for m in body.modules() if "BatchNorm" in type(m).__name__}
    assert bn_types == ({torch.nn.BatchNorm2d} if bn == "train" else {FrozenBatchNorm2d})
    # same function: the trunk's pooled last map is the source's feature (eval-mode BN)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = bb.eval()(x)
        got = body.eval()(x)
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)
    # and a copy: changing the source afterwards leaves the detector as built
    with torch.no_grad():
        bb.stem[0].weight.add_(1.0)
    assert not torch.equal(body.stem[0].weight, bb.stem[0].weight)
    assert type(bb.stem[1]) is torch.nn.BatchNorm2d  # the source is not converted


def test_small_detector_shapes_normalisation_and_anchors():
    det = build_detector(build_backbone(SMALL), num_classes=10, image_size=96)
    assert det.roi_heads.box_predictor.cls_score.out_features == 11  # 10 + background
    assert det.transform.min_size == (96,) and det.transform.max_size == 96
    info = dataset_info("fashion_mnist")
    assert det.transform.image_mean == list(info.mean)
    assert det.transform.image_std == list(info.std)
    # stage strides 1, 2, 4 (+ the pool level, 8): anchors 8x the stride
    assert det.rpn.anchor_generator.sizes == ((8,), (16,), (32,), (64,))
    assert det.backbone.out_channels == 64
    alex = build_detector(build_backbone(BackboneConfig(arch="alexnet_small", width=8)), 10, 96)
    assert alex.rpn.anchor_generator.sizes == ((16,), (32,), (64,), (128,))  # strides 2, 4, 8


def test_small_detector_trains_and_predicts(canvases):
    images, targets = canvases
    torch.manual_seed(0)
    det = build_detector(build_backbone(SMALL), num_classes=10, image_size=96)
    det.train()
    losses = det(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness",
                           "loss_rpn_box_reg"}
    assert all(math.isfinite(v.item()) and v.item() >= 0 for v in losses.values())
    # untrained 11-way classifier: cross-entropy near ln 11 (the losses are real, not zeros)
    assert abs(losses["loss_classifier"].item() - math.log(11)) < 1.0
    sum(losses.values()).backward()
    grad = det.backbone.body.stem[0].weight.grad
    assert grad is not None and grad.abs().sum() > 0  # the pre-trained trunk is fine-tuned
    det.eval()
    with torch.no_grad():
        out = det(images)
    assert len(out) == 2
    for o in out:
        assert set(o) == {"boxes", "scores", "labels"}
        assert o["boxes"].shape == (len(o["scores"]), 4) and o["labels"].shape == o["scores"].shape
        assert ((o["labels"] >= 1) & (o["labels"] <= 10)).all()
        assert (o["boxes"] >= 0).all() and (o["boxes"] <= 96).all()


def test_split_bn_backbone_becomes_plain_bn(canvases):
    bb = build_backbone(SMALL, norm_layer(4))  # MoCo's single-device shuffle-BN emulation
    assert any(isinstance(m, SplitBatchNorm2d) for m in bb.modules())
    det = build_detector(bb, num_classes=10, image_size=96)
    assert not any(isinstance(m, SplitBatchNorm2d) for m in det.modules())
    _assert_same_tensors(bb.state_dict(), det.backbone.body.state_dict())
    det.train()
    images, targets = canvases
    losses = det(images, targets)  # 2 images: split BN (4 splits) could not run this batch
    assert all(math.isfinite(v.item()) for v in losses.values())


RESNET_FAST = {"representation_size": 128, "box_batch_size_per_image": 64,
               "rpn_post_nms_top_n_train": 200, "rpn_post_nms_top_n_test": 50}  # test speed


def test_resnet18_detector_holds_the_given_weights_and_runs(canvases):
    torch.manual_seed(0)
    bb = build_backbone(BackboneConfig(arch="resnet18"))
    _perturb(bb, seed=2)
    det = build_detector(bb, num_classes=10, image_size=96, **RESNET_FAST)
    body = det.backbone.body  # torchvision's IntermediateLayerGetter over our ResNet
    _assert_same_tensors(bb.state_dict(), body.state_dict(), prefix="net.")
    assert type(det.backbone).__name__ == "BackboneWithFPN"
    assert det.rpn.anchor_generator.sizes == ((32,), (64,), (128,), (256,), (512,))
    assert det.backbone.out_channels == 256
    assert det.transform.max_size == 160  # 96 * 1333 / 800
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = bb.eval()(x)  # (2, 512): layer4, averaged
        got = body.eval()(x)["3"].mean(dim=(2, 3))
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-4)
    images, targets = canvases
    det.train()
    losses = det(images, targets)
    assert len(losses) == 4 and all(math.isfinite(v.item()) for v in losses.values())
    det.eval()
    with torch.no_grad():
        out = det(images)
    assert len(out) == 2 and all(set(o) == {"boxes", "scores", "labels"} for o in out)
    assert all(o["boxes"].shape[1:] == (4,) for o in out)


def test_resnet_trainable_layers_freeze_the_input_side():
    bb = build_backbone(BackboneConfig(arch="resnet18"))
    det = build_detector(bb, num_classes=3, image_size=96, trainable_layers=3, **RESNET_FAST)
    body = det.backbone.body
    for name in ("conv1", "layer1"):
        assert not any(p.requires_grad for p in body.get_submodule(name).parameters()), name
    for name in ("layer2", "layer3", "layer4"):
        assert all(p.requires_grad for p in body.get_submodule(name).parameters()), name
    assert isinstance(body.bn1, FrozenBatchNorm2d) and isinstance(body.layer1[0].bn1,
                                                                  FrozenBatchNorm2d)
    assert type(body.layer2[0].bn1) is torch.nn.BatchNorm2d
    _assert_same_tensors(bb.state_dict(), body.state_dict(), prefix="net.")
    with pytest.raises(ValueError, match="trainable_layers must be in 0..5"):
        build_detector(bb, num_classes=3, image_size=96, trainable_layers=6)
    with pytest.raises(TypeError, match="Linear"):
        build_detector(torch.nn.Linear(2, 2), num_classes=3, image_size=96)


def test_coco_ap_prints_nothing_even_under_a_patched_print(capsys, monkeypatch):
    """Ray Train's workers patch builtins.print to log and tee past redirect_stdout."""
    import builtins

    calls = []
    real = builtins.print
    monkeypatch.setattr(builtins, "print", lambda *a, **k: (calls.append(a), real(*a, **k)))
    box = torch.tensor([[10.0, 10.0, 30.0, 30.0]])
    target = {"boxes": box, "labels": torch.tensor([1])}
    pred = {"boxes": box, "labels": torch.tensor([1]), "scores": torch.tensor([0.9])}
    assert coco_ap([pred], [target])["AP50"] == pytest.approx(1.0)
    assert calls == [] and capsys.readouterr().out == ""
    assert builtins.print is not real  # the patch is restored afterwards
