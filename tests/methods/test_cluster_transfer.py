"""k-means, clustering scores, layer taps, the supervised baseline and the CC method."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import normalized_mutual_info_score

from sslray.config_types import BackboneConfig
from sslray.data.catalog import image_spec
from sslray.data.datasets import load_arrays
from sslray.data.streams import Batch
from sslray.data.views import eval_transform
from sslray.eval.kmeans import kmeans, nmi, purity
from sslray.methods.cluster_transfer import check_pseudo_labels
from sslray.models import build_backbone
from sslray.models.taps import LayerFeatures, available_layers
from sslray.pipeline import CLUSTERS_JSON, PSEUDO_LABELS, Clusters
from sslray.storage import location
from sslray.training.loop import StageInputs, fit
from tests.conftest import build, tiny_config

# ---------------------------------------------------------------- k-means


def blobs(seed: int = 0, n: int = 100, k: int = 5, dim: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """k Gaussian blobs (unit noise) whose centres are ~5 * sqrt(2 * dim) = 28 apart."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim)) * 5
    y = np.repeat(np.arange(k), n)
    return (centres[y] + rng.normal(size=(k * n, dim))).astype(np.float32), y


def test_kmeans_recovers_separated_blobs():
    x, y = blobs()
    for seed in range(3):
        # One random init merges two blobs and splits another about half the time on 5 blobs
        # (a local minimum); 10 restarts keep the lowest objective.
        r = kmeans(x, 5, seed=seed, nredo=10, use_gpu=False)
        assert nmi(r.labels, y) > 0.95 and purity(r.labels, y) > 0.95
        assert r.labels.dtype == np.int64 and r.labels.shape == (500,)
        assert r.sizes.tolist() == [100] * 5 and r.sizes.sum() == 500 and r.empty_clusters == 0
        assert r.centroids.shape == (5, 16)
        # objective = sum of squared distances to the centroids (rows L2-normalised first)
        xn = x / np.linalg.norm(x, axis=1, keepdims=True)
        expected = ((xn - r.centroids[r.labels]) ** 2).sum()
        assert r.objective == pytest.approx(expected, rel=1e-4)
    single = kmeans(x, 5, seed=0, nredo=1, use_gpu=False)
    assert single.objective >= r.objective - 1e-6  # restarts never do worse


def test_kmeans_is_deterministic_for_a_seed_and_accepts_tensors():
    x, _ = blobs(seed=1, n=60, k=8)
    a = kmeans(x, 8, seed=3, use_gpu=False)
    b = kmeans(torch.from_numpy(x).double(), 8, seed=3, use_gpu=False)
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.centroids, b.centroids)


def test_kmeans_pca_and_raw_features():
    x, y = blobs()
    r = kmeans(x, 5, seed=0, nredo=10, pca_dim=4, use_gpu=False)
    assert r.centroids.shape == (5, 4) and nmi(r.labels, y) > 0.95
    raw = kmeans(x, 5, seed=0, nredo=10, l2_normalize=False, use_gpu=False)
    assert np.abs(np.linalg.norm(raw.centroids, axis=1) - 1).max() > 1  # not on the sphere


def test_kmeans_bad_input_errors():
    x, _ = blobs(n=4, k=2)  # 8 rows
    with pytest.raises(ValueError, match=r"k=9 clusters for 8 feature rows"):
        kmeans(x, 9)
    with pytest.raises(ValueError, match=r"k=1 clusters; k must be >= 2"):
        kmeans(x, 1)
    bad = x.copy()
    bad[3, 0] = np.nan
    with pytest.raises(ValueError, match=r"1 of 8 feature rows are not finite \(first at row 3\)"):
        kmeans(bad, 2)
    with pytest.raises(ValueError, match=r"pca_dim=32 must be in \[1, 16\]"):
        kmeans(x, 2, pca_dim=32)
    with pytest.raises(ValueError, match=r"must be \(N, D\)"):
        kmeans(x[0], 2)


# ---------------------------------------------------------------- NMI / purity


