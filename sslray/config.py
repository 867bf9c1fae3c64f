"""Typed, frozen, strict run configs; YAML loading with `--set a.b=c` overrides.

A run config is one pre-training run: data, backbone, method, optimiser, schedule, evaluation and
the Ray Train resources. Unknown keys are rejected with their dotted path (`method.queu_size`),
values are checked where a wrong value would waste a cluster-hour, and derived values (the
effective learning rate) are properties that the run logs.
"""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from sslray.config_types import (
    AugmentConfig,
    BackboneConfig,
    DataConfig,
    DatasetName,
    StrictModel,
)
from sslray.methods import METHOD_CONFIGS, MethodConfig

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
    "resolve_config_path",
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
    # Measured on this CPU, ResNet-18, 1 thread: SGD loop 16 ms, foreach 16 ms, fused 6.5 ms per
    # step; LARS loop 33 ms, foreach 29 ms. Default foreach: the reference's numbers to the bit.
    impl: Literal["foreach", "loop", "fused"] = "foreach"

    @model_validator(mode="after")
    def _fused_is_sgd_only(self) -> OptimConfig:
        if self.impl == "fused" and self.name != "sgd":
            raise ValueError(f"impl: fused exists for sgd only, not {self.name} (use foreach)")
        return self


class TrainConfig(StrictModel):
    epochs: int = Field(default=200, ge=1)  # MoCo v1/v2 headline: 200 epochs
    batch_size: int = Field(default=256, ge=2)  # global batch over all workers; MoCo: 256
    # bf16 autocast for the networks (losses stay fp32): 2x on CPUs with AVX-512 BF16 and on
    # GPUs; "auto" picks bf16 only where the hardware has it (emulated bf16 is slower than fp32).
    # Default fp32 so results match fp32 references exactly.
    precision: Literal["fp32", "bf16", "auto"] = "fp32"
    channels_last: bool = True  # NHWC convolutions: 1.4x on this CPU (oneDNN), also faster on GPU
    # torch.compile every backbone (online and momentum copies) in place (`nn.Module.compile`, so
    # state_dict keys and checkpoints are unchanged); meant for long GPU runs (not measured here:
    # no GPU). Off by default: the first train and eval calls pay the compile (18 s for a tiny
    # MoCo on this 2-core CPU; CPU needs a C++ compiler), and it gains nothing on small CPU models.
    # Numbers differ from eager by float rounding (1e-7 relative on the loss; test_fast_paths.py).
    compile: bool = False


class EvalConfig(StrictModel):
    knn_k: int = Field(default=200, ge=1)  # InstDisc (Wu et al. 2018) weighted kNN: k=200
    knn_temperature: float = Field(default=0.07, gt=0)  # InstDisc: tau=0.07
    every_n_epochs: int = Field(default=0, ge=0)  # kNN monitor every n epochs; 0: only at the end
    at_init: bool = True  # also evaluate the random-init backbone (the baseline every table needs)
    # Also the same probes on raw pixels (normalised as the network sees them; suffix _pixels):
    # the baseline a small-image SSL result must beat (chosen: Fashion-MNIST kNN on pixels is
    # strong, 0.78 on the 10k subset).
    pixels: bool = False
    linear_fast: bool = True  # the fast linear probe on the same cached features
    # MoCo's linear protocol through the frozen network at the end of the run (main_lincls.py:
    # 100 epochs, lr 30); 0 skips it (CPU configs: the fast probe is the cheap stand-in).
    linear_paper_epochs: int = Field(default=0, ge=0)
    linear_paper_lr: float = Field(default=30.0, gt=0)  # MoCo main_lincls.py: lr 30, wd 0
    batch_size: int = Field(default=512, ge=1)  # feature extraction batch
    # Transfer: the frozen encoder's kNN and fast linear probe on other labelled datasets, resized
    # to the pre-training image size (metrics transfer/<dataset>/...). Chosen: digits, bundled
    # with scikit-learn, is the offline second dataset for Fashion-MNIST runs.
    transfer: tuple[DatasetName, ...] = ()


# Training-split sizes of the in-memory datasets (the official splits; digits: sslray's
# stratified 80 % of scikit-learn's 1,797). Image folders and STL-10 are counted when loaded.
TRAIN_SPLIT_SIZES = {"fashion_mnist": 60_000, "mnist": 60_000, "cifar10": 50_000,
                     "cifar100": 50_000, "digits": 1_437}


def train_split_size(data: DataConfig) -> int | None:
    """Images in the training split a run uses, when known without loading it."""
    n = data.synthetic_size if data.dataset == "synthetic" else TRAIN_SPLIT_SIZES.get(data.dataset)
    if n is not None and data.train_subset is not None:
        n = min(n, data.train_subset)
    return n


class ResourcesConfig(StrictModel):
    workers: int = Field(default=1, ge=0)  # Ray Train workers; 0 = Ray Train local mode (no Ray)
    use_gpu: bool = False
    cpus_per_worker: float = Field(default=1.0, gt=0)
    gpus_per_worker: float = Field(default=1.0, ge=0)
    max_failures: int = Field(default=1, ge=0)  # worker-group restarts from the last checkpoint
    # How the workers' bundles are placed (Ray placement strategies); STRICT_SPREAD puts one
    # worker per node. PACK is Ray Train's default.
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"


