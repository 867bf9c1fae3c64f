"""Detection transfer (MoCo Tables 2-5): a pre-trained backbone inside a Faster R-CNN, COCO AP.

`build_detector` puts a *copy* of the given backbone's trunk (its weights and BN statistics, never
re-initialised) under an FPN in torchvision's `FasterRCNN`:

- torchvision ResNets (`TorchvisionResNet`): torchvision's `BackboneWithFPN` over layer1-4 of the
  backbone's own ResNet, MoCo's R50-FPN (He et al. 2020, sec. 4.2; torchvision's
  `fasterrcnn_resnet50_fpn` sizes: 256-channel FPN, 2-fc 1024-d box head, 800 px images).
- the small CPU backbones (`SmallResNet`, `AlexNetSmall`): the same FPN over their stages, sized
  for the 96 px `fmnist_det` canvases (64-channel FPN, 256-d box head, images not resized).

Anchors follow FPN's rule (Lin et al. 2017): one size per level, 8x the level's stride (32 px at
stride 4 ... 512 px at stride 64 for a ResNet, torchvision's defaults), aspect ratios 1:2, 1:1,
2:1. Images enter as float (3, H, W) in [0, 1] and are normalised inside the detector with the
pre-training statistics (`sslray.data.catalog`), as the backbone saw them.

BatchNorm (`bn`): MoCo fine-tunes BN ("we fine-tune with BN that is trained (and synchronized
across GPUs)", sec. 4.2; its detectron2 configs set RESNETS.NORM and FPN.NORM to SyncBN): `train`
does this, with BN in the FPN too. SyncBN itself is a device concern: a multi-GPU training loop
converts the BN layers (`nn.SyncBatchNorm.convert_sync_batchnorm`, as `sslray.training.loop`
does); on a CPU or one device plain BN is the same thing. `frozen` is torchvision's default
(`FrozenBatchNorm2d`, the pre-trained statistics and affine fixed; no BN in the FPN), which
MoCo reports as worse for self-supervised features, whose statistics differ from ImageNet's.
"""

from __future__ import annotations

import builtins
import contextlib
import copy
import io
import sys
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torchvision.models import ResNet
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from sslray.data.catalog import DATASETS, dataset_info
from sslray.models.backbones import AlexNetSmall, SmallResNet, TorchvisionResNet

BNMode = Literal["train", "frozen"]

ANCHOR_RATIOS = (0.5, 1.0, 2.0)  # Faster R-CNN / FPN: aspect ratios 1:2, 1:1, 2:1
ANCHOR_STRIDE_MULT = 8  # FPN (Lin et al. 2017): anchor 32 px at stride 4, i.e. 8x the stride
# torchvision fasterrcnn_resnet50_fpn / detectron2 R50-FPN: 256-channel FPN, 2-fc 1024-d head
RESNET_FPN_CHANNELS, RESNET_REPRESENTATION = 256, 1024
# chosen for CPU detectors on 96 px canvases with <= 4 objects: a 64-channel FPN, a 256-d head
SMALL_FPN_CHANNELS, SMALL_REPRESENTATION = 64, 256
# FasterRCNN settings for the small variant, chosen for a 96 px canvas with <= 4 objects
# (torchvision's are for 800 px COCO images with ~7 objects: 2000/1000 proposals, 512 RoIs).
SMALL_RCNN_KWARGS: dict[str, Any] = {
    "rpn_pre_nms_top_n_train": 1000, "rpn_pre_nms_top_n_test": 500,
    "rpn_post_nms_top_n_train": 500, "rpn_post_nms_top_n_test": 250,
    "box_batch_size_per_image": 128,  # chosen: 1/4 of 512 (Fast R-CNN sampled 64 per image)
}
DETECTRON2_MAX_RATIO = 1333 / 800  # detectron2 / torchvision: max_size 1333 for min_size 800


class StagesWithFPN(nn.Module):
    """A small backbone's stages -> an FPN: `forward` maps (N, 3, H, W) to an OrderedDict of
    (N, out_channels, H / s_i, W / s_i) maps, keys "0".."L-1" and "pool" (as BackboneWithFPN).

    `body` is the backbone module itself (its parameter names unchanged); its pooling head is
    not used.
    """

    def __init__(self, body: SmallResNet | AlexNetSmall, in_channels: list[int],
                 out_channels: int, norm_layer: type[nn.Module] | None) -> None:
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(in_channels, out_channels,
                                         extra_blocks=LastLevelMaxPool(), norm_layer=norm_layer)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.fpn(_stage_maps(self.body, x))


