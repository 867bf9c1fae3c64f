"""Fast paths (issue 7): each gives the slow path's numbers.

optim.impl (foreach / fused against the per-parameter loop), train.compile (eager vs compiled
loss trajectory, unchanged state_dict keys), data.augment_on: device (uint8 crops from the
loader, the rest batched on the device) against the all-in-the-loader torchvision pipeline.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from sslray.config import OptimConfig
from sslray.training.loop import Trainer
from sslray.training.optim import LARS, build_optimizer, set_impl
from tests.conftest import tiny_config


def _params() -> list[nn.Parameter]:
    """Weights, a bias, an all-zero weight (||w|| = 0) and one that never gets a gradient."""
    g = torch.Generator().manual_seed(0)
    shapes = [(8, 4, 3, 3), (8,), (16, 8), (5, 5), (3,)]
    params = [nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
    with torch.no_grad():
        params[3].zero_()
    return params


def _run(opt: torch.optim.Optimizer, params: list[nn.Parameter], steps: int = 5) -> None:
    g = torch.Generator().manual_seed(1)
    for step in range(steps):
        for i, p in enumerate(params):
            p.grad = None if i == 4 else torch.randn(p.shape, generator=g)
        params[2].grad = torch.zeros_like(params[2]) if step == 0 else params[2].grad  # ||g|| = 0
        opt.step()


@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_lars_foreach_equals_the_loop(weight_decay):
    runs = []
    for foreach in (False, True):
        params = _params()
        groups = [{"params": [params[0], params[2], params[3], params[4]]},
                  {"params": [params[1]], "lars": False, "weight_decay": 0.0}]  # excluded
        opt = LARS(groups, lr=0.5, momentum=0.9, weight_decay=weight_decay, eta=0.02,
                   foreach=foreach)
        _run(opt, params)
        runs.append((params, opt))
    (p_loop, opt_loop), (p_each, opt_each) = runs
    for a, b in zip(p_loop, p_each, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
        if a is not p_loop[4]:
            torch.testing.assert_close(opt_loop.state[a]["momentum_buffer"],
                                       opt_each.state[b]["momentum_buffer"], rtol=1e-6, atol=1e-7)
    assert not opt_each.state[p_each[4]]  # no gradient, no state (as the loop)
    assert not torch.equal(p_each[0], _params()[0])  # it moved


def test_lars_foreach_is_the_default_and_leaves_no_flag_in_checkpoints():
    model = nn.Linear(4, 3)
    opt = build_optimizer(OptimConfig(name="lars"), model, 0.1)
    assert isinstance(opt, LARS) and opt.foreach
    assert all("foreach" not in g for g in opt.state_dict()["param_groups"])
    loop = build_optimizer(OptimConfig(name="lars", impl="loop"), model, 0.1)
    assert isinstance(loop, LARS) and not loop.foreach


def test_sgd_loop_foreach_and_fused_agree():
    finals = {}
    for impl in ("loop", "foreach", "fused"):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
        model(torch.randn(2, 3, 6, 6))  # materialise the lazy layer
        opt = build_optimizer(OptimConfig(impl=impl, weight_decay=1e-2), model, 0.1)
        group = opt.param_groups[0]
        assert (group["foreach"], group["fused"]) == (impl == "foreach", impl == "fused")
        torch.manual_seed(1)
        for _ in range(4):
            opt.zero_grad()
            model(torch.randn(8, 3, 6, 6)).square().mean().backward()
            opt.step()
        finals[impl] = [p.detach().clone() for p in model.parameters()]
    for impl in ("foreach", "fused"):
        for a, b in zip(finals["loop"], finals[impl], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_fused_is_sgd_only():
    with pytest.raises(ValueError, match="fused exists for sgd only"):
        OptimConfig(name="lars", impl="fused")


def test_loading_a_checkpoint_keeps_this_runs_impl():
    model = nn.Linear(4, 3)
    fused = build_optimizer(OptimConfig(impl="fused"), model, 0.1)
    model(torch.randn(2, 4)).sum().backward()
    fused.step()
    loop = build_optimizer(OptimConfig(impl="loop"), model, 0.1)
    loop.load_state_dict(copy.deepcopy(fused.state_dict()))
    assert loop.param_groups[0]["fused"]  # torch restores the saved flags ...
    set_impl(loop, "loop")  # ... Trainer.load_state_dict puts this run's back
    assert not loop.param_groups[0]["fused"] and not loop.param_groups[0]["foreach"]
    assert torch.equal(loop.state[model.weight]["momentum_buffer"],
                       fused.state[model.weight]["momentum_buffer"])


def test_trainer_resume_applies_the_configured_impl():
    from sslray.training.loop import Trainer

    saved = Trainer(tiny_config(optim={"impl": "fused"}), 1).state_dict()
    trainer = Trainer(tiny_config(optim={"impl": "foreach"}), 1)
    trainer.load_state_dict(saved)
    assert trainer.optimizer.param_groups[0]["foreach"]
    assert not trainer.optimizer.param_groups[0]["fused"]


@pytest.mark.parametrize("optim", [{"name": "sgd"}, {"name": "lars", "lr": 0.3}])
def test_optim_impl_keeps_the_training_trajectory(optim):
    from tests.methods.test_byol import BYOL_TINY
    from tests.training.test_resume import _three_step_losses

    runs = [_three_step_losses(tiny_config(method=BYOL_TINY, optim={**optim, "impl": impl}))
            for impl in ("loop", "foreach")]
    (loop, s_loop), (each, s_each) = runs
    torch.testing.assert_close(each, loop, rtol=1e-6, atol=0)
    for k in s_loop:
        torch.testing.assert_close(s_each[k], s_loop[k], rtol=1e-5, atol=1e-6)


def test_compile_keeps_the_loss_trajectory_and_the_checkpoint_keys():
    """train.compile on the tiniest MoCo (one block): the same losses as eager within float
    rounding (inductor fuses kernels in another order; measured: 1e-7 relative), and a compiled
    trainer's checkpoint loads into an eager one. 5-30 s on 2 CPU cores (the compile; less with
    inductor's on-disk cache warm)."""
    from sslray.training.loop import Trainer, compile_backbones
    from tests.training.test_resume import _three_step_losses

    eager_cfg = tiny_config(backbone={"blocks": [1]})
    eager, eager_state = _three_step_losses(eager_cfg)
    compiled, compiled_state = _three_step_losses(
        tiny_config(backbone={"blocks": [1]}, train={"compile": True}))
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=0)
    assert list(compiled_state) == list(eager_state)  # nn.Module.compile: no `_orig_mod.` keys
    Trainer(eager_cfg, 4).method.load_state_dict(compiled_state)  # strict: every key matches
    assert compile_backbones(Trainer(eager_cfg, 1).method) == 2  # query and key backbones