class RunConfig(StrictModel):
    name: str = "run"
    seed: int = 0
    data: DataConfig = DataConfig()
    backbone: BackboneConfig = BackboneConfig()
    method: MethodConfig = Field(default_factory=lambda: METHOD_CONFIGS["moco"]())
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
            if name in ("imagefolder", "synthetic") or name == self.data.dataset:
                raise ValueError(
                    f"eval.transfer: {name!r} cannot be a transfer dataset (use another "
                    f"labelled in-memory dataset than data.dataset, e.g. digits or mnist)"
                )
        k, n = getattr(self.method, "k", None), train_split_size(self.data)
        if k is not None and n is not None and k > n:
            raise ValueError(
                f"method.k ({k} clusters) is more than the {n} training images k-means would "
                f"cluster; lower method.k or raise data.train_subset"
            )
        queue = getattr(self.method, "queue_size", None)
        dictionary = getattr(self.method, "dictionary", "queue")
        if queue is not None and dictionary == "queue" and queue % self.train.batch_size:
            raise ValueError(
                f"method.queue_size ({queue}) must be a multiple of train.batch_size "
                f"({self.train.batch_size}) so the queue holds whole batches (MoCo asserts this)"
            )
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
        if "queue_size" in raw["method"]:
            raw["method"]["queue_size"] = batch * 4
        if "source" in raw["method"]:  # cc: the source run is shrunk too, and k fits 256 images
            raw["method"].update(source_smoke=True, k=min(raw["method"]["k"], 16))
        if "bn_splits" in raw["method"]:
            raw["method"]["bn_splits"] = min(raw["method"]["bn_splits"], 2)
        return RunConfig.model_validate(raw)

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True)


class ConfigError(ValueError):
    """A config that cannot be used; `problems` lists 'dotted.path: what is wrong' lines."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid config {source}:\n{lines}")


def _model_at(path: tuple[Any, ...], raw: dict[str, Any]) -> type[StrictModel] | None:
    """The config class found at a dotted path (for 'did you mean' hints)."""
    model: type[StrictModel] | None = RunConfig
    node: Any = raw
    for part in path:
        if model is None:
            return None
        if part == "method" and model is RunConfig:
            name = node.get("method", {}).get("name", "moco") if isinstance(node, dict) else "moco"
            model = METHOD_CONFIGS.get(name)
            node = node.get("method", {}) if isinstance(node, dict) else {}
            continue
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None) if field else None
        model = ann if isinstance(ann, type) and issubclass(ann, StrictModel) else None
        node = node.get(part, {}) if isinstance(node, dict) else {}
    return model


def format_validation_error(err: ValidationError, raw: dict[str, Any]) -> list[str]:
    problems = []
    for e in err.errors():
        loc = list(e["loc"])
        # A discriminated union adds the tag to the location: method.moco.x -> method.x
        if len(loc) >= 2 and loc[0] == "method" and loc[1] in METHOD_CONFIGS:
            loc.pop(1)
        path = ".".join(str(p) for p in loc) or "(top level)"
        if e["type"] == "extra_forbidden":
            parent = _model_at(tuple(loc[:-1]), raw)
            hint = ""
            if parent is not None:
                close = difflib.get_close_matches(str(loc[-1]), list(parent.model_fields), n=1)
                known = ", ".join(sorted(parent.model_fields))
                hint = f" (did you mean '{close[0]}'?)" if close else f" (known keys: {known})"
            problems.append(f"{path}: unknown key{hint}")
        elif e["type"] == "union_tag_invalid" or (
            path == "method.name" and e["type"] == "literal_error"
        ):
            known = ", ".join(sorted(METHOD_CONFIGS))
            section = raw.get("method")
            name = section.get("name") if isinstance(section, dict) else None
            problems.append(f"method.name: unknown method {name!r} (registered: {known})")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            value = e.get("input")
            shown = "" if isinstance(value, dict) else f" (got {value!r})"
            problems.append(f"{path}: {msg}{shown}")
    return problems


class _Loader(yaml.SafeLoader):
    """yaml.SafeLoader that reads `1e-3` as a float (PyYAML's YAML 1.1 rules need `1.0e-3`)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def yaml_load(stream: Any) -> Any:
    """Safe YAML with floats as users write them (`1e-3`); no Python object construction."""
    return yaml.load(stream, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


def set_path(raw: dict[str, Any], key: str, value: Any, source: str = "--set") -> None:
    """Set `raw[a][b][c] = value` for key `a.b.c`, creating sections; in place."""
    node = raw
    parts = key.strip().split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            raise ConfigError(source, [f"{key}: '{where}' is a value, not a section"])
        node = child
    node[parts[-1]] = value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b=c` overrides to a raw config dict (values parsed as YAML: 3, 0.1, [1, 2])."""
    out = json.loads(json.dumps(raw))  # deep copy; the input is never mutated
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError("--set", [f"'{item}': expected key=value, e.g. train.epochs=10"])
        try:
            value = yaml_load(text) if text.strip() else ""
        except yaml.YAMLError as exc:
            problem = f"{key}: value {text!r} is not valid YAML ({exc})"
            raise ConfigError("--set", [problem]) from exc
        set_path(out, key, value)
    return out


def validate_raw(raw: dict[str, Any], source: str = "<dict>") -> RunConfig:
    if not isinstance(raw, dict):
        raise ConfigError(source, [f"(top level): expected a mapping, got {type(raw).__name__}"])
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(source, format_validation_error(err, raw)) from None


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


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        with open(path) as f:
            raw = yaml_load(f)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(str(path), [f"malformed YAML{where}: {exc}"]) from None
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read: {exc.strerror}"]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(str(path), [f"(top level): expected a mapping, got {type(raw).__name__}"])
    return raw


def load_config(spec: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Load a run config from a YAML path or built-in name, apply overrides, validate."""
    path = resolve_config_path(str(spec))
    raw = apply_overrides(read_yaml(path), overrides or [])
    return validate_raw(raw, source=str(path))