def _stage_maps(net: nn.Module, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
    """Each stage's output map, keys "0".."L-1": a torchvision ResNet after layer1..layer4,
    SmallResNet after each stage of BasicBlocks, AlexNetSmall after each stage's max-pool (the
    map the next stage reads)."""
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    if isinstance(net, ResNet):
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        for i, layer in enumerate((net.layer1, net.layer2, net.layer3, net.layer4)):
            x = layer(x)
            out[str(i)] = x
    elif isinstance(net, SmallResNet):
        x = net.stem(x)
        for i, stage in enumerate(net.stages):
            x = stage(x)
            out[str(i)] = x
    else:
        assert isinstance(net, AlexNetSmall), type(net).__name__
        for layer in net.features:
            x = layer(x)
            if isinstance(layer, nn.MaxPool2d):
                out[str(len(out))] = x
    return out


def _probe_maps(
    net: nn.Module, probe: int = 128,  # chosen: a 4x4 map at stride 32 (ResNet layer4)
) -> tuple[list[int], list[int]]:
    """(stride in pixels, channels) of each stage map, from one (1, 3, probe, probe) forward in
    eval mode (BN statistics untouched)."""
    was_training = net.training
    net.eval()
    with torch.no_grad():
        p = next(net.parameters())
        maps = _stage_maps(net, torch.zeros(1, 3, probe, probe, dtype=p.dtype, device=p.device))
    net.train(was_training)
    return [probe // m.shape[-1] for m in maps.values()], [m.shape[1] for m in maps.values()]


def _stage_units(net: nn.Module) -> list[list[str]]:
    """The freezable units of a trunk as submodule paths, input side first."""
    if isinstance(net, ResNet):  # torchvision trainable_layers: conv1(+bn1), layer1..layer4
        return [["conv1", "bn1"], ["layer1"], ["layer2"], ["layer3"], ["layer4"]]
    if isinstance(net, SmallResNet):
        return [["stem"]] + [[f"stages.{i}"] for i in range(len(net.stages))]
    assert isinstance(net, AlexNetSmall), type(net).__name__
    units: list[list[str]] = [[]]  # AlexNetSmall: each stage's convs and its max-pool
    for i, layer in enumerate(net.features):
        units[-1].append(f"features.{i}")
        if isinstance(layer, nn.MaxPool2d):
            units.append([])
    return [u for u in units if u]


def frozen_bn(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm (plain, split or sync) under `module` by a `FrozenBatchNorm2d`
    holding its statistics and affine (in place; returns the module, or its replacement)."""
    if isinstance(module, _BatchNorm):
        frozen = FrozenBatchNorm2d(module.num_features, module.eps)
        with torch.no_grad():
            if module.affine:
                frozen.weight.copy_(module.weight)
                frozen.bias.copy_(module.bias)
            if module.running_mean is not None and module.running_var is not None:
                frozen.running_mean.copy_(module.running_mean)
                frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        new = frozen_bn(child)
        if new is not child:
            setattr(module, name, new)
    return module


def plain_bn(module: nn.Module) -> nn.Module:
    """SplitBatchNorm2d (MoCo's single-device shuffle-BN emulation) -> BatchNorm2d, same state:
    detection batches (2 images per device) are not split."""
    if isinstance(module, nn.BatchNorm2d) and type(module) is not nn.BatchNorm2d:
        bn = nn.BatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                            module.track_running_stats)
        bn.load_state_dict(module.state_dict())
        return bn
    for name, child in module.named_children():
        new = plain_bn(child)
        if new is not child:
            setattr(module, name, new)
    return module


def _freeze(net: nn.Module, trainable: int | None) -> None:
    """Keep the last `trainable` units trainable (None: all); freeze the others as detectron2's
    FREEZE_AT does: requires_grad off, BN frozen."""
    if trainable is None:
        return
    units = _stage_units(net)
    if not 0 <= trainable <= len(units):
        raise ValueError(f"trainable_layers must be in 0..{len(units)} for "
                         f"{type(net).__name__}, got {trainable}")
    for unit in units[:len(units) - trainable]:
        for path in unit:
            module = net.get_submodule(path)
            module.requires_grad_(False)
            new = frozen_bn(module)
            if new is not module:
                parent, _, name = path.rpartition(".")
                setattr(net.get_submodule(parent), name, new)


def build_detector(
    backbone: nn.Module,
    num_classes: int,
    image_size: int,
    *,
    bn: BNMode = "train",  # MoCo sec. 4.2: BN fine-tuned (SyncBN across GPUs), BN in the FPN
    trainable_layers: int | None = None,  # None: all; MoCo's detectron2 configs: FREEZE_AT 0
    pretrain_dataset: str = "fashion_mnist",  # the DataConfig default (the embedded set)
    image_mean: Sequence[float] | None = None,  # None: pretrain_dataset's catalog statistics
    image_std: Sequence[float] | None = None,
    max_size: int | None = None,  # None: image_size (small), image_size * 1333 / 800 (ResNet)
    fpn_channels: int | None = None,  # None: 256 (ResNet, torchvision), 64 (small, chosen)
    representation_size: int | None = None,  # None: 1024 (ResNet, torchvision), 256 (small)
    **rcnn_kwargs: Any,
) -> FasterRCNN:
    """A Faster R-CNN with FPN whose trunk is a deep copy of `backbone` (weights and BN
    statistics as given; the source module is never modified).

    `num_classes`: object classes C (labels 1..C); the detector predicts C + 1 (0: background).
    `image_size`: the detector's min_size (test size): images are resized so their short side
    is `image_size`, their long side at most `max_size`. `trainable_layers`: how many trunk
    units stay trainable, counted from the output side (ResNet: 0..5 as torchvision's, units
    conv1+bn1, layer1..4; SmallResNet: stem + stages; AlexNetSmall: stages); frozen units get
    FrozenBatchNorm2d. `rcnn_kwargs` go to `FasterRCNN` (over `SMALL_RCNN_KWARGS` for the small
    backbones), e.g. `rpn_post_nms_top_n_test`.

    The trunk is `detector.backbone.body`: for a ResNet torchvision's IntermediateLayerGetter
    over the ResNet (parameter names as `TorchvisionResNet.net`'s), for a small backbone the
    backbone module itself (names as the backbone's).

    Input (train): a list of float (3, H, W) images in [0, 1] and targets in the common format
    of `sslray.data.detection` -> dict of scalar losses; (eval): the images -> a list of dicts
    boxes (D, 4) xyxy, scores (D,), labels (D,) in 1..C.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1 (object classes, without background), got "
                         f"{num_classes}")
    if bn not in ("train", "frozen"):
        raise ValueError(f"bn must be 'train' or 'frozen', got {bn!r}")
    if isinstance(backbone, TorchvisionResNet):
        backbone = backbone.net
    if not isinstance(backbone, ResNet | SmallResNet | AlexNetSmall):
        raise TypeError(f"build_detector: no detection trunk for {type(backbone).__name__}; "
                        f"expected TorchvisionResNet, SmallResNet or AlexNetSmall")
    net = copy.deepcopy(backbone).train()
    net = plain_bn(net) if bn == "train" else frozen_bn(net)
    _freeze(net, trainable_layers)
    strides, channels = _probe_maps(net)
    fpn_norm = nn.BatchNorm2d if bn == "train" else None  # MoCo detectron2: FPN.NORM SyncBN
    small = not isinstance(net, ResNet)
    out_ch = fpn_channels or (SMALL_FPN_CHANNELS if small else RESNET_FPN_CHANNELS)
    fpn_backbone: nn.Module
    if isinstance(net, ResNet):
        fpn_backbone = BackboneWithFPN(
            net, {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"}, channels, out_ch,
            extra_blocks=LastLevelMaxPool(), norm_layer=fpn_norm)
    else:
        assert isinstance(net, SmallResNet | AlexNetSmall)
        fpn_backbone = StagesWithFPN(net, channels, out_ch, fpn_norm)
    levels = [str(i) for i in range(len(strides))]
    sizes = tuple((ANCHOR_STRIDE_MULT * s,) for s in strides + [2 * strides[-1]])  # + "pool"
    anchors = AnchorGenerator(sizes, (ANCHOR_RATIOS,) * len(sizes))
    roi_pool = MultiScaleRoIAlign(levels, output_size=7, sampling_ratio=2)  # torchvision FPN
    rep = representation_size or (SMALL_REPRESENTATION if small else RESNET_REPRESENTATION)
    if pretrain_dataset not in DATASETS:
        raise ValueError(f"pretrain_dataset {pretrain_dataset!r} is not in the catalog "
                         f"({', '.join(DATASETS)}); pass image_mean and image_std instead")
    info = dataset_info(pretrain_dataset)
    if max_size is None:
        max_size = image_size if small else int(round(image_size * DETECTRON2_MAX_RATIO))
    kwargs = {**(SMALL_RCNN_KWARGS if small else {}), **rcnn_kwargs}
    return FasterRCNN(
        fpn_backbone, num_classes=None, min_size=image_size, max_size=max_size,
        image_mean=list(image_mean or info.mean), image_std=list(image_std or info.std),
        rpn_anchor_generator=anchors, box_roi_pool=roi_pool,
        box_head=TwoMLPHead(out_ch * 7 * 7, rep),
        box_predictor=FastRCNNPredictor(rep, num_classes + 1), **kwargs)


# --- COCO AP ------------------------------------------------------------------------------------


def _xywh(boxes: torch.Tensor) -> np.ndarray:
    b = boxes.detach().to("cpu", torch.float64).reshape(-1, 4).numpy()
    return np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)  # (K, 4) x, y, w, h


@contextlib.contextmanager
def _plain_print() -> Iterator[None]:
    """builtins.print as a plain write to sys.stdout, for the duration (undoing Ray's patch)."""
    def write(*objects: object, sep: str | None = " ", end: str | None = "\n",
              file: Any = None, flush: bool = False) -> None:
        (file or sys.stdout).write((sep or "").join(map(str, objects)) + (end or ""))

    patched, builtins.print = builtins.print, write  # type: ignore[assignment]
    try:
        yield
    finally:
        builtins.print = patched


def coco_ap(
    predictions: Sequence[Mapping[str, torch.Tensor]],
    targets: Sequence[Mapping[str, torch.Tensor]],
) -> dict[str, float]:
    """COCO box AP (pycocotools COCOeval, 101-point interpolation, up to 100 detections per
    image): {"AP": IoU 0.5:0.95, "AP50", "AP75"}, each in [0, 1] (MoCo's tables print x100).

    `predictions[i]`: a torchvision detector output for image i: boxes (D, 4) xyxy, scores (D,),
    labels (D,); `targets[i]`: the common format (boxes (K, 4) xyxy, labels (K,)). Ground truth
    flagged by `iscrowd` or `difficult` (bool (K,)) is neither required nor penalised (COCO's
    crowd handling; VOC's evaluation ignores difficult objects the same way, though it matches
    them by plain IoU where COCO uses intersection over the detection's area). Categories are the
    labels that occur in the targets (a predicted class never in them is not scored, as COCO
    scores only the dataset's categories). No predictions at all give 0.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if len(predictions) != len(targets):
        raise ValueError(f"coco_ap: {len(predictions)} predictions for {len(targets)} targets; "
                         f"one prediction dict per image expected")
    images = [{"id": i + 1} for i in range(len(targets))]  # ids from 1: COCOeval treats 0 unset
    gts: list[dict[str, Any]] = []
    dts: list[dict[str, Any]] = []
    for i, (pred, tgt) in enumerate(zip(predictions, targets, strict=True)):
        labels = tgt["labels"].reshape(-1).tolist()
        ignore = torch.zeros(len(labels), dtype=torch.bool)
        for key in ("iscrowd", "difficult"):
            if key in tgt:
                ignore |= tgt[key].reshape(-1).bool().cpu()
        for box, label, ig in zip(_xywh(tgt["boxes"]).tolist(), labels, ignore.tolist(),
                                  strict=True):
            gts.append({"id": len(gts) + 1, "image_id": i + 1, "category_id": int(label),
                        "bbox": box, "area": box[2] * box[3], "iscrowd": int(ig)})
        for key in ("boxes", "scores", "labels"):
            if key not in pred:
                raise ValueError(f"coco_ap: prediction {i} has no {key!r} (keys: {sorted(pred)})")
        for box, score, label in zip(_xywh(pred["boxes"]).tolist(),
                                     pred["scores"].reshape(-1).tolist(),
                                     pred["labels"].reshape(-1).tolist(), strict=True):
            dts.append({"id": len(dts) + 1, "image_id": i + 1, "category_id": int(label),
                        "bbox": box, "area": box[2] * box[3], "score": float(score),
                        "iscrowd": 0})
    if not any(not g["iscrowd"] for g in gts):
        raise ValueError("coco_ap: the targets hold no (non-ignored) ground-truth box; AP is "
                         "undefined")
    if not dts:
        return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
    categories = [{"id": c} for c in sorted({g["category_id"] for g in gts})]
    # pycocotools prints its progress; Ray Train's workers patch builtins.print to log (and tee
    # past a redirect), so both the stream and print are swapped for the call.
    with contextlib.redirect_stdout(io.StringIO()), _plain_print():
        gt_api, dt_api = COCO(), COCO()
        gt_api.dataset = {"images": images, "annotations": gts, "categories": categories}
        dt_api.dataset = {"images": images, "annotations": dts, "categories": categories}
        gt_api.createIndex()
        dt_api.createIndex()
        ev = COCOeval(gt_api, dt_api, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [max(0.0, float(s)) for s in ev.stats[:3]]  # -1 (no detections matched) -> 0
    return {"AP": stats[0], "AP50": stats[1], "AP75": stats[2]}