IDENTITY_AUG = {"crop_scale": [1.0, 1.0], "crop_ratio": [1.0, 1.0], "flip_p": 0.0,
                "jitter_p": 0.0, "grayscale_p": 0.0, "blur_p": 0.0, "solarize_p": 0.0}


def _folder_views(root, augment_on: str, augment: dict | None = None):
    """The first training batch's views of the PNG folder at `root`, 16 px, as the trainer
    makes them with `data.augment_on`; and the batch itself."""
    from sslray.data.catalog import image_spec
    from sslray.data.streams import load_train_split, make_stream
    from sslray.data.views import BatchedViews

    cfg = tiny_config(data={"dataset": "imagefolder", "root": str(root), "image_size": 16,
                            "loader_workers": 0, "augment_on": augment_on},
                      method={"augment": augment or {}}, train={"batch_size": 8})
    augs = (cfg.method.augment,) * 2
    stream = make_stream(cfg.data, load_train_split(cfg.data), augs, 8, 1, 0, cfg.seed,
                         use_gpu=False)
    batch = next(iter(stream.epoch(0)))
    if batch.crops is None:
        assert batch.views is not None
        return batch.views, batch
    return BatchedViews(augs, image_spec(cfg.data)).from_crops(batch.crops), batch


def test_device_augmentation_ships_uint8_crops_and_makes_normalised_views(tmp_path):
    from sslray.data.catalog import dataset_info
    from tests.eval.test_eval import _write_colour_folder

    _write_colour_folder(tmp_path)  # 20 px PNGs, 3 classes
    torch.manual_seed(0)
    views, batch = _folder_views(tmp_path, "device")  # MoCo v2 augmentations
    assert batch.views is None and batch.crops is not None
    assert all(c.dtype == torch.uint8 and c.shape == (8, 3, 16, 16) for c in batch.crops)
    info = dataset_info("imagefolder")
    mean, std = (torch.tensor(s).view(1, 3, 1, 1) for s in (info.mean, info.std))
    for v in views:
        assert v.dtype == torch.float32 and v.shape == (8, 3, 16, 16)
        assert (v >= (0 - mean) / std - 1e-5).all() and (v <= (1 - mean) / std + 1e-5).all()
    assert not torch.allclose(views[0], views[1])  # two different random views


