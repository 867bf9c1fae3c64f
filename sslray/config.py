"""Typed, frozen, strict run configs; YAML loading with `--set a.b=c` overrides.

A run config is one pre-training run: data, backbone, method, optimiser, schedule, evaluation and
the Ray Train resources. Unknown keys are rejected with their dotted path (`method.queu_size`),
values are checked where a wrong value would waste a cluster-hour, and derived values (the
effective learning rate) are properties that the run logs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from sslray.config_types import (
    AugmentConfig,
    BackboneConfig,
    DataConfig,
    DatasetName,
    StrictModel,
)
from sslray.data.catalog import dataset_info
from sslray.methods import METHOD_CONFIGS, MethodConfig
from sslray.methods.moco import MoCoConfig
from sslray.methods.supervised import CLASSIFICATION_VIEW
from sslray.strict import ConfigError, FieldError, apply_overrides, read_yaml, set_path, validate

__all__ = [
    "AugmentConfig",
    "BackboneConfig",
    "ConfigError",
    "DataConfig",
    "DetectionConfig",
    "EvalConfig",
    "FinetuneConfig",
    "OptimConfig",
    "ResourcesConfig",
    "RunConfig",
    "TrainConfig",
    "apply_overrides",
    "builtin_configs",
    "load_config",
    "read_yaml",
    "resolve_config_path",
    "set_path",
    "validate_raw",
]

class OptimConfig(StrictModel):
    name: Literal["sgd", "lars"] = "sgd"  # MoCo v1/v2: SGD; BYOL: LARS
    lr: float = Field(default=0.03, gt=0)  # MoCo: 0.03 at batch 256 (scaled by batch/256)
    lr_scaling: Literal["linear", "none"] = "linear"  # Goyal et al. 2017 linear scaling rule
    momentum: float = Field(default=0.9, ge=0, lt=1)  # MoCo: 0.9
    weight_decay: float = Field(default=1e-4, ge=0)  # MoCo: 1e-4
    schedule: Literal["cosine", "step", "constant"] = "cosine"  # MoCo v2: cosine; v1: step
    milestones: tuple[int, ...] = (120, 160)  # MoCo v1: x0.1 at epochs 120 and 160
    warmup_epochs: float = Field(default=0.0, ge=0)  # MoCo: none; BYOL: 10
    lars_eta: float = Field(default=0.001, gt=0)  # LARS trust coefficient (BYOL: 1e-3)
    # How the update runs, the same numbers each way (sslray.training.optim): "foreach" batches
    # every parameter's update into a few torch._foreach_* kernels (torch's own default on GPUs;
    # fewer launches and Python steps), "loop" steps one parameter at a time (the reference),
    # "fused" is torch's single-kernel SGD (CPU and CUDA; LARS has none; 1 ulp from the loop).
    # Default foreach: the reference's numbers to the bit, and no slower than the loop; speeds in
    # benchmarks/results/MEASUREMENTS.md#optimizer-impl.
    impl: Literal["foreach", "loop", "fused"] = "foreach"

    @model_validator(mode="after")
    def _fused_is_sgd_only(self) -> OptimConfig:
        if self.impl == "fused" and self.name != "sgd":
            raise ValueError(f"impl: fused exists for sgd only, not {self.name} (use foreach)")
        return self


class TrainConfig(StrictModel):
    epochs: int = Field(default=200, ge=1)  # MoCo v1/v2 headline: 200 epochs
    batch_size: int = Field(default=256, ge=2)  # global batch over all workers; MoCo: 256
    # At most this many steps per epoch (None: the whole split). For rehearsals of a big config
    # on a small machine (`make rehearsal`); the LR schedule follows the steps actually taken.
    max_steps_per_epoch: int | None = Field(default=None, ge=1)
    # bf16 autocast for the networks (losses stay fp32): faster on CPUs with AVX-512 BF16 and on
    # GPUs (benchmarks/results/MEASUREMENTS.md#train-precision); "auto" picks bf16 only
    # where the hardware has it (emulated bf16 is slower than fp32).
    # Default fp32 so results match fp32 references exactly.
    precision: Literal["fp32", "bf16", "auto"] = "fp32"
    # Speed-up on this CPU: benchmarks/results/MEASUREMENTS.md#channels-last.
    channels_last: bool = True  # NHWC convolutions: faster on CPU (oneDNN), also on GPU
    # torch.compile every backbone (online and momentum copies) in place (`nn.Module.compile`, so
    # state_dict keys and checkpoints are unchanged); meant for long GPU runs (not measured here:
    # no GPU). Off by default: the first train and eval calls pay the compile (CPU needs a C++
    # compiler; cost in benchmarks/results/MEASUREMENTS.md#compile), and it gains nothing on
    # small CPU models.
    # Numbers differ from eager by float rounding (1e-7 relative on the loss; test_fast_paths.py).
    compile: bool = False


class FinetuneConfig(StrictModel):
    """`eval.finetune`: full fine-tuning of a copy of the pre-trained backbone plus a new linear
    head on a labelled in-memory dataset (metrics finetune/<dataset>/top1, top5; the run's
    encoder is never modified). Runs at the end of a run (and at init with eval.at_init) on
    rank 0, and in `sslray eval RUN_DIR --set eval.finetune.epochs=...`.

    Defaults: the supervised baseline's recipe (torchvision's reference classification recipe,
    the one `methods/supervised.py` scales down), as MoCo fine-tunes "with the same schedule as
    the supervised counterpart" (sec. 4.2; paraphrase, not transcribed in notes/peers.md).
    """

    # None: the run's own data.dataset; else another labelled in-memory dataset (e.g. digits,
    # mnist), resized to the pre-training image size as eval.transfer does
    dataset: DatasetName | None = None
    epochs: int = Field(default=90, ge=1)  # torchvision reference: 90 epochs
    batch_size: int = Field(default=256, ge=2)  # torchvision reference: 256 (8 GPUs x 32)
    lr: float = Field(default=0.1, gt=0)  # torchvision reference: 0.1 at batch 256
    lr_scaling: Literal["linear", "none"] = "linear"  # lr x batch_size / 256, as optim.lr
    momentum: float = Field(default=0.9, ge=0, lt=1)  # torchvision reference: 0.9
    # BYOL's fine-tuning uses Nesterov momentum (the summary of its appendix C; not in
    # notes/peers.md, so not the default): set true for that recipe
    nesterov: bool = False  # torchvision reference: plain momentum
    weight_decay: float = Field(default=1e-4, ge=0)  # torchvision reference: 1e-4
    schedule: Literal["cosine", "step"] = "cosine"  # chosen: cosine, as the fmnist_* runs
    milestones: tuple[float, ...] = (0.6, 0.8)  # step: x0.1 at these fractions (MoCo lincls)
    warmup_epochs: float = Field(default=0.0, ge=0)  # torchvision reference: none
    # Labelled training images fine-tuned on (a seeded subset; None: the whole training split):
    # the CPU budget knob (semi-supervised style, as BYOL's 1 % / 10 % subsets)
    train_subset: int | None = Field(default=None, ge=1)
    test_subset: int | None = Field(default=None, ge=1)  # None: the whole test split
    # Spatial augmentation only (random resized crop + flip): the supervised view
    # (methods/supervised.py CLASSIFICATION_VIEW, crop 0.5-1 chosen for 28 px images)
    augment: AugmentConfig = CLASSIFICATION_VIEW

    @model_validator(mode="after")
    def _steps(self) -> FinetuneConfig:
        if any(not 0 < m <= 1 for m in self.milestones) or list(self.milestones) != sorted(
                self.milestones):
            raise FieldError("milestones", f"fractions of training in (0, 1], increasing, got "
                             f"{list(self.milestones)}")
        if self.warmup_epochs >= self.epochs:
            raise FieldError("warmup_epochs", f"must be below epochs ({self.epochs}), got "
                             f"{self.warmup_epochs}")
        return self


DetectionDataset = Literal["fmnist_det", "voc", "coco"]  # sslray.data.detection.load_detection


class DetectionConfig(StrictModel):
    """`eval.detection`: the pre-trained backbone (a copy) as the trunk of a Faster R-CNN with FPN
    (`sslray.eval.detection.build_detector`), fine-tuned on a detection set and scored with COCO
    AP on its test split: detection/<dataset>/AP, AP50, AP75 (MoCo Tables 2-5). Runs at the end
    of a run (and at init with eval.at_init) on rank 0, and in `sslray eval RUN_DIR`.

    The solver is detectron2's (WarmupMultiStepLR: linear warm-up from lr / 1000, x0.1 steps)
    as MoCo's released configs set it (facebookresearch/moco detection/configs @ 90e244a:
    Base-RCNN-C4-BN.yaml, pascal_voc_R_50_C4_24k.yaml, coco_R_50_C4_2x.yaml).
    """

    # fmnist_det: Fashion-MNIST garments on black canvases, generated offline (the CPU default);
    # voc: train VOC07+12 trainval, test VOC07 test; coco: train2017 / val2017 (need `root`)
    dataset: DetectionDataset = "fmnist_det"
    # voc: holds VOCdevkit/; coco: holds train2017/, val2017/, annotations/; fmnist_det: the
    # Fashion-MNIST IDX files (None: the installed default)
    root: str | None = None
    # fmnist_det: canvases per split (None: 2000, load_detection's default); voc/coco: the
    # first n images of each split (None: all, the papers' protocol)
    n_train: int | None = Field(default=None, ge=1)
    n_test: int | None = Field(default=None, ge=1)
    canvas: int = Field(default=96, ge=32)  # fmnist_det canvas pixels (sslray.data.detection)
    # Short side the detector resizes images to (train and test). None: 800 for voc/coco (MoCo:
    # MIN_SIZE_TEST 800; its multi-scale training sizes 480-800 are not implemented) and the
    # canvas for fmnist_det
    image_size: int | None = Field(default=None, ge=16)
    epochs: int = Field(default=12, ge=1)  # chosen for fmnist_det; `iterations` overrides
    # Optimiser steps in all (None: epochs x batches per epoch). MoCo VOC: 24000 (24k); COCO
    # 1x: 90000, 2x: 180000 (coco_R_50_C4_2x.yaml)
    iterations: int | None = Field(default=None, ge=1)
    batch_size: int = Field(default=16, ge=1)  # MoCo: IMS_PER_BATCH 16
    lr: float = Field(default=0.02, gt=0)  # MoCo: BASE_LR 0.02 at batch 16
    momentum: float = Field(default=0.9, ge=0, lt=1)  # detectron2 SOLVER.MOMENTUM 0.9
    weight_decay: float = Field(default=1e-4, ge=0)  # detectron2 WEIGHT_DECAY 1e-4 (norm: 0)
    # lr x0.1 at these fractions of the iterations: MoCo VOC STEPS (18000, 22000) of 24000;
    # COCO 2x (120000, 160000) of 180000 = (0.667, 0.889), as detectron2's 1x (60k, 80k of 90k)
    lr_steps: tuple[float, ...] = (0.75, 0.9167)
    warmup_iters: int = Field(default=100, ge=0)  # MoCo VOC: WARMUP_ITERS 100 (COCO: 1000)
    flip_p: float = Field(default=0.5, ge=0, le=1)  # detectron2 training: RandomFlip 0.5
    # BN in the trunk and the FPN: trained (MoCo sec. 4.2, its configs' naiveSyncBN; this stage
    # runs on one device, so per-device BN) or frozen (torchvision's FrozenBatchNorm2d default)
    bn: Literal["train", "frozen"] = "train"
    trainable_layers: int | None = Field(default=None, ge=0)  # None: all (MoCo: FREEZE_AT 0)
    fpn_channels: int | None = Field(default=None, ge=8)  # None: build_detector's (256 / 64)
    representation_size: int | None = Field(default=None, ge=8)  # None: 1024 / 256

    @model_validator(mode="after")
    def _checks(self) -> DetectionConfig:
        if self.dataset in ("voc", "coco") and not self.root:
            where = {"voc": "VOCdevkit/", "coco": "train2017/, val2017/ and annotations/"}
            raise FieldError("root", f"required for dataset {self.dataset}: the folder that "
                             f"holds {where[self.dataset]} (sslray never downloads it)")
        if any(not 0 < s <= 1 for s in self.lr_steps) or list(self.lr_steps) != sorted(
                self.lr_steps):
            raise FieldError("lr_steps", f"fractions of the iterations in (0, 1], increasing, "
                             f"got {list(self.lr_steps)}")
        return self

    @property
    def test_size(self) -> int:
        """The detector's image size (short side)."""
        if self.image_size is not None:
            return self.image_size
        return self.canvas if self.dataset == "fmnist_det" else 800