def test_nmi_matches_sklearn_on_random_labelings():
    rng = np.random.default_rng(0)
    for trial in range(20):
        n = int(rng.integers(2, 300))
        a = rng.integers(0, int(rng.integers(1, 12)), n)
        b = rng.integers(-3, int(rng.integers(-2, 20)), n) * 7  # any integers, gaps included
        if trial % 5 == 0:
            b = a * 3 + (rng.random(n) < 0.1)  # strongly dependent
        assert nmi(a, b) == pytest.approx(normalized_mutual_info_score(a, b), abs=1e-9)
        assert nmi(a, b) == pytest.approx(nmi(b, a), abs=1e-12)  # symmetric


def test_nmi_and_purity_hand_cases():
    a = np.array([0, 0, 1, 1, 2, 2])
    assert nmi(a, np.array([5, 5, 9, 9, 1, 1])) == pytest.approx(1.0)  # renamed: perfect
    assert purity(np.array([5, 5, 9, 9, 1, 1]), a) == 1.0
    assert nmi(np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1])) == 0.0  # independent
    assert nmi(np.zeros(5), np.zeros(5)) == 1.0  # sklearn's convention: one cluster each
    # clusters {0,1,2} and {3,4}: majorities 2 and 2 of 5 rows
    assert purity(np.array([0, 0, 0, 1, 1]), np.array([0, 0, 1, 1, 1])) == pytest.approx(0.8)
    assert purity(np.arange(6), np.zeros(6)) == 1.0  # singletons are trivially pure
    # Large random labelings: independent -> NMI near 0, purity near the largest class share
    rng = np.random.default_rng(1)
    p, t = rng.integers(0, 10, 20000), rng.integers(0, 10, 20000)
    assert nmi(p, t) < 0.005 and purity(p, t) == pytest.approx(0.1, abs=0.02)
    with pytest.raises(ValueError, match="differ in length"):
        nmi(np.zeros(3), np.zeros(4))


def test_clusters_round_trip_on_storage(tmp_path):
    """The pipeline's one pseudo-label I/O: Clusters.save / Clusters.load on a Location."""
    x, y = blobs(n=20, k=3)
    r = kmeans(x, 3, seed=0, nredo=5, use_gpu=False)
    stats = {"k": 3, "n": 60, "sizes": r.sizes.tolist(), "nmi": nmi(r.labels, y),
             "purity": purity(r.labels, y), "source": "runs/src", "layer": "final",
             "source_metrics": {"eval/knn_top1": 0.5}, "wall_s": 2.0}
    out = location(tmp_path / "cc")
    Clusters(r.labels, stats).save(out)
    assert sorted(p.name for p in (tmp_path / "cc").iterdir()) == [CLUSTERS_JSON, PSEUDO_LABELS]
    back = Clusters.load(out, k=3)
    assert np.array_equal(back.labels, r.labels) and back.labels.dtype == np.int64
    assert back.stats == stats
    info = json.loads((tmp_path / "cc" / CLUSTERS_JSON).read_text())
    assert info["k"] == 3 and info["sizes"] == [20, 20, 20] and info["nmi"] == 1.0
    assert info["source"] == "runs/src" and info["layer"] == "final" and info["n"] == 60
    assert back.report() == {"cluster/nmi": 1.0, "cluster/purity": 1.0, "cluster/k": 3.0,
                             "cluster/wall_s": 2.0, "source/eval/knn_top1": 0.5}
    with pytest.raises(ValueError, match="holds 60 pseudo-labels but the training split has 61"):
        check_pseudo_labels(back.labels, 61, 3, "pl.npy")
    with pytest.raises(ValueError, match="must be >= 0"):
        check_pseudo_labels(np.array([0, -1]), None, 3, "neg.npy")
    with pytest.raises(ValueError, match="1-D integer array"):
        check_pseudo_labels(np.zeros((2, 2)), None, 3, "2d.npy")


# ---------------------------------------------------------------- layer taps


