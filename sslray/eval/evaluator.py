"""Frozen-feature evaluation of a run's encoder: kNN, the linear probes, transfer datasets.

Used at the start and end of a training run (`sslray.training.loop.fit`) and by `sslray eval`
on a finished run directory.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sslray.config import RunConfig
from sslray.config_types import DataConfig
from sslray.data.catalog import dataset_info, image_spec, transfer_spec
from sslray.data.datasets import load_arrays, load_image_folder
from sslray.eval.features import extract_features, extract_folder_features
from sslray.eval.knn import knn_top1
from sslray.eval.linear import linear_probe_fast, linear_probe_paper, linear_probe_paper_folder


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

    def features(self, encoder: nn.Module, data: Any) -> tuple[torch.Tensor, torch.Tensor]:
        bs = self.cfg.eval.batch_size
        if self.files:
            return extract_folder_features(encoder, data, self.spec, bs, self.device,
                                           self.cfg.data.loader_workers)
        feats = extract_features(encoder, data, self.spec, bs, self.device)
        return feats, data.labels

    def linear_paper(self, encoder: nn.Module) -> dict[str, float]:
        """MoCo's linear protocol through the frozen encoder (in-memory arrays or image folders)."""
        train, test = self.splits
        e = self.cfg.eval
        args = (encoder, train, test, self.spec)
        kw: dict[str, Any] = dict(epochs=e.linear_paper_epochs, lr=e.linear_paper_lr,
                                  device=self.device, seed=self.cfg.seed)
        if self.files:
            out = linear_probe_paper_folder(*args, num_workers=self.cfg.data.loader_workers, **kw)
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
            temperature=e.knn_temperature, num_classes=num_classes)}
        if e.linear_fast:
            probe = linear_probe_fast(train_x, train_y, test_x, test_y, num_classes)
            out.update({f"{prefix}linear_fast_{k}{suffix}": v for k, v in probe.items()})
        return out

    def __call__(self, encoder: nn.Module, suffix: str = "") -> dict[str, float]:
        (train_x, train_y), (test_x, test_y) = (self.features(encoder, s) for s in self.splits)
        return self._protocols((train_x, train_y, test_x, test_y), self.num_classes,
                               "eval/", suffix)

    def _transfer_splits(self, name: Any) -> tuple[Any, Any]:
        """A transfer dataset's (train, test) arrays, loaded once per run (init and end reuse)."""
        if name not in self._transfer_cache:
            data_cfg = DataConfig(dataset=name, image_size=self.spec.size)
            self._transfer_cache[name] = (load_arrays(data_cfg, "train", labeled=True),
                                          load_arrays(data_cfg, "test"))
        return self._transfer_cache[name]

    def transfer(self, encoder: nn.Module, suffix: str = "") -> dict[str, float]:
        """The frozen encoder on each `eval.transfer` dataset: transfer/<name>/knn_top1, ...

        Images are resized to the pre-training size and normalised with their own statistics.
        """
        out: dict[str, float] = {}
        bs = self.cfg.eval.batch_size
        for name in self.cfg.eval.transfer:
            spec = transfer_spec(name, self.spec.size)
            train, test = self._transfer_splits(name)
            train_x = extract_features(encoder, train, spec, bs, self.device)
            test_x = extract_features(encoder, test, spec, bs, self.device)
            out.update(self._protocols((train_x, train.labels, test_x, test.labels),
                                       train.num_classes, f"transfer/{name}/", suffix))
        return out
