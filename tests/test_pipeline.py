"""The knowledge-transfer pipeline end to end: source -> k-means -> a different target."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from sslray.config import ConfigError
from sslray.pipeline import run_any, source_config
from sslray.storage import location
from tests.conftest import tiny_config, tiny_raw, trained_method

pytestmark = pytest.mark.timeout(300)


def cc_config(tmp_path: Path, **method: Any) -> Any:
    src = tmp_path / "source.yaml"
    src.write_text(yaml.safe_dump(tiny_raw(train={"epochs": 2, "batch_size": 32})))
    return tiny_config(
        backbone={"arch": "small_resnet", "width": 12, "blocks": [1, 1, 1]},  # another arch
        method={"name": "cc", "source": str(src), "k": 8, "kmeans_iters": 10, **method},
        train={"epochs": 2, "batch_size": 32},
    )


def test_source_config_takes_the_targets_seed_resources_and_overrides(tmp_path: Path) -> None:
    cfg = cc_config(tmp_path, source_set={"train.epochs": 3, "method.temperature": 0.5})
    src = source_config(cfg)
    assert src.method.name == "moco" and src.train.epochs == 3
    assert src.method.temperature == 0.5  # type: ignore[union-attr]
    assert src.seed == cfg.seed and src.resources == cfg.resources
    bad = cc_config(tmp_path, source="no_such_config")
    with pytest.raises(ConfigError, match="no_such_config"):
        source_config(bad)


def test_pipeline_runs_every_stage_and_resumes_from_artifacts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = cc_config(tmp_path)
    run = location(tmp_path / "run")
    metrics = run_any(cfg, run)
    # Stage 1: the source run, with its own config and final metrics.
    src = json.loads((tmp_path / "run/source/config.json").read_text())
    assert src["config"]["method"]["name"] == "moco"
    src_final = json.loads((tmp_path / "run/source/result.json").read_text().splitlines()[-1])
    # Stages 2-3: one pseudo-label per training image, k clusters, scores against the labels.
    labels = np.load(tmp_path / "run/clusters/pseudo_labels.npy")
    info = json.loads((tmp_path / "run/clusters/clusters.json").read_text())
    assert labels.shape == (128,) and labels.dtype == np.int64 and labels.max() < 8
    assert sum(info["sizes"]) == 128 and info["k"] == 8 and 0.0 <= info["nmi"] <= 1.0
    # Stages 4-5: the target trained on them, evaluated, the clustering in every report.
    assert metrics["epoch"] == 2 and 0.0 <= metrics["eval/knn_top1"] <= 1.0
    assert metrics["cluster/nmi"] == pytest.approx(info["nmi"])
    assert metrics["source/eval/knn_top1"] == pytest.approx(src_final["eval/knn_top1"])
    assert 0.0 <= metrics["train/train_acc"] <= 1.0  # agreement with the pseudo-labels
    # A re-run skips the finished stages (the source is not trained again).
    capsys.readouterr()
    mtime = (tmp_path / "run/clusters/pseudo_labels.npy").stat().st_mtime
    run_any(cc_config(tmp_path, ), location(tmp_path / "run2"))  # another run: all stages
    out = capsys.readouterr().out
    assert "1/3 source" in out and "2/3 k-means" in out
    from sslray.pipeline import run_clusters, run_source

    src_cfg, src_loc = run_source(cfg, run, verbose=False)
    run_clusters(cfg, src_cfg, src_loc, run)
    out = capsys.readouterr().out
    assert "finished earlier, reused" in out and "computed earlier, reused" in out
    assert (tmp_path / "run/clusters/pseudo_labels.npy").stat().st_mtime == mtime
    assert len((tmp_path / "run/source/result.json").read_text().splitlines()) == 1


def test_a_finished_run_directory_can_be_the_source(tmp_path: Path) -> None:
    first = cc_config(tmp_path)
    run_any(first, location(tmp_path / "a"))
    reuse = cc_config(tmp_path, source=str(tmp_path / "a" / "source"), k=4)
    metrics = run_any(reuse, location(tmp_path / "b"))
    assert not (tmp_path / "b" / "source").exists()  # nothing pre-trained again
    assert metrics["cluster/k"] == 4


def test_a_jigsaw_run_leaves_its_permutation_set_beside_the_model(tmp_path: Path) -> None:
    from tests.methods.test_smoke import SMOKE_METHOD

    cfg = tiny_config(method=SMOKE_METHOD["jigsaw_pp"], train={"epochs": 1, "batch_size": 32})
    run_any(cfg, location(tmp_path / "run"), verbose=False)
    (file,) = (tmp_path / "run").glob("permutations_10_g*.npy")
    perms = np.load(file)
    state = torch.load(tmp_path / "run" / "final.pt", weights_only=True)
    assert (perms == state["model"]["permutations"].numpy()).all() and perms.shape[0] == 10


def test_raw_pixel_baseline(tmp_path: Path) -> None:
    cfg = tiny_config(eval={"knn_k": 10, "pixels": True, "transfer": ["digits"]},
                      train={"epochs": 1, "batch_size": 32})
    metrics = run_any(cfg, location(tmp_path / "run"), verbose=False)
    for key in ("eval/knn_top1_pixels", "eval/linear_fast_top1_pixels",
                "transfer/digits/knn_top1_pixels"):
        assert 0.25 < metrics[key] <= 1.0, key  # 4 synthetic classes / 10 digits: above chance


def test_the_cluster_stage_clusters_what_the_sources_probes_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """layer "final" of a Jigsaw++ source with `method.probe: tiles`: k-means gets the trained
    trunk's tile-grid features (as the source's own probes read it), not its whole-image ones."""
    import sslray.eval.kmeans as kmeans_module
    from sslray.data.catalog import image_spec
    from sslray.data.datasets import load_arrays
    from sslray.eval.features import extract_features
    from sslray.methods import probe_encoder
    from sslray.pipeline import cluster_stage
    from tests.methods.test_jigsaw_pp import TINY_JIGSAW

    src_cfg = tiny_config(method={**TINY_JIGSAW, "probe": "tiles"},
                          train={"epochs": 1, "batch_size": 32})
    run_any(src_cfg, location(tmp_path / "src"), verbose=False)
    seen: list[np.ndarray] = []
    real = kmeans_module.kmeans

    def recording(features: np.ndarray, *args: Any, **kwargs: Any) -> Any:
        seen.append(np.array(features, copy=True))
        return real(features, *args, **kwargs)

    monkeypatch.setattr(kmeans_module, "kmeans", recording)
    cfg = cc_config(tmp_path, source=str(tmp_path / "src"), k=4, layer="final")
    clusters = cluster_stage(cfg, src_cfg, location(tmp_path / "src").uri)
    # The same features measured here from final.pt: the source's tile probe, and its trunk.
    method = trained_method(src_cfg, tmp_path / "src")
    data = load_arrays(cfg.data, "train")
    tiles = extract_features(probe_encoder(method), data, image_spec(cfg.data)).numpy()
    image = extract_features(method.feature_encoder(), data, image_spec(cfg.data)).numpy()
    (features,) = seen
    assert features.shape == (128, 9 * method.feature_encoder().out_dim) == tiles.shape
    assert image.shape[1] != features.shape[1]
    np.testing.assert_allclose(features, tiles, atol=1e-5)
    assert clusters.labels.shape == (128,) and clusters.stats["layer"] == "final"
    # a source whose probes read stage-2 (`eval.layer`): k-means gets the stage-2 tile grid
    early_cfg = src_cfg.model_copy(update={"eval": src_cfg.eval.model_copy(
        update={"layer": "stage-2"})})
    cluster_stage(cfg, early_cfg, location(tmp_path / "src").uri)
    early = extract_features(probe_encoder(method, "stage-2"), data, image_spec(cfg.data)).numpy()
    assert seen[1].shape == early.shape != tiles.shape
    np.testing.assert_allclose(seen[1], early, atol=1e-5)
    # a source whose probes pool stage-2 over 2x2 (`eval.pool_grid`): k-means gets exactly that
    grid_cfg = src_cfg.model_copy(update={"eval": src_cfg.eval.model_copy(
        update={"layer": "stage-2", "pool_grid": 2})})
    cluster_stage(cfg, grid_cfg, location(tmp_path / "src").uri)
    gridded = extract_features(probe_encoder(method, "stage-2", 2), data,
                               image_spec(cfg.data)).numpy()
    assert seen[2].shape == gridded.shape == (128, 4 * early.shape[1])
    np.testing.assert_allclose(seen[2], gridded, atol=1e-5)