class EvalConfig(StrictModel):
    knn_k: int = Field(default=200, ge=1)  # InstDisc (Wu et al. 2018) weighted kNN: k=200
    knn_temperature: float = Field(default=0.07, gt=0)  # InstDisc: tau=0.07
    # Subtract the memory's mean feature before the cosine (SimpleShot's CL2N, Wang et al. 2019;
    # the same for every row, raw pixels included). Off: InstDisc's protocol, as the papers.
    knn_center: bool = False
    # The kNN memory: `pretrain`, the labelled pre-training images (data.train_subset of the
    # training split; eval/knn_top1); `train_split`, also the whole labelled training split (the
    # standard protocol, e.g. Fashion-MNIST's 60k; eval/knn_train_split_top1, next to
    # eval/knn_top1). The probes always fit on the pre-training images.
    knn_memory: Literal["pretrain", "train_split"] = "pretrain"
    # Which layer of the trunk the frozen-feature probes read (kNN, the linear probes, transfer,
    # and a cc source's clustering at method.layer "final"), pooled over space: "final" (the
    # backbone's output), "stage-1", "stage-2", ... (a ResNet's last, penultimate, ... stage) or
    # "conv1".."convN" (an AlexNet-style tower); a Jigsaw++ `method.probe: tiles` reads it on
    # every tile. Zhang et al. 2016 and Noroozi et al. probe each conv layer, Goyal et al. 2019
    # (Scaling and Benchmarking SSL) each ResNet stage: a pretext task's last layers are the
    # most task-specific (Jigsaw: res4 above res5). The same layer is read at random init.
    # Fine-tuning and detection always take the whole trunk.
    layer: str = Field(default="final", min_length=1)
    # How the probes pool that layer's map: None, as trained ("final": the backbone's own
    # pooling, backbone.pool_grid; another layer: the global average); g: averaged over a g x g
    # grid of regions, C * g**2 features ("final" then reads the last map before the backbone's
    # pooling). Goyal et al. 2019 pool each stage's map to about 9k features (res5 over 2x2:
    # 8192-d) rather than to one vector; on these aligned 28 px garments where a part sits is
    # half the class (MEASUREMENTS.md#the-43-minute-runs). The random init is read alike.
    pool_grid: int | None = Field(default=None, ge=1, le=8)
    every_n_epochs: int = Field(default=0, ge=0)  # kNN monitor every n epochs; 0: only at the end
    at_init: bool = True  # also evaluate the random-init backbone (the baseline every table needs)
    # Also the same probes on raw pixels (normalised as the network sees them; suffix _pixels):
    # the baseline a small-image SSL result must beat (chosen: Fashion-MNIST kNN on pixels is
    # strong; benchmarks/results/MEASUREMENTS.md#eval-pixels).
    pixels: bool = False
    linear_fast: bool = True  # the fast linear probe on the same cached features
    # The fast probe (float64 L-BFGS) fits on at most this many training features, a seeded
    # random subset, and its metrics say so: eval/linear_fast_<n/1000>k_top1. None: all of them
    # (ImageNet's 1.28M x 2048 would need 21 GB in float64; the imagenet_* configs cap it).
    linear_fast_max_train: int | None = Field(default=None, ge=1)
    # MoCo's linear protocol through the frozen network at the end of the run (main_lincls.py:
    # 100 epochs, lr 30); 0 skips it (CPU configs: the fast probe is the cheap stand-in).
    linear_paper_epochs: int = Field(default=0, ge=0)
    linear_paper_lr: float = Field(default=30.0, gt=0)  # MoCo main_lincls.py: lr 30, wd 0
    batch_size: int = Field(default=512, ge=1)  # feature extraction batch
    # Transfer: the frozen encoder's kNN and fast linear probe on other labelled datasets, resized
    # to the pre-training image size (metrics transfer/<dataset>/...). Chosen: digits, bundled
    # with scikit-learn, is the offline second dataset for Fashion-MNIST runs.
    transfer: tuple[DatasetName, ...] = ()
    # Full fine-tuning / detection transfer of the pre-trained backbone (None: off; MoCo Tables
    # 2-5 and the papers' fine-tuning tables): see FinetuneConfig and DetectionConfig
    finetune: FinetuneConfig | None = None
    detection: DetectionConfig | None = None


