"""Weighted cosine kNN (faiss) against closed forms and a brute-force reference."""

import math

import pytest
import torch
import torch.nn.functional as F

from sslray.data.catalog import ImageSpec
from sslray.eval.knn import knn_classify, knn_top1

SPEC = ImageSpec(16, (0.5,) * 3, (0.25,) * 3)  # what the probes' tiny encoders see


def test_knn_exact_on_well_separated_clusters():
    g = torch.Generator().manual_seed(0)
    centers = F.normalize(torch.randn(5, 32, generator=g), dim=1) * 10
    labels = torch.arange(5).repeat_interleave(40)
    train = centers[labels] + 0.1 * torch.randn(200, 32, generator=g)
    test_labels = torch.arange(5).repeat_interleave(10)
    test = centers[test_labels] + 0.1 * torch.randn(50, 32, generator=g)
    assert knn_top1(train, labels, test, test_labels, k=20, temperature=0.07) == 1.0


def test_knn_weighted_vote_by_hand():
    # Query e0. Two class-1 neighbours at cosine 0.6 outvote... or not: weights exp(s/T).
    train = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.6, -0.8]])
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[1.0, 0.0]])
    t = 0.1  # class 0: exp(10) = 22026; class 1: 2 exp(6) = 807 -> class 0
    assert knn_classify(train, labels, query, k=3, temperature=t).tolist() == [0]
    t = 10.0  # class 0: exp(0.1) = 1.105; class 1: 2 exp(0.06) = 2.124 -> class 1
    assert knn_classify(train, labels, query, k=3, temperature=t).tolist() == [1]
    assert math.exp(1 / t) < 2 * math.exp(0.6 / t)


def test_knn_matches_brute_force_reference():
    g = torch.Generator().manual_seed(1)
    train, test = torch.randn(300, 16, generator=g), torch.randn(40, 16, generator=g)
    labels = torch.randint(0, 7, (300,), generator=g)
    sim = F.normalize(test, dim=1) @ F.normalize(train, dim=1).t()
    top, idx = sim.topk(25, dim=1)
    votes = torch.zeros(40, 7).scatter_add_(1, labels[idx], (top / 0.07).exp())
    expected = votes.argmax(1)
    got = knn_classify(train, labels, test, k=25, temperature=0.07, num_classes=7)
    assert torch.equal(got, expected)


def test_centred_knn_is_the_brute_force_vote_on_mean_subtracted_features():
    g = torch.Generator().manual_seed(2)
    train, test = torch.randn(300, 16, generator=g) + 3, torch.randn(40, 16, generator=g) + 3
    labels = torch.randint(0, 7, (300,), generator=g)
    mean = train.mean(0, keepdim=True)  # the memory's mean, for the queries too
    sim = F.normalize(test - mean, dim=1) @ F.normalize(train - mean, dim=1).t()
    top, idx = sim.topk(25, dim=1)
    expected = torch.zeros(40, 7).scatter_add_(1, labels[idx], (top / 0.07).exp()).argmax(1)
    got = knn_classify(train, labels, test, k=25, temperature=0.07, num_classes=7, center=True)
    assert torch.equal(got, expected)
    assert not torch.equal(got, knn_classify(train, labels, test, k=25, temperature=0.07,
                                             num_classes=7))


def test_centring_recovers_clusters_under_a_shared_offset():
    # Clusters 1 apart under an offset of 1e4: their cosines differ by ~1e-8, below float32's
    # resolution, so the plain vote is near chance; centred, the clusters are all that is left.
    g = torch.Generator().manual_seed(0)
    centers = F.normalize(torch.randn(5, 32, generator=g), dim=1)
    labels = torch.arange(5).repeat_interleave(40)
    offset = torch.zeros(32)
    offset[0] = 1e4
    train = offset + centers[labels] + 0.05 * torch.randn(200, 32, generator=g)
    test_labels = torch.arange(5).repeat_interleave(10)
    test = offset + centers[test_labels] + 0.05 * torch.randn(50, 32, generator=g)
    assert knn_top1(train, labels, test, test_labels, k=20, center=True) == 1.0
    assert knn_top1(train, labels, test, test_labels, k=20) < 0.6


