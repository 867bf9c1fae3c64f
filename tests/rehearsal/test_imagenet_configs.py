"""Every `imagenet_*` config, as shipped, on a generated ImageNet-layout JPEG folder.

ResNet-50 at 224 px (the AlexNet-style tower at 255 px for Jigsaw++), 2 Ray Train workers over
gloo, DDP, shuffle BN, the folder loaders, evaluation sharded over both ranks (kNN, the fast
probe, MoCo's linear protocol on the folder), and rank 0 killed mid-epoch 2 so each Train run
resumes from its epoch-1 checkpoint (not in the cc pipeline, whose source and target Train runs
are the Jigsaw++ and AlexNet-tower runs already killed here: suite time). Only sizes are
overridden (benchmarks/rehearsal.py: OVERRIDES); the larger folder is `make rehearsal`'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from benchmarks.rehearsal import CONFIGS, rehearse, write_image_folder

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("imagenet"), classes=5, train=8, val=2)


def test_the_folder_is_imagenet_shaped(folder: Path) -> None:
    from PIL import Image

    from sslray.config import load_config
    from sslray.data.datasets import load_image_folder

    train = sorted((folder / "train").glob("*/*.JPEG"))
    assert len(train) == 40 and len(list((folder / "val").glob("*/*.JPEG"))) == 10
    sizes = {Image.open(p).size for p in train}
    assert len(sizes) > 30 and all(300 <= min(s) and max(s) <= 500 for s in sizes)
    cfg = load_config("imagenet_moco_v2", [f"data.root={folder}"])
    assert len(load_image_folder(cfg.data, "train").classes) == 5


@pytest.mark.parametrize("name", CONFIGS)
def test_config_runs_resumes_and_evaluates_on_the_folder(
        name: str, folder: Path, ray_session: Any, tmp_path: Path) -> None:
    cc = name.endswith("_cc")  # its two Train runs are the configs above (suite time)
    metrics = rehearse(name, folder, tmp_path, kill=not cc)
    assert metrics["epoch"] == 2.0
    assert metrics["train/resumed_from_epoch"] == (0.0 if cc else 1.0)  # killed, resumed
    for key in ("eval/knn_top1", "eval/linear_fast_top1", "eval/linear_paper_top1"):
        assert 0.0 <= metrics[key] <= 1.0, key
    if cc:  # k-means over the folder's images, the target trained on them
        assert 0.0 <= metrics["cluster/nmi"] <= 1.0
        assert metrics["cluster/k"] == 5
