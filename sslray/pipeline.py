"""Runs as stages: pre-train -> (features -> k-means -> pseudo-labels -> target) -> evaluate.

A plain method is one stage: one Ray Train run. A `cc` config (knowledge transfer by cluster
classification, Noroozi et al. CVPR 2018) is the whole pipeline in one run directory:

    <run>/source/                  1. the source model, pre-trained by any method (a Train run)
    <run>/clusters/pseudo_labels.npy   2-3. source features over the target's training split,
    <run>/clusters/clusters.json        faiss k-means: one cluster id per image, sizes, NMI/purity
    <run>/                         4-5. the target architecture trained to classify the clusters,
                                        evaluated like any run (kNN, linear, transfer)

Each stage leaves its artifacts on the run's storage, and a re-run skips every stage whose
artifacts exist, so a killed pipeline resumes where it stopped. `source` may also name a finished
run directory: its checkpoint is used as is (the paper's "cluster ImageNet features, train on
Places" split of data is a `data` difference between source and target configs).
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sslray.config import (
    ConfigError,
    RunConfig,
    read_yaml,
    resolve_config_path,
    set_path,
    validate_raw,
)
from sslray.data.catalog import dataset_info, image_spec, train_split_size
from sslray.methods.cluster_transfer import ClusterTransferConfig, check_pseudo_labels
from sslray.storage import Location, location
from sslray.training.checkpoint import load_trained_state

PSEUDO_LABELS = "pseudo_labels.npy"
CLUSTERS_JSON = "clusters.json"


def write_config(cfg: RunConfig, loc: Location) -> None:
    loc.write_text(json.dumps({"config": json.loads(cfg.to_json()), "derived": cfg.derived()},
                              indent=2, sort_keys=True), "config.json")


def is_pipeline(cfg: RunConfig) -> bool:
    """Whether `cfg` runs the knowledge-transfer pipeline (source -> k-means -> target)."""
    return isinstance(cfg.method, ClusterTransferConfig)


def _cc(cfg: RunConfig) -> ClusterTransferConfig:
    assert isinstance(cfg.method, ClusterTransferConfig), cfg.method.name
    return cfg.method


def run_any(cfg: RunConfig, loc: Location, *, callbacks: Sequence[Any] = (),
            verbose: bool = True) -> dict[str, float]:
    """Run `cfg` into `loc`: one Train run, or the knowledge-transfer pipeline for `cc`."""
    from sslray.training.worker import run_training

    if not is_pipeline(cfg):
        write_config(cfg, loc)  # every run directory holds its resolved config
        return run_training(cfg, loc, callbacks=callbacks, verbose=verbose)
    return run_cluster_transfer(cfg, loc, callbacks=callbacks, verbose=verbose)


# -- stage 1: the source model ------------------------------------------------------------------

def source_config(cfg: RunConfig) -> RunConfig:
    """The source run's config: `method.source` (+ `source_set`), with the target's seed and
    resources (one pipeline = one allocation), shrunk when the target is a smoke run."""
    m = _cc(cfg)
    if finished_run(m.source) is not None:  # a finished run: its own config, used as it was
        done = location(m.source)
        raw = json.loads(done.read_text("config.json"))["config"]
        return validate_raw(raw, source=str(done.uri))
    try:
        path = resolve_config_path(m.source)
    except ConfigError as exc:
        raise ConfigError("method.source", [f"method.source: {p}" for p in exc.problems]) from None
    raw = read_yaml(path)
    for key, value in m.source_set.items():
        set_path(raw, key, copy.deepcopy(value), source="method.source_set")
    raw.update(seed=cfg.seed, name=f"{cfg.name}-source",
               resources=cfg.resources.model_dump(mode="json"))
    src = validate_raw(raw, source=f"method.source ({path})")
    if is_pipeline(src):
        raise ConfigError("method.source", [f"method.source: {m.source} is itself a cc "
                                            f"pipeline; name a pre-training config"])
    return src.smoke() if m.source_smoke else src
def finished_run(source: str) -> Location | None:
    """A finished run directory named by `method.source` (config.json + a checkpoint)."""
    path = Path(source)
    if path.is_dir() and (path / "config.json").is_file():
        return location(path)
    return None


def run_source(cfg: RunConfig, loc: Location, verbose: bool) -> tuple[RunConfig, Location]:
    from sslray.training.worker import run_training

    m = _cc(cfg)
    done = finished_run(m.source)
    if done is not None:
        return source_config(cfg), done
    src_cfg, src_loc = source_config(cfg), loc.child("source")
    if src_loc.exists("result.json"):
        print(f"[pipeline] source: {src_loc.uri} finished earlier, reused", flush=True)
        return src_cfg, src_loc
    print(f"[pipeline] 1/3 source: {src_cfg.method.name} on {src_cfg.data.dataset} "
          f"({src_cfg.train.epochs} epochs) -> {src_loc.uri}", flush=True)
    write_config(src_cfg, src_loc)
    run_training(src_cfg, src_loc, verbose=verbose)
    return src_cfg, src_loc


# -- stages 2-3: features and k-means ---------------------------------------------------------

@dataclass(frozen=True)
class Clusters:
    """The clustering stage's output: one cluster id per training sample, and its summary."""

    labels: np.ndarray  # (N,) int64, row i labels sample i of the target's training split
    stats: dict[str, Any]  # clusters.json: k, sizes, objective, NMI/purity, source, cost

    def save(self, out: Location) -> None:
        out.save_npy(self.labels.astype(np.int64), PSEUDO_LABELS)
        out.write_text(json.dumps(self.stats, indent=2, sort_keys=True), CLUSTERS_JSON)  # last

    @classmethod
    def load(cls, out: Location, k: int) -> Clusters:
        """The stage's files (clusters.json is written last: its presence means both are)."""
        where = out.child(PSEUDO_LABELS).uri
        labels = check_pseudo_labels(out.load_npy(PSEUDO_LABELS), None, k, where)
        return cls(labels, dict(json.loads(out.read_text(CLUSTERS_JSON))))

    def report(self) -> dict[str, float]:
        """Constants for every report of the target run: cluster/nmi, cluster/purity against
        the true labels, cluster/k, the stage's cost, and the source run's final metrics."""
        keys = ("nmi", "purity", "k", "wall_s", "device_hours")
        out = {f"cluster/{k}": float(self.stats[k]) for k in keys if k in self.stats}
        out.update({f"source/{k}": float(v)
                    for k, v in self.stats.get("source_metrics", {}).items()})
        return out


