"""Real Ray Train workers (gloo on CPU): shuffle BN across workers, kill and resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sslray.training.loop import fit
from sslray.training.worker import FAULT_ENV, run_training
from tests.conftest import tiny_config

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]


def _shuffle_probe(config: dict) -> None:
    import ray.train

    from sslray import distributed as dist

    rank, world, b = dist.rank(), dist.world_size(), 8
    torch.manual_seed(100 + rank)  # different RNG per rank: only the broadcast makes them agree
    ids = torch.arange(b, dtype=torch.float32) + rank * b  # global sample ids of this worker
    x = torch.stack([ids, torch.randn(b)], dim=1)  # (B, 2): id column + a feature column
    shuffled, idx_unshuffle = dist.batch_shuffle(x)
    bn = torch.nn.BatchNorm1d(1)  # a "key encoder" whose statistics come from the shuffled batch
    out = torch.cat([shuffled[:, :1], bn(shuffled[:, 1:])], dim=1)
    restored = dist.batch_unshuffle(out, idx_unshuffle)
    result = {
        "rank": rank,
        "world": world,
        "shard_ids": shuffled[:, 0].tolist(),
        "restored_ids": restored[:, 0].tolist(),
        "own_ids": ids.tolist(),
        "gathered": dist.concat_all_gather(ids.view(-1, 1))[:, 0].tolist(),
    }
    Path(config["out"], f"rank{rank}.json").write_text(json.dumps(result))
    ray.train.report({"done": 1.0})


def test_shuffle_round_trip_across_two_ray_train_workers(ray_session, tmp_path):
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        _shuffle_probe,
        train_loop_config={"out": str(tmp_path)},
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name="shuffle", storage_path=str(tmp_path / "ray"),
                             failure_config=FailureConfig(max_failures=0)),
    )
    trainer.fit()
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    assert r0["gathered"] == list(range(16))  # all_gather in rank order
    # unshuffle gives each worker back exactly its own samples, in order
    assert r0["restored_ids"] == r0["own_ids"] and r1["restored_ids"] == r1["own_ids"]
    # one permutation for all: the two shards partition the global batch
    assert sorted(r0["shard_ids"] + r1["shard_ids"]) == list(range(16))
    # each worker's BN batch really holds samples of the other worker
    for r in (r0, r1):
        foreign = [i for i in r["shard_ids"] if i not in r["own_ids"]]
        assert len(foreign) > 0


def test_ray_worker_killed_mid_epoch_resumes_and_matches_uninterrupted(
    ray_session, tmp_path, monkeypatch
):
    cfg = tiny_config(resources={"workers": 1, "max_failures": 1}, eval={"knn_k": 10})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    monkeypatch.setenv(FAULT_ENV, "1")  # SIGKILL the worker mid-epoch 2 (epoch 1 checkpointed)
    metrics = run_training(cfg, run_dir)
    assert (run_dir / ".fault_injected").read_text() == "2:1"  # killed after step 1 of epoch 2
    assert metrics["epoch"] == 2.0
    assert metrics["train/resumed_from_epoch"] == 1.0  # the restarted worker began at epoch 1
    assert json.loads((run_dir / "result.json").read_text().splitlines()[-1])["epoch"] == 2.0

    # The same run without the kill, in this process, single-threaded like the Ray worker.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference = fit(cfg, verbose=False)
    finally:
        torch.set_num_threads(threads)
    assert metrics["train/loss"] == pytest.approx(reference["train/loss"], rel=1e-5)
    assert metrics["eval/knn_top1"] == pytest.approx(reference["eval/knn_top1"])


def _two_worker_moco(config: dict) -> None:
    import ray.train
    import ray.train.torch

    from sslray import distributed as dist
    from sslray.config import RunConfig

    cfg = RunConfig.model_validate_json(config["cfg"])

    def dump(metrics, trainer):
        m = trainer.method
        state = {
            "queue": m.queue.features.tolist(),
            "ptr": int(m.queue.ptr),
            "query_sum": float(sum(p.double().sum() for p in m.encoder_q.parameters())),
            "key_sum": float(sum(p.double().sum() for p in m.encoder_k.parameters())),
            "metrics": metrics,
        }
        Path(config["out"], f"rank{dist.rank()}.json").write_text(json.dumps(state))
        ray.train.report({"epoch": metrics["epoch"]})

    def wrap(model):
        return ray.train.torch.prepare_model(
            model, parallel_strategy_kwargs={"forward_sync_buffers": False})

    fit(cfg, wrap=wrap, on_epoch_end=dump, verbose=False)


def _on_two_workers(fn, cfg, tmp_path: Path, name: str, **extra: str) -> tuple[dict, dict]:
    """Run `fn(config)` on 2 gloo workers; returns what each rank wrote to rank<r>.json."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    TorchTrainer(
        fn,
        train_loop_config={"cfg": cfg.model_dump_json(), "out": str(tmp_path), **extra},
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name=name, storage_path=str(tmp_path / "ray"),
                             failure_config=FailureConfig(max_failures=0)),
    ).fit()
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    return r0, r1


