"""Distributed helpers that degrade to one process: rank, world size, all_gather, shuffle BN.

Device-agnostic: the same code runs over gloo (CPU tensors) and NCCL (CUDA tensors) inside Ray
Train workers, and without torch.distributed at all (unit tests, Ray Train local mode).
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist

from sslray.provenance import usable_cpus

# How long a rank may wait for another's evaluation (rank 0 alone runs kNN and the probes on the
# gathered features). The training collectives keep the process group's timeout (NCCL's 30 min
# by default; resources.collective_timeout_s): evaluation waits go through their own gloo group
# with this one, so a long evaluation never trips a training collective.
EVAL_WAIT = dt.timedelta(hours=6)
_eval_group: tuple[object, dist.ProcessGroup] | None = None  # (the default group it belongs to)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


@torch.no_grad()
def concat_all_gather(x: torch.Tensor) -> torch.Tensor:
    """All workers' x (B, ...) concatenated in rank order: (world * B, ...). No gradient.

    Every worker must pass the same shape (MoCo: equal per-worker batches).
    """
    if not is_distributed() or world_size() == 1:
        return x
    out = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, dim=0)


@torch.no_grad()
def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    if not is_distributed() or world_size() == 1:
        return x
    y = x.clone()
    dist.all_reduce(y)
    return y / world_size()


@torch.no_grad()
def batch_shuffle(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Shuffle a batch across all workers for shuffle BN (He et al. 2020, sec. 3.3).

    Gathers the global batch, draws one permutation on rank 0 and broadcasts it, and returns
    this worker's shard of the permuted batch plus `idx_unshuffle` for `batch_unshuffle`.
    With one process the permutation is local: it matters there when BN statistics are computed
    over sub-batches (SplitBatchNorm2d), the single-device emulation of per-GPU BN.
    """
    local_b = x.shape[0]
    if not is_distributed() or world_size() == 1:
        idx_shuffle = torch.randperm(local_b, device=x.device)
        return x[idx_shuffle], torch.argsort(idx_shuffle)
    x_all = concat_all_gather(x)
    n = x_all.shape[0]
    idx_shuffle = torch.randperm(n, device=x.device)
    dist.broadcast(idx_shuffle, src=0)  # every worker must use rank 0's permutation
    idx_unshuffle = torch.argsort(idx_shuffle)
    mine = idx_shuffle.view(world_size(), -1)[rank()]
    return x_all[mine], idx_unshuffle


@torch.no_grad()
def batch_unshuffle(x: torch.Tensor, idx_unshuffle: torch.Tensor) -> torch.Tensor:
    """Undo `batch_shuffle`: this worker gets back the outputs of its own original samples."""
    if not is_distributed() or world_size() == 1:
        return x[idx_unshuffle]
    x_all = concat_all_gather(x)
    mine = idx_unshuffle.view(world_size(), -1)[rank()]
    return x_all[mine]


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Like `concat_all_gather`, but gradients flow back to every worker's x (end-to-end MoCo)."""
    if not is_distributed() or world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


def _group() -> dist.ProcessGroup:
    """The evaluation group: every rank, gloo (CPU tensors), EVAL_WAIT timeout. Created by the
    first evaluation collective, which every rank reaches in the same order."""
    global _eval_group
    world = dist.group.WORLD
    if _eval_group is None or _eval_group[0] is not world:  # none yet, or a new default group
        group = dist.new_group(backend="gloo", timeout=EVAL_WAIT)
        if not isinstance(group, dist.ProcessGroup):  # a rank outside the group: never here
            raise RuntimeError("this rank is not in the evaluation group")
        _eval_group = (world, group)
    return _eval_group[1]


def shard(n: int) -> range:
    """This rank's contiguous share of n evaluation samples (rank order = sample order)."""
    per = -(-n // world_size())
    return range(min(n, rank() * per), min(n, (rank() + 1) * per))


@torch.no_grad()
def gather_to_rank0(x: torch.Tensor) -> torch.Tensor | None:
    """Every rank's rows of x (n_r, ...) concatenated in rank order, on rank 0 (None elsewhere);
    shards may differ in length and may be empty (fewer samples than ranks: an empty shard may
    come as any empty tensor, its row shape and dtype are taken from a rank that has rows).
    CPU, through the evaluation group (EVAL_WAIT timeout)."""
    if not is_distributed() or world_size() == 1:
        return x
    group, x = _group(), x.detach().cpu().contiguous()
    shapes: list[Any] = [None] * world_size()
    dist.all_gather_object(shapes, (tuple(x.shape), str(x.dtype).removeprefix("torch.")),
                           group=group)
    rows = [shape[0] for shape, _ in shapes]
    full = [(shape, dtype) for shape, dtype in shapes if shape[0] > 0]
    if not full:  # no rank has a sample: nothing to gather
        return x if rank() == 0 else None
    row_shape, dtype = tuple(full[0][0][1:]), getattr(torch, full[0][1])
    padded = torch.zeros((max(rows), *row_shape), dtype=dtype)
    if x.shape[0]:
        padded[: x.shape[0]] = x
    out = [torch.empty_like(padded) for _ in range(world_size())] if rank() == 0 else None
    dist.gather(padded, out, dst=0, group=group)
    if out is None:
        return None
    return torch.cat([o[:n] for o, n in zip(out, rows)])


def wait_for_evaluation() -> None:
    """Every rank waits here (in the evaluation group, EVAL_WAIT timeout) until rank 0 has
    finished evaluating, so the next training collective starts together."""
    if is_distributed() and world_size() > 1:
        dist.barrier(group=_group())


@contextmanager
def node_threads() -> Iterator[int]:
    """Rank 0 computing alone (kNN, the probes, fine-tuning) while the other ranks wait in
    `wait_for_evaluation`: it runs on the CPU threads of every rank of its node
    (LOCAL_WORLD_SIZE, set by Ray Train, times its own torch threads; at most the CPUs it may
    run on), torch's and faiss's, and gives them back afterwards. Yields the thread count.
    One process, or another rank: unchanged. (A 2-worker CPU run on 2 cores evaluates on both.)
    """
    before = torch.get_num_threads()
    local = int(os.environ.get("LOCAL_WORLD_SIZE") or 1) if world_size() > 1 and rank() == 0 \
        else 1
    n = min(before * local, usable_cpus())
    if n <= before:
        yield before
        return
    faiss = sys.modules.get("faiss")  # its own OpenMP pool (OMP_NUM_THREADS in a Ray worker)
    faiss_before = faiss.omp_get_max_threads() if faiss is not None else None
    torch.set_num_threads(n)
    if faiss is not None:
        faiss.omp_set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)
        if faiss is not None and faiss_before is not None:
            faiss.omp_set_num_threads(faiss_before)