def test_layer_features_small_resnet_shapes_and_early_stop():
    torch.manual_seed(0)
    net = build_backbone(BackboneConfig(arch="small_resnet", width=8, blocks=(1, 1, 1))).eval()
    assert available_layers(net) == ["final", "stage-1", "stage-2", "stage-3"]
    x = torch.randn(4, 3, 16, 16)
    dims = {"final": 32, "stage-1": 32, "stage-2": 16, "stage-3": 8}
    with torch.no_grad():
        out = {name: LayerFeatures(net, name)(x) for name in dims}
        # stage-2 = the mean over space of the penultimate stage's map
        ref = net.stages[:2](net.stem(x)).mean(dim=(2, 3))
    for name, d in dims.items():
        assert out[name].shape == (4, d)
    assert torch.allclose(out["stage-1"], out["final"], atol=1e-6)  # same map, same pooling
    assert torch.allclose(out["stage-2"], ref, atol=1e-6)
    calls = []
    net.stages[2].register_forward_hook(lambda *a: calls.append(1))
    tap = LayerFeatures(net, "stage-2")
    tap(x)
    assert calls == [] and tap.out_dim == 16  # stopped before the last stage
    assert not net.stages[1]._forward_hooks  # the tap's hook is removed after the pass
    with pytest.raises(ValueError, match=r"'conv4'.*final, stage-1, stage-2, stage-3"):
        LayerFeatures(net, "conv4")


def test_layer_features_torchvision_and_alexnet():
    net = build_backbone(BackboneConfig(arch="resnet18", small_stem=True)).eval()
    assert available_layers(net)[:5] == ["final", "stage-1", "stage-2", "stage-3", "stage-4"]
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        shapes = {n: LayerFeatures(net, n)(x).shape[1] for n in ("final", "stage-2", "stage-4")}
    assert shapes == {"final": 512, "stage-2": 256, "stage-4": 64}
    alex = build_backbone(BackboneConfig(arch="alexnet_small", width=8, blocks=(1, 1, 3))).eval()
    assert available_layers(alex) == ["final", "conv1", "conv2", "conv3", "conv4", "conv5"]
    with torch.no_grad():
        dims = [LayerFeatures(alex, f"conv{i}")(x).shape[1] for i in range(1, 6)]
    assert dims == [8, 16, 32, 32, 32]


# ---------------------------------------------------------------- supervised


def _views(cfg, n: int, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    data = load_arrays(cfg.data, "train")
    x = eval_transform(data.images[start : start + n], image_spec(cfg.data))
    return x, data.labels[start : start + n]


def _steps(model, batch: Batch, n: int, lr: float = 0.2) -> list[float]:
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    losses = []
    for _ in range(n):
        out = model.training_step(batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss.detach()))
    return losses


def test_supervised_initial_loss_is_log_classes_and_falls():
    torch.manual_seed(0)
    cfg = tiny_config(method={"name": "supervised"})
    model = build(cfg, num_samples=128)
    assert model.num_classes == 4 and model.classifier.out_features == 4
    x, y = _views(cfg, 32)
    batch = Batch(labels=y, index=torch.arange(32), views=(x,))
    out = model.training_step(batch)
    # The classifier starts at N(0, 0.01^2) weights and zero bias, so logits are ~0.01 * |h|
    # (|h| ~ 1-5 here): the loss is log C up to O(var(logits)) = O(1e-3); 0.02 leaves room.
    assert float(out.loss.detach()) == pytest.approx(math.log(4), abs=0.02)
    assert set(out.metrics) == {"loss", "train_acc", "feature_std"}
    losses = _steps(model, batch, 15)
    assert losses[-1] < 0.6 * losses[0]


def test_supervised_fit_learns_the_synthetic_classes():
    # 24 steps at effective lr 0.25 (2.0 * 32 / 256): the last epoch's mean train accuracy is
    # ~0.75 and kNN ~0.9 (measured); chance is 1/4.
    cfg = tiny_config(method={"name": "supervised"}, optim={"lr": 2.0},
                      train={"epochs": 6, "batch_size": 32}, eval={"at_init": False})
    metrics = fit(cfg, verbose=False)
    assert metrics["train/train_acc"] > 0.6
    assert metrics["eval/knn_top1"] > 0.6


def test_supervised_class_count_and_unlabelled_data():
    assert build(tiny_config(method={"name": "supervised", "num_classes": 7})).num_classes == 7
    with pytest.raises(ValueError, match="stl10.*unlabelled split"):  # refused at validation
        tiny_config(method={"name": "supervised"}, data={"dataset": "stl10"})


