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
from sslray.strict import ConfigError, apply_overrides, read_yaml, set_path, validate

__all__ = [
    "AugmentConfig",
    "BackboneConfig",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
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