def test_k_larger_than_train_set_is_capped():
    train = torch.eye(3)
    assert knn_classify(train, torch.tensor([0, 1, 2]), torch.eye(3), k=200).tolist() == [0, 1, 2]


def test_linear_probe_fast_separable_and_top5():
    from sslray.eval.linear import linear_probe_fast

    g = torch.Generator().manual_seed(0)
    centers = torch.randn(8, 16, generator=g) * 4
    y = torch.arange(8).repeat(50)
    x = centers[y] + torch.randn(400, 16, generator=g)
    yt = torch.arange(8).repeat(10)
    xt = centers[yt] + torch.randn(80, 16, generator=g)
    out = linear_probe_fast(x, y, xt, yt, num_classes=8)
    assert out["top1"] == 1.0 and out["top5"] == 1.0
    few = linear_probe_fast(x, y % 4, xt, yt % 4, num_classes=4)  # <= 5 classes: no top-5
    assert "top5" not in few


def test_linear_probe_fast_matches_sklearn_on_noisy_data():
    from sklearn.linear_model import LogisticRegression

    from sslray.eval.linear import linear_probe_fast

    g = torch.Generator().manual_seed(1)
    w = torch.randn(10, 6, generator=g)
    x, xt = torch.randn(600, 10, generator=g), torch.randn(300, 10, generator=g)
    y = (x @ w + 1.5 * torch.randn(600, 6, generator=g)).argmax(1)
    yt = (xt @ w + 1.5 * torch.randn(300, 6, generator=g)).argmax(1)
    ours = linear_probe_fast(x, y, xt, yt, num_classes=6)["top1"]
    mu, sd = x.mean(0), x.std(0)
    ref = LogisticRegression(C=1.0 / (2 * 1e-4 * 600), max_iter=2000).fit(
        ((x - mu) / sd).numpy(), y.numpy()).score(((xt - mu) / sd).numpy(), yt.numpy())
    assert abs(ours - ref) <= 0.02


def test_linear_probe_paper_leaves_the_encoder_untouched_and_learns():
    from sslray.config_types import BackboneConfig
    from sslray.data.datasets import make_synthetic
    from sslray.eval.linear import linear_probe_paper
    from sslray.models import build_backbone

    torch.manual_seed(0)
    encoder = build_backbone(BackboneConfig(arch="small_resnet", width=8, blocks=(1, 1)))
    encoder.train()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    train, test = make_synthetic(256, 4, 16, seed=1), make_synthetic(64, 4, 16, seed=2)
    out = linear_probe_paper(encoder, train, test, SPEC, epochs=10,
                             lr=1.0, batch_size=32)
    assert out["top1"] > 0.25 and "top5" not in out  # above chance; 4 classes: no top-5
    assert encoder.training  # mode restored
    for k, v in encoder.state_dict().items():
        assert torch.equal(v, before[k]), k  # weights and BN statistics frozen


def test_run_reports_the_paper_probe_when_asked():
    from sslray.training.loop import fit
    from tests.conftest import tiny_config

    cfg = tiny_config(train={"epochs": 1}, eval={"linear_paper_epochs": 2, "linear_paper_lr": 1.0})
    metrics = fit(cfg, verbose=False)
    assert 0.0 <= metrics["eval/linear_paper_top1"] <= 1.0


# Three colours with a little brightness jitter and noise: linearly separable by mean colour.
_COLOURS = ((200, 40, 40), (40, 200, 40), (40, 40, 200))


def _write_colour_folder(root, train_per_class: int = 10, val_per_class: int = 6) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for c, rgb in enumerate(_COLOURS):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(n):
                img = np.array(rgb) * rng.uniform(0.7, 1.2) + rng.normal(0, 20, (20, 20, 3))
                Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(d / f"{i}.png")