# ---------------------------------------------------------------- cluster classification


def _cc_config(k: int = 8, **method):
    return tiny_config(method={"name": "cc", "source": "tiny", "k": k, **method})


def _cc(labels, k: int = 8, n: int = 128):
    """The cc module as the pipeline's target stage builds it: pseudo-labels in its context."""
    return build(_cc_config(k), num_samples=n,
                 pseudo_labels=None if labels is None else np.asarray(labels))


def test_cc_trains_against_the_rows_batch_index_picks(tmp_path):
    torch.manual_seed(0)
    labels = (np.arange(128) * 5 + 3) % 8  # known, not aligned with the true labels
    model = _cc(labels)
    index = torch.tensor([5, 17, 3, 100, 64, 9])
    assert model.targets(index).tolist() == labels[index.numpy()].tolist() == [4, 0, 2, 7, 3, 0]
    x, _ = _views(_cc_config(), 6)
    true_labels = torch.zeros(6, dtype=torch.long)  # must be ignored
    batch = Batch(labels=true_labels, index=index, views=(x,))
    out = model.training_step(batch)
    with torch.no_grad():
        logits = model.classifier(model.backbone(x))
    target = torch.from_numpy(labels[index.numpy()])
    expected = float(F.cross_entropy(logits, target))
    assert float(out.loss.detach()) == pytest.approx(expected, abs=1e-5)
    assert float(out.metrics["train_acc"]) == pytest.approx(
        float((logits.argmax(1) == target).float().mean()))
    # the pseudo-labels are learnable: a few steps on one batch fit them
    x16, _ = _views(_cc_config(), 16)
    losses = _steps(model, Batch(labels=torch.zeros(16), index=torch.arange(16), views=(x16,)), 25)
    assert losses[0] == pytest.approx(math.log(8), abs=0.02) and losses[-1] < 0.6 * losses[0]


def test_cc_pseudo_labels_travel_with_the_checkpoint():
    a = _cc(np.arange(128) % 8)
    b = _cc(np.zeros(128, dtype=np.int64))
    b.load_state_dict(a.state_dict())  # a resume restores the labels the run started with
    assert torch.equal(b.pseudo_labels, torch.arange(128) % 8)
    # an evaluation rebuilds the module without stage inputs; the checkpoint fills the buffer
    c = build(_cc_config(), num_samples=128, for_training=False)
    c.load_state_dict(a.state_dict())
    assert torch.equal(c.pseudo_labels, torch.arange(128) % 8)


def test_cc_errors_say_to_run_the_pipeline():
    with pytest.raises(ValueError, match=r"no pseudo-labels to train on.*sslray run"):
        _cc(None)
    with pytest.raises(ValueError, match=r"holds 100 pseudo-labels but the training split has "
                                         r"128.*train_subset.*sslray run"):
        _cc(np.zeros(100, dtype=np.int64))
    with pytest.raises(ValueError, match="labels up to 9 but method.k is 8"):
        _cc(np.full(128, 9))
    with pytest.raises(Exception, match=r"method.source"):
        tiny_config(method={"name": "cc"})  # source is required


def test_cc_end_to_end_from_kmeans_of_source_features(tmp_path):
    """The pipeline's order: source features (a layer tap) -> k-means -> file -> cc fit."""
    from sslray.eval.features import extract_features

    torch.manual_seed(0)
    cfg = tiny_config()
    data = load_arrays(cfg.data, "train")
    source = build_backbone(cfg.backbone)  # a random-init source is enough to test the plumbing
    feats = extract_features(LayerFeatures(source, "stage-2"), data, image_spec(cfg.data))
    result = kmeans(feats, 8, seed=0, use_gpu=False)
    cc = _cc_config(head="mlp", hidden_dim=16)
    metrics = fit(cc.model_copy(update={"train": cc.train.model_copy(update={"epochs": 1})}),
                  verbose=False, inputs=StageInputs(pseudo_labels=result.labels))
    assert math.isfinite(metrics["train/loss"]) and 0 <= metrics["train/train_acc"] <= 1
