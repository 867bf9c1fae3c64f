"""Single-process behaviour of the distributed helpers and split BatchNorm."""

import torch
import torch.nn.functional as F

from sslray import distributed as dist
from sslray.models import SplitBatchNorm2d


def test_single_process_fallbacks():
    assert dist.world_size() == 1 and dist.rank() == 0
    x = torch.randn(6, 3)
    assert torch.equal(dist.concat_all_gather(x), x)


def test_single_process_shuffle_round_trip():
    x = torch.arange(10.0).view(10, 1)
    shuffled, idx_un = dist.batch_shuffle(x)
    assert sorted(shuffled[:, 0].tolist()) == x[:, 0].tolist()
    assert torch.equal(dist.batch_unshuffle(shuffled, idx_un), x)


def test_split_bn_normalises_each_sub_batch_on_its_own():
    torch.manual_seed(0)
    bn = SplitBatchNorm2d(3, num_splits=2)
    x = torch.randn(8, 3, 4, 4)
    x[1::2] += 5.0  # split 1 (samples 1, 3, 5, 7) has another mean than split 0
    y = bn(x)
    # As the MoCo CIFAR demo's view(-1, C * s, H, W): split j holds samples j, j+s, j+2s, ...
    for j in range(2):
        ref = F.batch_norm(x[j::2], None, None, training=True, eps=bn.eps)
        assert torch.allclose(y[j::2], ref, atol=1e-5)
    assert not torch.allclose(y, F.batch_norm(x, None, None, training=True, eps=bn.eps))
    # running mean is the mean over splits of each split's momentum update (0.1 * batch mean)
    expected = 0.1 * torch.stack([x[0::2].mean((0, 2, 3)), x[1::2].mean((0, 2, 3))]).mean(0)
    assert torch.allclose(bn.running_mean, expected, atol=1e-5)
    bn.eval()
    assert torch.allclose(bn(x), F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight,
                                              bn.bias, False, 0.0, bn.eps), atol=1e-6)


def test_node_threads_is_a_no_op_in_one_process():
    before = torch.get_num_threads()
    with dist.node_threads() as n:
        assert n == before == torch.get_num_threads()
    assert torch.get_num_threads() == before


def _threads_in_a_rank(r: int, init: str, out: str) -> None:
    import json
    import os

    import faiss
    import torch.distributed as tdist

    os.environ["LOCAL_WORLD_SIZE"] = "2"  # as Ray Train sets it: 2 ranks on this node
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    tdist.init_process_group("gloo", init_method=init, rank=r, world_size=2)
    try:
        with dist.node_threads() as n:
            inside = (n, torch.get_num_threads(), faiss.omp_get_max_threads())
        after = (torch.get_num_threads(), faiss.omp_get_max_threads())
        dist.wait_for_evaluation()
    finally:
        tdist.destroy_process_group()
    with open(f"{out}/rank{r}.json", "w") as f:
        json.dump({"inside": inside, "after": after}, f)


def test_node_threads_lends_rank0_the_threads_of_its_nodes_waiting_ranks(tmp_path):
    """2 gloo ranks of 1 thread each on one node: rank 0 computes on both CPUs (torch's and
    faiss's pools), rank 1 keeps its one, and both are back to 1 afterwards."""
    import json
    import os

    import torch.multiprocessing as mp

    if len(os.sched_getaffinity(0)) < 2:
        import pytest
        pytest.skip("needs 2 CPUs")
    mp.spawn(_threads_in_a_rank, args=(f"file://{tmp_path}/store", str(tmp_path)), nprocs=2,
             join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["inside"] == [2, 2, 2] and ranks[1]["inside"] == [1, 1, 1]
    assert ranks[0]["after"] == ranks[1]["after"] == [1, 1]