def cluster_stage(cfg: RunConfig, src: RunConfig, src_uri: str) -> Clusters:
    """Source features over the target's training split -> k-means -> pseudo-labels."""
    from sslray.data.datasets import load_arrays, load_image_folder
    from sslray.eval.features import extract_features, extract_folder_features
    from sslray.eval.kmeans import kmeans, nmi, purity
    from sslray.methods import MethodContext, as_module, build_method, probe_encoder
    from sslray.methods.protocol import tapped

    m = _cc(cfg)
    start = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    state = load_trained_state(location(src_uri), src.method.name)
    ctx = MethodContext.of(src, num_samples=train_split_size(src.data), for_training=False)
    method = build_method(src.method, ctx)
    as_module(method).load_state_dict(state["model"])
    # "final": the features the source's own probes read (its eval.layer and eval.pool_grid;
    # Jigsaw++ `method.probe: tiles`: on its tile grid); another layer: that layer of the trunk,
    # pooled
    encoder = (probe_encoder(method, src.eval.layer, src.eval.pool_grid) if m.layer == "final"
               else tapped(method.feature_encoder(), m.layer)).to(device)
    # The TARGET's training split; pseudo-label i belongs to sample i, the index the training
    # stream hands the target (ArrayStream rows, FileStream's ImageFolder sample index).
    spec, bs = image_spec(cfg.data), cfg.eval.batch_size
    if dataset_info(cfg.data.dataset).files:
        folder = load_image_folder(cfg.data, "train")
        feats, true = extract_folder_features(encoder, folder, spec, bs, device,
                                              cfg.data.loader_workers)
    else:
        data = load_arrays(cfg.data, "train")
        feats, true = extract_features(encoder, data, spec, bs, device), data.labels
    result = kmeans(feats.numpy(), m.k, seed=cfg.seed, iters=m.kmeans_iters, pca_dim=m.pca_dim)
    labels = true.numpy()
    stats: dict[str, Any] = {
        "k": m.k, "layer": m.layer, "n": len(labels), "seed": cfg.seed,
        "objective": float(result.objective), "empty_clusters": int(result.empty_clusters),
        "sizes": [int(s) for s in result.sizes],
        "source": src_uri, "source_method": src.method.name,
        "source_metrics": _final_metrics(location(src_uri)),
        "seconds": time.perf_counter() - start,
    }
    res = cfg.resources  # the task holds one worker's devices
    per = res.gpus_per_worker if device.type == "cuda" else res.cpus_per_worker
    stats.update(wall_s=stats["seconds"], device_hours=stats["seconds"] * per / 3600)
    if (labels >= 0).all():
        stats.update(nmi=nmi(result.labels, labels), purity=purity(result.labels, labels))
    return Clusters(np.asarray(result.labels, dtype=np.int64), stats)