def test_moco_on_two_ray_workers_keeps_one_queue_and_one_model(ray_session, tmp_path):
    cfg = tiny_config(train={"epochs": 1, "batch_size": 32}, resources={"workers": 2},
                      method={"name": "moco", "queue_size": 64, "dim": 16, "bn": "shuffle"})
    r0, r1 = _on_two_workers(_two_worker_moco, cfg, tmp_path, "moco2")
    steps = 128 // 32  # synthetic_size // global batch
    assert r0["ptr"] == r1["ptr"] == (steps * 32) % 64  # all-gathered keys: 32 per step
    assert r0["queue"] == r1["queue"]  # every worker holds the same dictionary
    assert r0["query_sum"] == pytest.approx(r1["query_sum"], rel=1e-6)  # DDP: one model
    assert r0["key_sum"] == pytest.approx(r1["key_sum"], rel=1e-6)  # same momentum encoder
    assert r0["metrics"]["train/loss"] == r1["metrics"]["train/loss"]  # all-reduced
    assert "eval/knn_top1" in r0["metrics"] and "eval/knn_top1" not in r1["metrics"]


def _two_rank_eval(config: dict) -> None:
    import ray.train

    from sslray import distributed as dist
    from sslray.config import RunConfig as SslrayConfig
    from sslray.eval.evaluator import Evaluator

    cfg = SslrayConfig.model_validate_json(config["cfg"])
    torch.manual_seed(0)  # the same encoder on both ranks
    encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 8))
    shard = dist.shard(len(Evaluator(cfg, torch.device("cpu")).splits[0]))
    metrics = Evaluator(cfg, torch.device("cpu"))(encoder)
    dist.wait_for_evaluation()
    Path(config["out"], f"rank{dist.rank()}.json").write_text(json.dumps(
        {"metrics": metrics, "shard": [shard.start, shard.stop]}))
    ray.train.report({"done": 1.0})


def test_evaluation_is_sharded_over_ranks_and_equals_one_process(ray_session, tmp_path):
    """Each rank extracts its half of the features; rank 0's kNN and probe on the gathered
    features equal a single process's exactly (same encoder, same order)."""
    from sslray.eval.evaluator import Evaluator

    cfg = tiny_config(resources={"workers": 2}, data={"synthetic_size": 101})
    r0, r1 = _on_two_workers(_two_rank_eval, cfg, tmp_path, "eval2")
    assert r0["shard"] == [0, 51] and r1["shard"] == [51, 101]  # uneven shards, in order
    assert r1["metrics"] == {}  # only rank 0 computes metrics
    torch.manual_seed(0)
    encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 8))
    alone = Evaluator(cfg, torch.device("cpu"))(encoder)
    assert set(alone) == set(r0["metrics"]) and "eval/knn_top1" in alone
    for key, value in alone.items():
        assert r0["metrics"][key] == pytest.approx(value, abs=1e-9), key


