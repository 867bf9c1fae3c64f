"""Evaluation of a run's encoder: kNN, the linear probes, transfer datasets (frozen features),
and the fine-tuning stages (`eval.finetune`, `eval.detection`: copies of the encoder trained).

Used at the start and end of a training run (`sslray.training.loop.fit`) and by `sslray eval`
on a finished run directory.

In a run of several workers every rank builds the Evaluator and extracts the features of its own
contiguous share of each split (`distributed.shard`); rank 0 gathers them (in sample order) and
alone runs kNN and the probes, so feature extraction, the bulk of the work at ImageNet scale,
scales with the workers. Only rank 0 gets metrics (the others get {}); `fit()` then has every
rank wait in `distributed.wait_for_evaluation`, whose gloo group has its own long timeout, so
no rank sits in a training collective (NCCL's 30-minute timeout) while rank 0 evaluates.
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch
from torch import nn

from sslray import distributed as dist
from sslray.config import RunConfig
from sslray.config_types import DataConfig
from sslray.data.catalog import ImageSpec, dataset_info, image_spec, transfer_spec
from sslray.data.datasets import load_arrays, load_image_folder
from sslray.eval.features import extract_features, extract_folder_features
from sslray.eval.knn import knn_top1
from sslray.eval.linear import linear_probe_fast, linear_probe_paper, linear_probe_paper_folder

# Fault injection for tests: rank 0 sleeps this many seconds in each kNN/probe evaluation (a slow
# evaluation, e.g. ImageNet's 1.28M-image kNN, without the images).
SLOW_EVAL_ENV = "SSLRAY_FAULT_SLOW_EVAL_S"


class Evaluator:
    """Frozen-feature evaluation: weighted kNN top-1 and the fast linear probe (top-1, top-5).

    The training split (a labelled one) is the kNN memory and the probe's training set; the test
    split is queried. Features are extracted once per evaluation and shared by both protocols.
    """

    def __init__(self, cfg: RunConfig, device: torch.device, train: Any = None) -> None:
        """`train`: the already-loaded pre-training arrays, reused when they are labelled."""
        self.cfg, self.device = cfg, device
        self.spec = image_spec(cfg.data)
        self._transfer_cache: dict[str, tuple[Any, Any]] = {}
        self._finetune_cache: tuple[Any, Any, ImageSpec] | None = None
        self._detection_cache: tuple[Any, Any] | None = None
        info = dataset_info(cfg.data.dataset)
        self.files = info.files
        if self.files:
            self.splits: tuple[Any, Any] = (load_image_folder(cfg.data, "train"),
                                            load_image_folder(cfg.data, "test"))
            self.num_classes = len(self.splits[0].classes)
        else:
            if train is None or not info.pretrain_labeled:  # STL-10 pre-trains on unlabelled
                train = load_arrays(cfg.data, "train", labeled=True)
            self.splits = (train, load_arrays(cfg.data, "test"))
            self.num_classes = train.num_classes
        # eval.knn_memory: train_split: the whole labelled training split as a second kNN memory
        # (image folders: the train folder already is the whole split)
        self.memory: Any = None
        if cfg.eval.knn_memory == "train_split":
            self.memory = self.splits[0] if self.files else load_arrays(
                cfg.data.model_copy(update={"train_subset": None}), "train", labeled=True)

    def features(self, encoder: nn.Module, data: Any,
                 spec: ImageSpec | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(features, labels) of every sample of `data` on rank 0 (None on the others), each
        rank extracting its own share."""
        bs, spec = self.cfg.eval.batch_size, spec or self.spec
        mine = dist.shard(len(data))
        if self.files:
            feats, labels = extract_folder_features(encoder, data, spec, bs, self.device,
                                                    self.cfg.data.loader_workers, indices=mine)
        else:
            part = data.slice(mine.start, mine.stop)
            feats, labels = extract_features(encoder, part, spec, bs, self.device), part.labels
        all_feats, all_labels = dist.gather_to_rank0(feats), dist.gather_to_rank0(labels)
        return None if all_feats is None or all_labels is None else (all_feats, all_labels)

    def linear_paper(self, encoder: nn.Module) -> dict[str, float]:
        """MoCo's linear protocol through the frozen encoder (in-memory arrays or image folders).
        Rank 0 alone trains it (the others return {} and wait in fit())."""
        if dist.rank() != 0:
            return {}
        train, test = self.splits
        e = self.cfg.eval
        args = (encoder, train, test, self.spec)
        kw: dict[str, Any] = dict(epochs=e.linear_paper_epochs, lr=e.linear_paper_lr,
                                  device=self.device, seed=self.cfg.seed)
        with dist.node_threads():
            if self.files:
                out = linear_probe_paper_folder(*args, num_workers=self.cfg.data.loader_workers,
                                                **kw)
            else:
                out = linear_probe_paper(*args, **kw)
        return {f"eval/linear_paper_{k}": v for k, v in out.items()}

    def _protocols(self, feats: tuple[Any, ...], num_classes: int, prefix: str,
                   suffix: str) -> dict[str, float]:
        """kNN (+ the fast linear probe) on cached (train_x, train_y, test_x, test_y)."""
        e = self.cfg.eval
        train_x, train_y, test_x, test_y = feats
        out = {f"{prefix}knn_top1{suffix}": knn_top1(
            train_x, train_y, test_x, test_y, k=min(e.knn_k, len(train_y)),
            temperature=e.knn_temperature, num_classes=num_classes, center=e.knn_center)}
        if e.linear_fast:
            name, cap = "linear_fast", e.linear_fast_max_train
            if cap is not None and len(train_y) > cap:  # the metric names the subset
                pick = torch.randperm(len(train_y),
                                      generator=torch.Generator().manual_seed(self.cfg.seed))[:cap]
                train_x, train_y = train_x[pick], train_y[pick]
                name = f"linear_fast_{cap / 1000:g}k" if cap >= 1000 else f"linear_fast_{cap}"
            probe = linear_probe_fast(train_x, train_y, test_x, test_y, num_classes,
                                      device=self.device)
            out.update({f"{prefix}{name}_{k}{suffix}": v for k, v in probe.items()})
        return out

    def __call__(self, encoder: nn.Module, suffix: str = "") -> dict[str, float]:
        train, test = (self.features(encoder, s) for s in self.splits)
        memory = None if self.memory is None else (
            train if self.memory is self.splits[0] else self.features(encoder, self.memory))
        if train is None or test is None:
            return {}  # not rank 0
        time.sleep(float(os.environ.get(SLOW_EVAL_ENV) or 0))
        with dist.node_threads():  # the other ranks wait: rank 0 takes their threads
            out = self._protocols((*train, *test), self.num_classes, "eval/", suffix)
            if memory is not None:
                e = self.cfg.eval
                out[f"eval/knn_train_split_top1{suffix}"] = knn_top1(
                    *memory, *test, k=min(e.knn_k, len(memory[1])),
                    temperature=e.knn_temperature, num_classes=self.num_classes,
                    center=e.knn_center)
        return out

    def pixels(self) -> dict[str, float]:
        """The same probes (and transfer) on the raw pixels as the network sees them, flattened
        to (N, 3*H*W): the baseline a small-image result must beat (suffix _pixels)."""
        return {**self(nn.Flatten(), suffix="_pixels"),
                **self.transfer(nn.Flatten(), suffix="_pixels")}

    def _transfer_splits(self, name: Any) -> tuple[Any, Any]:
        """A transfer dataset's (train, test) arrays, loaded once per run (init and end reuse)."""
        if name not in self._transfer_cache:
            data_cfg = DataConfig(dataset=name, image_size=self.spec.size)
            self._transfer_cache[name] = (load_arrays(data_cfg, "train", labeled=True),
                                          load_arrays(data_cfg, "test"))
        return self._transfer_cache[name]

    def _finetune_splits(self) -> tuple[Any, Any, ImageSpec]:
        """eval.finetune's (train, test, spec): the run's dataset (its images as the run sees
        them) or another one resized to the pre-training size; loaded once per run."""
        ft = self.cfg.eval.finetune
        assert ft is not None
        if self._finetune_cache is None:
            if ft.dataset is None or ft.dataset == self.cfg.data.dataset:
                data_cfg, spec = self.cfg.data, self.spec
            else:
                data_cfg = DataConfig(dataset=ft.dataset, image_size=self.spec.size)
                spec = transfer_spec(ft.dataset, self.spec.size)
            data_cfg = data_cfg.model_copy(update={"train_subset": ft.train_subset,
                                                   "test_subset": ft.test_subset})
            self._finetune_cache = (load_arrays(data_cfg, "train", labeled=True),
                                    load_arrays(data_cfg, "test"), spec)
        return self._finetune_cache

    def finetune(self, encoder: nn.Module, suffix: str = "") -> dict[str, float]:
        """eval.finetune: a copy of the encoder + a new head, all fine-tuned (rank 0 alone; the
        others return {} and wait in fit()): finetune/<dataset>/top1, top5."""
        ft = self.cfg.eval.finetune
        if ft is None or dist.rank() != 0:
            return {}
        from sslray.eval.finetune import finetune

        train, test, spec = self._finetune_splits()
        with dist.node_threads():
            out = finetune(encoder, train, test, spec, ft, device=self.device, seed=self.cfg.seed)
        name = ft.dataset or self.cfg.data.dataset
        return {f"finetune/{name}/{k}{suffix}": v for k, v in out.items()}

    def detection(self, encoder: nn.Module, suffix: str = "") -> dict[str, float]:
        """eval.detection: a Faster R-CNN over a copy of the encoder, fine-tuned and scored by
        COCO AP (rank 0 alone, as linear_paper): detection/<dataset>/AP, AP50, AP75."""
        det = self.cfg.eval.detection
        if det is None or dist.rank() != 0:
            return {}
        from sslray.eval.detection_transfer import detection_transfer, load_splits

        if self._detection_cache is None:
            self._detection_cache = load_splits(det)
        with dist.node_threads():
            out = detection_transfer(
                encoder, det, self._detection_cache, pretrain_dataset=self.cfg.data.dataset,
                device=self.device, seed=self.cfg.seed,
                workers=0 if det.dataset == "fmnist_det" else self.cfg.data.loader_workers,
                log=lambda line: print(f"{line}{' (random init)' if suffix else ''}",
                                       flush=True))
        return {f"detection/{det.dataset}/{k}{suffix}": v for k, v in out.items()}

    def transfer(self, encoder: nn.Module, suffix: str = "") -> dict[str, float]:
        """The frozen encoder on each `eval.transfer` dataset: transfer/<name>/knn_top1, ...

        Images are resized to the pre-training size and normalised with their own statistics.
        """
        out: dict[str, float] = {}
        for name in self.cfg.eval.transfer:
            spec = transfer_spec(name, self.spec.size)
            splits = self._transfer_splits(name)
            train, test = (self.features(encoder, s, spec) for s in splits)
            if train is not None and test is not None:
                with dist.node_threads():
                    out.update(self._protocols((*train, *test), splits[0].num_classes,
                                               f"transfer/{name}/", suffix))
        return out