class ResourcesConfig(StrictModel):
    workers: int = Field(default=1, ge=0)  # Ray Train workers; 0 = Ray Train local mode (no Ray)
    use_gpu: bool = False
    cpus_per_worker: float = Field(default=1.0, gt=0)
    gpus_per_worker: float = Field(default=1.0, ge=0)
    max_failures: int = Field(default=1, ge=0)  # worker-group restarts from the last checkpoint
    # How the workers' bundles are placed (Ray placement strategies); STRICT_SPREAD puts one
    # worker per node. PACK is Ray Train's default.
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    # Seconds a training collective (all_gather, all_reduce) may wait for a peer: Ray Train's
    # TorchConfig.timeout_s, default 1800 (NCCL's own 30 min). Evaluation waits are not bound by
    # it (sslray.distributed.EVAL_WAIT).
    collective_timeout_s: int = Field(default=1800, ge=1)


class RunConfig(StrictModel):
    name: str = "run"
    seed: int = 0
    data: DataConfig = DataConfig()
    backbone: BackboneConfig = BackboneConfig()
    method: MethodConfig = Field(default_factory=MoCoConfig)  # chosen: MoCo, the headline method
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    resources: ResourcesConfig = ResourcesConfig()

    @model_validator(mode="after")
    def _cross_checks(self) -> RunConfig:
        workers = max(self.resources.workers, 1)
        if self.train.batch_size % workers:
            raise ValueError(
                f"train.batch_size ({self.train.batch_size}) must be divisible by "
                f"resources.workers ({workers}): each worker takes an equal share"
            )
        for name in self.eval.transfer:
            if not dataset_info(name).transferable or name == self.data.dataset:
                raise ValueError(
                    f"eval.transfer: {name!r} cannot be a transfer dataset (use another "
                    f"labelled in-memory dataset than data.dataset, e.g. digits or mnist)"
                )
        ft = self.eval.finetune
        if ft is not None:
            name = ft.dataset or self.data.dataset
            if dataset_info(name).files:  # (the loop below is for in-memory arrays)
                key = "eval.finetune.dataset" if ft.dataset else "data.dataset"
                raise FieldError(key, f"eval.finetune: {name!r} is read from image files; "
                                 f"fine-tuning runs on in-memory datasets (e.g. fashion_mnist, "
                                 f"digits, mnist, cifar10): set eval.finetune.dataset")
        if self.eval.layer != "final":
            from sslray.models.backbones import backbone_layers  # torch: only for a layer

            layers = backbone_layers(self.backbone)
            if self.eval.layer not in layers:
                raise FieldError("eval.layer", f"{self.eval.layer!r} is not a layer of backbone "
                                 f"{self.backbone.arch}; choose one of: {', '.join(layers)}")
        elif self.eval.pool_grid is not None:
            from sslray.models.backbones import has_last_map  # torch: only for a grid

            if not has_last_map(self.backbone):
                raise FieldError("eval.pool_grid", f"backbone {self.backbone.arch} has no last "
                                 f"map to pool at layer final; name a layer (eval.layer) or "
                                 f"drop eval.pool_grid")
        self.method.check_run(self)  # the method's own checks against the run around it
        return self

    @property
    def effective_lr(self) -> float:
        """Base lr scaled by the global batch (linear rule, lr * batch / 256)."""
        if self.optim.lr_scaling == "linear":
            return self.optim.lr * self.train.batch_size / 256
        return self.optim.lr

    def derived(self) -> dict[str, Any]:
        """Derived values, logged next to the resolved config."""
        return {"effective_lr": self.effective_lr, "per_worker_batch": self.per_worker_batch}

    @property
    def per_worker_batch(self) -> int:
        return self.train.batch_size // max(self.resources.workers, 1)

    def smoke(self) -> RunConfig:
        """A shrunk copy that checks the whole path in seconds: tiny subset, 1 epoch."""
        raw = self.model_dump()
        workers = max(self.resources.workers, 1)
        batch = 16 * workers
        raw["train"].update(epochs=1, batch_size=batch)
        raw["data"].update(train_subset=min(self.data.train_subset or 256, 256))
        raw["data"].update(test_subset=min(self.data.test_subset or 128, 128), synthetic_size=256)
        raw["eval"].update(knn_k=min(self.eval.knn_k, 20), every_n_epochs=0)
        ft, det = self.eval.finetune, self.eval.detection
        if ft is not None:  # one epoch over a few batches
            raw["eval"]["finetune"].update(epochs=1, warmup_epochs=0, batch_size=min(
                ft.batch_size, 32), train_subset=min(ft.train_subset or 128, 128),
                test_subset=min(ft.test_subset or 128, 128))
        if det is not None:  # a few iterations on a few small images (voc/coco: still read)
            raw["eval"]["detection"].update(
                epochs=1, iterations=None, warmup_iters=min(det.warmup_iters, 2),
                batch_size=min(det.batch_size, 4), n_train=min(det.n_train or 8, 8),
                n_test=min(det.n_test or 8, 8), image_size=min(det.test_size, 128))
        if self.backbone.arch != "small_resnet":
            raw["backbone"].update(arch="small_resnet", width=8, blocks=(1, 1), small_stem=True)
        raw["method"] = self.method.smoke(batch).model_dump()
        return RunConfig.model_validate(raw)

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True)


def validate_raw(raw: Any, source: str = "<dict>") -> RunConfig:
    """A RunConfig from a raw mapping; ConfigError lists every problem by its dotted key."""
    return validate(RunConfig, raw, source, registries={"method.name": METHOD_CONFIGS})


BUILTIN_DIR = Path(__file__).parent / "configs"


def builtin_configs() -> dict[str, Path]:
    """Run configs shipped with the package, by name (usable as `sslray run <name>`)."""
    return {p.stem: p for p in sorted(BUILTIN_DIR.glob("*.yaml"))}


def resolve_config_path(spec: str) -> Path:
    path = Path(spec)
    if path.is_file():
        return path
    builtins = builtin_configs()
    if spec in builtins:
        return builtins[spec]
    if path.exists():
        raise ConfigError(spec, [f"{spec}: is a directory, expected a YAML file"])
    names = ", ".join(builtins)
    raise ConfigError(spec, [f"{spec}: no such file, and not a built-in config ({names})"])


def load_config(spec: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Load a run config from a YAML path or built-in name, apply overrides, validate."""
    path = resolve_config_path(str(spec))
    raw = apply_overrides(read_yaml(path), overrides or [])
    return validate_raw(raw, source=str(path))