def _final_metrics(run: Location) -> dict[str, float]:
    """The source run's final eval metrics (its result.json's last line), for the cc reports."""
    if not run.exists("result.json"):
        return {}
    last = json.loads(run.read_text("result.json").strip().splitlines()[-1])
    keep = ("eval/", "transfer/", "train/")
    return {k: float(v) for k, v in last.items()
            if k.startswith(keep) or k in ("device_hours", "wall_s")}


def run_clusters(cfg: RunConfig, src_cfg: RunConfig, src_loc: Location,
                 loc: Location) -> Clusters:
    out = loc.child("clusters")
    m = _cc(cfg)
    if out.exists(CLUSTERS_JSON):
        print(f"[pipeline] clusters: {out.uri} computed earlier, reused", flush=True)
        return Clusters.load(out, m.k)
    print(f"[pipeline] 2/3 k-means: {m.layer} features of the source over {cfg.data.dataset}, "
          f"k={m.k}", flush=True)
    import ray

    if cfg.resources.workers > 0 and ray.is_initialized():
        # On the cluster, where a worker would run: one worker's CPUs (+ GPU for faiss).
        res = cfg.resources
        # "DEFAULT": outside the Tune trial's placement group (a 0.01-CPU driver sliver).
        task = ray.remote(cluster_stage).options(
            num_cpus=res.cpus_per_worker, num_gpus=res.gpus_per_worker if res.use_gpu else 0,
            scheduling_strategy="DEFAULT")
        clusters: Clusters = ray.get(task.remote(cfg, src_cfg, src_loc.uri))
    else:
        clusters = cluster_stage(cfg, src_cfg, src_loc.uri)
    clusters.save(out)  # the driver writes: one writer for the stage's files
    stats = clusters.stats
    shown = ", ".join(f"{k} {stats[k]:.3f}" for k in ("nmi", "purity") if k in stats)
    print(f"[pipeline] k-means done in {stats['seconds']:.0f} s" + (f": {shown}" if shown else ""),
          flush=True)
    return clusters


# -- stages 4-5: the target ----------------------------------------------------------------------

def run_cluster_transfer(cfg: RunConfig, loc: Location, *, callbacks: Sequence[Any] = (),
                         verbose: bool = True) -> dict[str, float]:
    from sslray.training.loop import StageInputs
    from sslray.training.worker import run_training

    src_cfg, src_loc = run_source(cfg, loc, verbose)
    clusters = run_clusters(cfg, src_cfg, src_loc, loc)
    m = _cc(cfg)
    print(f"[pipeline] 3/3 target: {cfg.backbone.arch} classifies {m.k} clusters "
          f"({cfg.train.epochs} epochs)", flush=True)
    write_config(cfg, loc)  # the user's config, as given: the stage inputs travel beside it
    inputs = StageInputs(pseudo_labels=clusters.labels, report=clusters.report())
    return run_training(cfg, loc, callbacks=callbacks, verbose=verbose, inputs=inputs)