def test_device_augmentation_without_random_ops_equals_the_loader_path(tmp_path):
    from tests.eval.test_eval import _write_colour_folder

    _write_colour_folder(tmp_path)
    on_loader, b1 = _folder_views(tmp_path, "loader", IDENTITY_AUG)
    on_device, b2 = _folder_views(tmp_path, "device", IDENTITY_AUG)
    assert torch.equal(b1.index, b2.index)  # the same images in the same order
    for a, b in zip(on_loader, on_device, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-5)
    flipped, _ = _folder_views(tmp_path, "device", {**IDENTITY_AUG, "flip_p": 1.0})
    torch.testing.assert_close(flipped[0], on_loader[0].flip(-1), rtol=0, atol=1e-5)


def test_augment_on_auto_means_device_on_gpu_only():
    from sslray.config import DataConfig
    from sslray.data.streams import augment_on_device

    assert augment_on_device(DataConfig(), use_gpu=True)
    assert not augment_on_device(DataConfig(), use_gpu=False)
    assert augment_on_device(DataConfig(augment_on="device"), use_gpu=False)
    assert not augment_on_device(DataConfig(augment_on="loader"), use_gpu=True)


def test_fit_on_an_image_folder_with_device_augmentation(tmp_path, monkeypatch):
    from sslray.data.views import BatchedViews
    from sslray.training.loop import fit
    from tests.eval.test_eval import _write_colour_folder

    calls = []
    from_crops = BatchedViews.from_crops
    monkeypatch.setattr(BatchedViews, "from_crops",
                        lambda self, crops: calls.append(len(crops)) or from_crops(self, crops))
    _write_colour_folder(tmp_path)
    cfg = tiny_config(data={"dataset": "imagefolder", "root": str(tmp_path), "image_size": 16,
                            "loader_workers": 0, "augment_on": "device"},
                      train={"epochs": 2, "batch_size": 8}, eval={"at_init": False})
    metrics = fit(cfg, verbose=False)
    assert calls == [2] * 6  # 2 epochs x (30 images // 8) steps, two views each
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    assert 0.0 <= metrics["eval/knn_top1"] <= 1.0


@pytest.mark.parametrize(("backbone", "conv"), [
    ({"arch": "small_resnet", "width": 4, "blocks": [1, 1]}, "stages.1.0.downsample.0"),
    ({"arch": "small_resnet", "width": 6, "blocks": [1, 1, 1]}, "stages.1.0.downsample.0"),
    ({"arch": "small_resnet", "width": 8, "blocks": [1, 1]}, None),
    ({"arch": "small_resnet", "width": 4, "blocks": [2]}, None),  # one stage: no downsample
    ({"arch": "alexnet_small", "width": 4, "blocks": [1, 1, 3]}, None),  # no 1x1 convolutions
    ({"arch": "resnet18"}, None),
])
def test_channels_last_hazard_names_the_narrow_strided_1x1_convolution(backbone, conv):
    from sslray.config_types import BackboneConfig
    from sslray.models.backbones import channels_last_hazard

    why = channels_last_hazard(BackboneConfig(**backbone))
    if conv is None:
        assert why is None
    else:
        assert why is not None and conv in why and "channels_last" in why


def test_a_width_4_resnet_trains_nchw_on_cpu_and_says_so():
    """The run oneDNN aborted on an AVX2 machine (torch 2.14.1, 1 thread: heap corruption in
    the downsample convolution's weight gradient): a small_resnet of width 4 in channels_last.
    The trainer declines the layout with a warning and trains three steps; Jigsaw++ (which lays
    its tiles out to match) follows it; a width-8 backbone keeps channels_last."""
    from tests.training.test_resume import _three_step_losses

    narrow = {"arch": "small_resnet", "width": 4, "blocks": [1, 1]}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the setting that aborted
    try:
        for method in ({"name": "moco", "queue_size": 64, "dim": 16}, {"name": "jigsaw_pp"}):
            cfg = tiny_config(backbone=narrow, method=method)
            with pytest.warns(RuntimeWarning, match=r"NCHW instead.*stages\.1\.0\.downsample"):
                losses, state = _three_step_losses(cfg)
            assert all(math.isfinite(x) for x in losses)
            with pytest.warns(RuntimeWarning):
                trainer = Trainer(cfg, steps_per_epoch=1)
            assert not trainer.channels_last
            assert not getattr(trainer.method, "channels_last", False)
            assert all(p.is_contiguous() for p in trainer.module.parameters())  # NCHW weights
        wide = Trainer(tiny_config(), steps_per_epoch=1)  # width 8
        assert wide.channels_last
        assert any(p.ndim == 4 and not p.is_contiguous() for p in wide.module.parameters())
    finally:
        torch.set_num_threads(threads)