def _tiny_encoder() -> torch.nn.Module:
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())


def _folder_probe(root, encoder, seed: int = 0, num_workers: int = 0):
    from torchvision.datasets import ImageFolder

    from sslray.eval.linear import linear_probe_paper_folder

    train, test = ImageFolder(str(root / "train")), ImageFolder(str(root / "val"))
    torch.manual_seed(0)  # the augmentations (in-process) and the head's init
    out = linear_probe_paper_folder(encoder, train, test, SPEC, epochs=4,
                                    lr=1.0, batch_size=8, seed=seed, num_workers=num_workers)
    assert train.transform is None  # the caller's folder is not modified
    return out


def test_linear_probe_paper_folder_learns_and_leaves_the_encoder_untouched(tmp_path):
    _write_colour_folder(tmp_path)
    encoder = _tiny_encoder()
    encoder.train()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    out = _folder_probe(tmp_path, encoder)
    assert out["top1"] >= 0.9 and "top5" not in out  # chance is 1/3; 3 classes: no top-5
    assert encoder.training  # mode restored
    for k, v in encoder.state_dict().items():
        assert torch.equal(v, before[k]), k  # weights and BN statistics frozen


def test_linear_probe_paper_folder_is_seeded(tmp_path, monkeypatch):
    import sslray.eval.linear as linear

    logits: list[torch.Tensor] = []
    top = linear.topk_accuracy
    monkeypatch.setattr(linear, "topk_accuracy",
                        lambda x, y, k: logits.append(x) or top(x, y, k))
    _write_colour_folder(tmp_path)
    encoder = _tiny_encoder()
    for seed, workers in ((0, 0), (0, 0), (1, 0), (0, 1), (0, 1)):
        _folder_probe(tmp_path, encoder, seed=seed, num_workers=workers)
    assert torch.equal(logits[0], logits[1])  # the same seed: the same head
    assert not torch.equal(logits[0], logits[2])  # another seed: another batch order
    assert torch.equal(logits[3], logits[4])  # loader workers are seeded from the seed too


def test_linear_probe_paper_folder_agrees_with_the_in_memory_probe(tmp_path):
    """The same images as arrays and as PNG files: both probes learn them (not bitwise alike:
    batched vs per-sample augmentation, and the folder's test view is a resize + centre crop)."""
    import numpy as np
    from torchvision.datasets import ImageFolder

    from sslray.data.datasets import ImageArrays
    from sslray.eval.linear import linear_probe_paper

    _write_colour_folder(tmp_path)
    encoder = _tiny_encoder()

    def arrays(split: str) -> ImageArrays:
        folder = ImageFolder(str(tmp_path / split))
        images = torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1) for im, _ in folder])
        return ImageArrays(images, torch.tensor(folder.targets), len(folder.classes), "colours")

    torch.manual_seed(0)
    in_memory = linear_probe_paper(encoder, arrays("train"), arrays("val"), SPEC, epochs=4,
                                   lr=1.0, batch_size=8)
    from_files = _folder_probe(tmp_path, encoder)
    assert in_memory["top1"] >= 0.9 and from_files["top1"] >= 0.9


def test_run_reports_the_paper_probe_on_image_folders(tmp_path):
    from sslray.training.loop import fit
    from tests.conftest import tiny_config

    _write_colour_folder(tmp_path)
    cfg = tiny_config(data={"dataset": "imagefolder", "root": str(tmp_path), "image_size": 16,
                            "loader_workers": 0},
                      train={"epochs": 1, "batch_size": 16},
                      eval={"linear_paper_epochs": 2, "linear_paper_lr": 1.0},
                      resources={"workers": 0})
    metrics = fit(cfg, verbose=False)
    assert 0.0 <= metrics["eval/linear_paper_top1"] <= 1.0


