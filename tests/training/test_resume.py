"""Checkpoints restore the whole trajectory: 2 steps + save + load + 1 step == 3 steps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sslray.data.datasets import load_arrays
from sslray.data.streams import ArrayStream, Batch
from sslray.training.checkpoint import CheckpointError, load_state, save_state
from sslray.training.loop import Trainer
from tests.conftest import tiny_config

# Pinned golden value: the loss of step 3 of the tiny MoCo run below (seed 0, CPU fp32).
# If an intended change moves it, re-pin it and say why in the commit.
GOLDEN_STEP3_LOSS = 4.1403


def _batches(cfg, n):
    data = load_arrays(cfg.data, "train")
    raw = list(ArrayStream(data, cfg.train.batch_size, 1, 0, cfg.seed).epoch(0))[:n]
    return lambda i: Batch(labels=raw[i].labels, index=raw[i].index, images=raw[i].images)


def _state_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_two_steps_save_load_one_step_equals_three_steps(tmp_path: Path):
    cfg = tiny_config(method={"name": "moco", "queue_size": 64, "dim": 16, "ema_decay": 0.9,
                              "bn_splits": 2})
    batch = _batches(cfg, 3)

    straight = Trainer(cfg, steps_per_epoch=4)
    torch.manual_seed(7)
    losses = [straight.train_step(batch(i))["loss"].item() for i in range(3)]

    first = Trainer(cfg, steps_per_epoch=4)
    torch.manual_seed(7)
    for i in range(2):
        first.train_step(batch(i))
    save_state(first.state_dict(), tmp_path / "state.pt")

    resumed = Trainer(cfg, steps_per_epoch=4)
    torch.manual_seed(12345)  # a different RNG: loading must restore the augmentation RNG too
    resumed.load_state_dict(load_state(tmp_path / "state.pt", "moco"))
    loss3 = resumed.train_step(batch(2))["loss"].item()

    assert loss3 == losses[2]
    _state_equal(resumed.method.state_dict(), straight.method.state_dict())  # both encoders, queue
    assert int(resumed.method.queue.ptr) == int(straight.method.queue.ptr) == (3 * 32) % 64
    opt_a, opt_b = resumed.optimizer.state_dict()["state"], straight.optimizer.state_dict()["state"]
    for k in opt_a:
        assert torch.equal(opt_a[k]["momentum_buffer"], opt_b[k]["momentum_buffer"])
    assert resumed.step == straight.step == 3
    assert losses[2] == pytest.approx(GOLDEN_STEP3_LOSS, abs=1e-3)


def test_checkpoint_errors_are_clear(tmp_path: Path):
    cfg = tiny_config()
    trainer = Trainer(cfg, steps_per_epoch=1)
    path = tmp_path / "state.pt"
    save_state(trainer.state_dict(), path)
    assert not (tmp_path / "state.pt.tmp").exists()  # written by rename
    with pytest.raises(CheckpointError, match="written by method 'moco'"):
        load_state(path, "byol")
    truncated = tmp_path / "cut.pt"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated"):
        load_state(truncated, "moco")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_state(tmp_path / "missing.pt")


def _three_step_losses(cfg):
    batch = _batches(cfg, 3)
    trainer = Trainer(cfg, steps_per_epoch=4)
    torch.manual_seed(7)
    losses = [trainer.train_step(batch(i))["loss"].item() for i in range(3)]
    return losses, trainer.method.state_dict()


def test_channels_last_gives_the_same_trajectory():
    base = {"name": "moco", "queue_size": 64, "dim": 16, "bn_splits": 2}
    nchw, s1 = _three_step_losses(tiny_config(method=base, train={"channels_last": False}))
    nhwc, s2 = _three_step_losses(tiny_config(method=base, train={"channels_last": True}))
    assert nhwc == pytest.approx(nchw, abs=1e-4)
    for k in s1:
        assert torch.allclose(s1[k].float(), s2[k].float(), atol=1e-4), k


def test_bf16_autocast_tracks_fp32():
    base = {"name": "moco", "queue_size": 64, "dim": 16}
    fp32, _ = _three_step_losses(tiny_config(method=base, train={"precision": "fp32"}))
    bf16, state = _three_step_losses(tiny_config(method=base, train={"precision": "bf16"}))
    assert bf16 == pytest.approx(fp32, abs=0.05)  # bf16 has ~3 significant digits
    assert bf16 != fp32  # autocast really ran in bf16
    assert all(v.dtype != torch.bfloat16 for v in state.values())  # weights stay fp32


def test_precision_auto_follows_the_hardware():
    from sslray.training.loop import use_bf16

    cpu = torch.device("cpu")
    assert use_bf16("bf16", cpu) and not use_bf16("fp32", cpu)
    assert use_bf16("auto", cpu) == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