def _two_rank_tiny_eval(config: dict) -> None:
    import ray.train

    from sslray import distributed as dist
    from sslray.config import RunConfig as SslrayConfig
    from sslray.eval.evaluator import Evaluator
    from sslray.eval.features import extract_features

    cfg = SslrayConfig.model_validate_json(config["cfg"])
    torch.manual_seed(0)
    encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 8))
    ev = Evaluator(cfg, torch.device("cpu"))
    got = {}
    for n in (1, 0):  # fewer samples than ranks: rank 1's share is empty; then no sample at all
        out = ev.features(encoder, ev.splits[0].slice(0, n))
        got[n] = None if out is None else [list(out[0].shape), list(out[1].shape),
                                           out[0].sum().item()]
    alone = extract_features(encoder, ev.splits[0].slice(0, 1), ev.spec).sum().item()
    # an image folder of one training image: rank 1's DataLoader yields no batch at all
    folder = SslrayConfig.model_validate({**cfg.model_dump(), "data": {
        "dataset": "imagefolder", "root": config["folder"], "image_size": 16,
        "loader_workers": 0}})
    out = Evaluator(folder, torch.device("cpu")).features(
        encoder, Evaluator(folder, torch.device("cpu")).splits[0])
    got["folder"] = None if out is None else [list(out[0].shape), list(out[1].shape)]
    dist.wait_for_evaluation()
    Path(config["out"], f"rank{dist.rank()}.json").write_text(json.dumps(
        {"got": got, "alone": alone}))
    ray.train.report({"done": 1.0})


def test_evaluation_with_fewer_samples_than_ranks_gathers_the_rows_there_are(
    ray_session, tmp_path
):
    """One sample on 2 ranks: rank 1's share is empty (arrays: an empty slice; an image folder:
    a DataLoader with no batch); rank 0 still gets the (1, 8) features and (1,) labels."""
    from PIL import Image

    for split in ("train", "val"):
        (tmp_path / "folder" / split / "class0").mkdir(parents=True)
        Image.new("RGB", (20, 20), (200, 40, 40)).save(tmp_path / "folder" / split / "class0" /
                                                       "0.png")
    cfg = tiny_config(resources={"workers": 2})
    r0, r1 = _on_two_workers(_two_rank_tiny_eval, cfg, tmp_path, "eval_tiny",
                             folder=str(tmp_path / "folder"))
    assert r0["got"]["1"][:2] == [[1, 8], [1]] and r1["got"]["1"] is None
    assert r0["got"]["1"][2] == pytest.approx(r0["alone"], abs=1e-6)  # the sample's own row
    assert r0["got"]["0"][:2] == [[0, 0], [0]] and r1["got"]["0"] is None
    assert r0["got"]["folder"] == [[1, 8], [1]] and r1["got"]["folder"] is None


def test_slow_rank0_evaluation_does_not_time_out_training_collectives(
    ray_session, tmp_path, monkeypatch
):
    """Rank 0 evaluates for 12 s at the start (the random-init kNN, as at ImageNet scale) while
    the training collectives time out after 4 s: rank 1 must wait outside them, in the
    evaluation group, or MoCo's first shuffle-BN all_gather times out and the run fails."""
    from sslray.eval.evaluator import SLOW_EVAL_ENV

    monkeypatch.setenv(SLOW_EVAL_ENV, "12")
    cfg = tiny_config(train={"epochs": 1, "batch_size": 32},
                      resources={"workers": 2, "collective_timeout_s": 4, "max_failures": 0},
                      method={"name": "moco", "queue_size": 64, "dim": 16, "bn": "shuffle"},
                      eval={"at_init": True})
    metrics = run_training(cfg, tmp_path / "slow")
    assert metrics["epoch"] == 1.0
    assert "eval/knn_top1_init" in metrics and "eval/knn_top1" in metrics