def test_fast_probe_on_a_capped_subset_says_so_in_its_name() -> None:
    """eval.linear_fast_max_train: the probe fits on a seeded subset, named in the metric."""
    import torch

    from sslray.eval.evaluator import Evaluator
    from tests.conftest import tiny_config

    torch.manual_seed(0)
    encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 8))
    full = Evaluator(tiny_config(), torch.device("cpu"))(encoder)
    capped = Evaluator(tiny_config(eval={"linear_fast_max_train": 50}),
                       torch.device("cpu"))(encoder)
    assert "eval/linear_fast_top1" in full and "eval/linear_fast_50_top1" not in full
    assert "eval/linear_fast_50_top1" in capped and "eval/linear_fast_top1" not in capped
    assert capped["eval/knn_top1"] == full["eval/knn_top1"]  # kNN keeps the whole memory


def test_knn_on_the_whole_training_split_is_a_second_named_memory() -> None:
    """eval.knn_memory: train_split: kNN also against the whole labelled training split
    (eval/knn_train_split_top1), next to the pre-training subset's eval/knn_top1, which (like
    the probes) is unchanged."""
    import torch

    from sslray.data.datasets import load_arrays
    from sslray.data.views import eval_transform
    from sslray.eval.evaluator import Evaluator
    from sslray.eval.knn import knn_top1
    from tests.conftest import tiny_config

    torch.manual_seed(0)
    encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 8))
    data = {"train_subset": 40}
    subset = Evaluator(tiny_config(data=data), torch.device("cpu"))
    both = Evaluator(tiny_config(data=data, eval={"knn_memory": "train_split"}),
                     torch.device("cpu"))
    assert len(subset.splits[0]) == 40 and len(both.memory) == 128  # synthetic_size
    a, b = subset(encoder), both(encoder)
    assert "eval/knn_train_split_top1" not in a
    assert {k: v for k, v in b.items() if k != "eval/knn_train_split_top1"} == a
    full, test = both.memory, both.splits[1]
    with torch.no_grad():
        fx, tx = (encoder(eval_transform(d.images, both.spec)) for d in (full, test))
    expected = knn_top1(fx, full.labels, tx, test.labels, k=10, temperature=0.07,
                        num_classes=full.num_classes)
    assert b["eval/knn_train_split_top1"] == pytest.approx(expected, abs=1e-9)
    assert len(load_arrays(both.cfg.data, "train")) == 40  # the run's own data is the subset


def test_rank0_runs_the_protocols_on_its_nodes_threads(monkeypatch) -> None:
    """In a run of 2 ranks on one node, rank 0's kNN (both memories) and fast probe run inside
    `dist.node_threads` (2 threads from 1), the features outside it (every rank extracts its own
    share at once), and the thread count is given back afterwards."""
    import os

    import torch

    import sslray.eval.evaluator as ev
    from sslray import distributed as dist
    from tests.conftest import tiny_config

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 CPUs")
    seen: dict[str, list[int]] = {"knn": [], "linear": [], "features": []}

    def spy(name, fn):
        def wrapped(*args, **kw):
            seen[name].append(torch.get_num_threads())
            return fn(*args, **kw)
        return wrapped

    monkeypatch.setattr(ev, "knn_top1", spy("knn", ev.knn_top1))
    monkeypatch.setattr(ev, "linear_probe_fast", spy("linear", ev.linear_probe_fast))
    monkeypatch.setattr(ev, "extract_features", spy("features", ev.extract_features))
    monkeypatch.setattr(dist, "world_size", lambda: 2)  # rank 0 of 2 (gathers: one process)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 8))
        out = ev.Evaluator(tiny_config(data={"train_subset": 40},
                                       eval={"knn_memory": "train_split"}),
                           torch.device("cpu"))(encoder)
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    assert "eval/knn_train_split_top1" in out and "eval/linear_fast_top1" in out
    assert seen == {"knn": [2, 2], "linear": [2], "features": [1, 1, 1]} and after == 1
