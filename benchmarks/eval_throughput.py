"""Evaluation speed: our faiss kNN and k-means against scikit-learn, fast vs paper linear probe.

Features are synthetic but structured (seeded): a Gaussian mixture in a 32-d latent space,
projected to D dimensions, plus isotropic noise,
    z = c_y + N(0, I_32),  x = z P / sqrt(32) + 0.5 N(0, I_D),  c_y ~ sep * N(0, I_32),
so accuracies and cluster scores mean something (kNN top-1 about 0.8 at sep 0.5, 10 classes).

Parts (each prints one JSON line per size):
  knn     `sslray.eval.knn.knn_classify` (faiss IndexFlatIP on L2-normalised rows, k=200, weighted
          votes exp(s/T), T=0.07: the InstDisc protocol) against scikit-learn's brute-force
          `KNeighborsClassifier(algorithm="brute", metric="euclidean")` on the same L2-normalised
          rows (euclidean ranks neighbours as cosine does, and is sklearn's fastest brute path)
          with the same weights, exp((1 - d^2/2)/T). Both timed end to end (normalisation, index
          build / fit, search, votes). Reported: seconds, speed-up, agreement of the top-1
          predictions, mean overlap of the k-neighbour sets on the first --check-queries
          queries, and both accuracies. Sizes: --knn-sizes N x D train rows, --queries queries.
  kmeans  `sslray.eval.kmeans.kmeans` (faiss, the project's defaults: rows L2-normalised, faiss's
          256 x k training subsample, k random rows as init), also with every row in training
          (`ours_all_rows`), against scikit-learn `KMeans(init="random", n_init=1, algorithm=
          "lloyd", tol=0)` on the same normalised rows, the same number of iterations. The
          objective (sum of squared distances of every row to its nearest centroid) and the
          labels (nearest centroid) are recomputed the same way for both; reported: seconds,
          speed-up, objectives and their ratio, NMI between the two labelings and against the
          mixture's true components.
  linear  `linear_probe_fast` (standardised features, full-batch L-BFGS) against the paper
          protocol's training loop (`sslray.eval.linear`, MoCo main_lincls.py: SGD lr 30,
          momentum 0.9, wd 0, batch 256, lr x0.1 at 60 % and 80 % of --paper-epochs, N(0, 0.01)
          init) on the same cached features. The paper protocol proper augments images through
          the frozen network every epoch; on cached features there is nothing to augment, so
          this times its optimisation only (a lower bound of its cost). Reported: seconds and
          top-1 / top-5 of both.
  gemm    the machine's own ceiling, measured in the same run: torch.mm GFLOP/s of a
          (2000 x D) @ (D x N) product in fp32 (and bf16), best of 3. The kNN and k-means lines
          then carry `floor_s`, the time their dense similarity products alone (2 N Q D and
          2 rows k D iters FLOPs) take at that rate, and `max_speedup` = sklearn_s / floor_s:
          the most any exact fp32 implementation could beat scikit-learn by on this CPU.
Each part first runs both sides once on a few hundred rows, untimed (thread pools, first calls).

Threads: --threads for torch, faiss (OpenMP) and scikit-learn (threadpoolctl limits for BLAS and
OpenMP, and n_jobs), 2 by default: both sides get the same cores.

Example (smoke size, seconds):
  python -m benchmarks.eval_throughput --knn-sizes 2000x64 --queries 500 --kmeans-size 2000x64 \\
      --kmeans-k 10 --linear-size 2000x64 --linear-test 500 --paper-epochs 2
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a file: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.provenance import (  # noqa: E402
    JsonLines,
    command_line,
    log,
    provenance,
    wait_quiet,
)

BENCH = "eval_throughput"
PARTS = ("gemm", "knn", "kmeans", "linear")
LATENT = 32


def mixture(n_train: int, n_test: int, dim: int, components: int, seed: int, sep: float,
            noise: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train_x, train_y, test_x, test_y): float32 (N, dim) features, int64 component labels."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(components, LATENT)) * sep
    proj = rng.normal(size=(LATENT, dim)) / math.sqrt(LATENT)

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(components, size=n)
        z = centers[y] + rng.normal(size=(n, LATENT))
        x = z @ proj + noise * rng.normal(size=(n, dim))
        return np.ascontiguousarray(x, dtype=np.float32), y.astype(np.int64)

    train_x, train_y = sample(n_train)
    test_x, test_y = sample(n_test)
    return train_x, train_y, test_x, test_y


def parse_size(text: str) -> tuple[int, int]:
    n, _, d = text.lower().partition("x")
    if not d:
        raise argparse.ArgumentTypeError(f"{text!r}: expected N x D, e.g. 60000x512")
    return int(n), int(d)


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


# ------------------------------------------------------------------------------------- kNN
def gemm_gflops(rows: int, n: int, dim: int, dtype: Any, repeats: int = 3) -> float:
    """Best-of-`repeats` GFLOP/s of torch.mm((rows x dim), (dim x n)) on this machine."""
    import torch

    a, b = torch.randn(rows, dim).to(dtype), torch.randn(n, dim).to(dtype)
    torch.mm(a[:64], b[:1024].T)  # untimed first call
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b.T)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * rows * n * dim / best / 1e9


def bench_gemm(n: int, dim: int, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    fp32 = gemm_gflops(2000, n, dim, torch.float32)
    args.gemm_fp32_gflops = fp32  # the kNN and k-means floors below use it
    return {"part": "gemm", "rows": 2000, "n": n, "dim": dim,
            "fp32_gflops_per_s": round(fp32, 1),
            "bf16_gflops_per_s": round(gemm_gflops(2000, n, dim, torch.bfloat16), 1)}


def floor_fields(flop: float, sklearn_s: float, args: argparse.Namespace) -> dict[str, Any]:
    """The fp32 GEMM floor of `flop` FLOPs, from this run's `gemm` part (absent without it)."""
    peak = getattr(args, "gemm_fp32_gflops", None)
    if not peak:
        return {}
    floor_s = flop / (peak * 1e9)
    return {"gflop": round(flop / 1e9, 1), "floor_s": round(floor_s, 3),
            "max_speedup": round(sklearn_s / floor_s, 3)}


def bench_knn(n: int, dim: int, args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from sklearn.neighbors import KNeighborsClassifier

    from sslray.eval.knn import _index, knn_classify

    train_x, train_y, test_x, test_y = mixture(n, args.queries, dim, args.classes, args.seed,
                                               args.sep)
    k, temp = min(args.k, n), args.temperature
    tx, ty, qx = (torch.from_numpy(a) for a in (train_x, train_y, test_x))
    # Untimed warm-up of both (thread pools, first-call set-up) on 100 rows.
    knn_classify(tx[:100], ty[:100], qx[:10], k=5, num_classes=args.classes)
    KNeighborsClassifier(n_neighbors=5, algorithm="brute", n_jobs=args.threads).fit(
        train_x[:100], train_y[:100]).predict(test_x[:10])

    t0 = time.perf_counter()
    ours = knn_classify(tx, ty, qx, k=k, temperature=temp, num_classes=args.classes).numpy()
    ours_s = time.perf_counter() - t0

    def weights(dist: np.ndarray) -> np.ndarray:
        return np.exp((1.0 - dist.astype(np.float64) ** 2 / 2.0) / temp)  # cos = 1 - d^2 / 2

    t0 = time.perf_counter()
    clf = KNeighborsClassifier(n_neighbors=k, algorithm="brute", metric="euclidean",
                               weights=weights, n_jobs=args.threads)
    clf.fit(_normalise(train_x), train_y)
    theirs = clf.predict(_normalise(test_x))
    sk_s = time.perf_counter() - t0

    m = min(args.check_queries, args.queries)
    index = _index(dim)
    index.add(np.ascontiguousarray(_normalise(train_x), dtype=np.float32))
    _, ours_nb = index.search(np.ascontiguousarray(_normalise(test_x[:m]), dtype=np.float32), k)
    sk_nb = clf.kneighbors(_normalise(test_x[:m]), return_distance=False)
    overlap = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ours_nb, sk_nb)]))
    return {
        "part": "knn", "train": n, "dim": dim, "queries": args.queries, "k": k,
        "temperature": temp, "classes": args.classes,
        "ours_s": round(ours_s, 3), "sklearn_s": round(sk_s, 3),
        "speedup": round(sk_s / ours_s, 3),
        "ours_queries_per_s": round(args.queries / ours_s, 1),
        "sklearn_queries_per_s": round(args.queries / sk_s, 1),
        "top1_agreement": round(float((ours == theirs).mean()), 5),
        "neighbour_overlap": round(overlap, 5), "overlap_queries": m,
        "ours_top1": round(float((ours == test_y).mean()), 5),
        "sklearn_top1": round(float((theirs == test_y).mean()), 5),
        **floor_fields(2.0 * n * args.queries * dim, sk_s, args),
    }


# ---------------------------------------------------------------------------------- k-means
def _assign(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, float]:
    """Nearest centroid of every row and the objective (sum of squared distances), float64."""
    c = centroids.astype(np.float64)
    labels = np.empty(x.shape[0], dtype=np.int64)
    total = 0.0
    for s in range(0, x.shape[0], 8192):
        xb = x[s:s + 8192].astype(np.float64)
        d = (xb * xb).sum(1, keepdims=True) - 2 * xb @ c.T + (c * c).sum(1)
        labels[s:s + 8192] = d.argmin(1)
        total += float(np.maximum(d.min(1), 0).sum())
    return labels, total


def bench_kmeans(n: int, dim: int, args: argparse.Namespace) -> dict[str, Any]:
    from sklearn.cluster import KMeans

    from sslray.eval.kmeans import kmeans, nmi

    k, iters = args.kmeans_k, args.kmeans_iters
    x, truth, _, _ = mixture(n, 1, dim, args.kmeans_components, args.seed, args.kmeans_sep)
    # Untimed warm-up of both (thread pools, first-call set-up) on 200 rows.
    kmeans(x[:200], 4, seed=args.seed, iters=2)
    KMeans(n_clusters=4, init="random", n_init=1, max_iter=2).fit(x[:200])

    t0 = time.perf_counter()
    ours = kmeans(x, k, seed=args.seed, iters=iters)
    ours_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours_all = kmeans(x, k, seed=args.seed, iters=iters,
                      max_points_per_centroid=math.ceil(n / k))
    ours_all_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    xn = _normalise(x)
    sk = KMeans(n_clusters=k, init="random", n_init=1, max_iter=iters, tol=0.0,
                algorithm="lloyd", random_state=args.seed).fit(xn)
    sk_s = time.perf_counter() - t0

    xn = _normalise(x).astype(np.float32)
    lab_ours, obj_ours = _assign(xn, ours.centroids)
    lab_all, obj_all = _assign(xn, ours_all.centroids)
    lab_sk, obj_sk = _assign(xn, sk.cluster_centers_)
    return {
        "part": "kmeans", "rows": n, "dim": dim, "k": k, "iters": iters,
        "components": args.kmeans_components,
        "ours_train_rows": min(n, 256 * k),
        "ours_s": round(ours_s, 3), "ours_all_rows_s": round(ours_all_s, 3),
        "sklearn_s": round(sk_s, 3), "sklearn_iters": int(sk.n_iter_),
        "speedup": round(sk_s / ours_s, 3), "speedup_all_rows": round(sk_s / ours_all_s, 3),
        "ours_objective": round(obj_ours, 3), "ours_all_rows_objective": round(obj_all, 3),
        "sklearn_objective": round(obj_sk, 3),
        "objective_ratio": round(obj_ours / obj_sk, 5),
        "objective_ratio_all_rows": round(obj_all / obj_sk, 5),
        "nmi_ours_vs_sklearn": round(nmi(lab_ours, lab_sk), 5),
        "nmi_ours_all_rows_vs_sklearn": round(nmi(lab_all, lab_sk), 5),
        "nmi_ours_vs_truth": round(nmi(lab_ours, truth), 5),
        "nmi_sklearn_vs_truth": round(nmi(lab_sk, truth), 5),
        "ours_empty_clusters": ours.empty_clusters,
        # ours clusters its 256 x k subsample: its floor is that many rows' products
        **floor_fields(2.0 * min(n, 256 * k) * k * dim * iters, sk_s, args),
        **{f"{key}_all_rows": v for key, v in
           floor_fields(2.0 * n * k * dim * iters, sk_s, args).items()},
    }


# ----------------------------------------------------------------------------- linear probe
def bench_linear(n: int, dim: int, args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from torch import nn

    from sslray.eval.linear import _paper_scores, _train_paper_head, linear_probe_fast

    train_x, train_y, test_x, test_y = mixture(n, args.linear_test, dim, args.classes,
                                               args.seed, args.sep)
    tx, ty, qx, qy = (torch.from_numpy(a) for a in (train_x, train_y, test_x, test_y))

    t0 = time.perf_counter()
    fast = linear_probe_fast(tx, ty, qx, qy, args.classes)
    fast_s = time.perf_counter() - t0

    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    batch = min(256, n)

    def epoch_batches() -> Any:
        order = torch.randperm(n, generator=g)
        for s in range(0, n - batch + 1, batch):  # full batches, as the paper protocol
            idx = order[s:s + batch]
            yield tx[idx], ty[idx]

    t0 = time.perf_counter()
    head = _train_paper_head(nn.Identity(), epoch_batches, args.classes, args.paper_epochs,
                             args.paper_lr, "cpu")
    paper = _paper_scores(head, qx, qy, args.classes)
    paper_s = time.perf_counter() - t0
    return {
        "part": "linear", "train": n, "test": args.linear_test, "dim": dim,
        "classes": args.classes, "paper_epochs": args.paper_epochs, "paper_lr": args.paper_lr,
        "fast_s": round(fast_s, 3), "paper_s": round(paper_s, 3),
        "speedup": round(paper_s / fast_s, 3),
        "fast_top1": round(fast["top1"], 5), "paper_top1": round(paper["top1"], 5),
        "fast_top5": round(fast.get("top5", float("nan")), 5),
        "paper_top5": round(paper.get("top5", float("nan")), 5),
    }


# ----------------------------------------------------------------------------------- driver
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default=",".join(PARTS),
                   help="comma-separated: gemm,knn,kmeans,linear")
    p.add_argument("--knn-sizes", default="60000x512,10000x128",
                   help="comma-separated N x D training sets for kNN")
    p.add_argument("--queries", type=int, default=10000)
    p.add_argument("--check-queries", type=int, default=1000,
                   help="queries whose neighbour sets are compared")
    p.add_argument("--k", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.07)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--sep", type=float, default=0.5, help="class separation (kNN, linear)")
    p.add_argument("--kmeans-size", type=parse_size, default=(60000, 512))
    p.add_argument("--kmeans-k", type=int, default=100)
    p.add_argument("--kmeans-iters", type=int, default=20)
    p.add_argument("--kmeans-components", type=int, default=100)
    p.add_argument("--kmeans-sep", type=float, default=1.0)
    p.add_argument("--linear-size", type=parse_size, default=(60000, 512))
    p.add_argument("--linear-test", type=int, default=10000)
    p.add_argument("--paper-epochs", type=int, default=100)
    p.add_argument("--paper-lr", type=float, default=30.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                   help="before each part wait up to S s for < 0.25 busy cores")
    p.add_argument("--out", default=None)
    p.add_argument("--append", action="store_true")
    args = p.parse_args(argv)
    args.parts = [x for x in PARTS if x in set(args.parts.split(","))]
    args.knn_sizes = [parse_size(s) for s in args.knn_sizes.split(",") if s]
    args.command = command_line("benchmarks.eval_throughput", argv)
    return args


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    import faiss
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    jobs: list[tuple[str, Any, tuple[int, int]]] = []
    if "gemm" in args.parts and args.knn_sizes:
        jobs.append(("gemm", bench_gemm, args.knn_sizes[0]))
    if "knn" in args.parts:
        jobs += [("knn", bench_knn, size) for size in args.knn_sizes]
    if "kmeans" in args.parts:
        jobs.append(("kmeans", bench_kmeans, args.kmeans_size))
    if "linear" in args.parts:
        jobs.append(("linear", bench_linear, args.linear_size))
    records = []
    with JsonLines(args.out, args.append) as out, threadpool_limits(limits=args.threads):
        for name, fn, (n, dim) in jobs:
            busy = wait_quiet(args.wait_quiet)
            log(f"[{BENCH}] {name} {n}x{dim} ...")
            record = {"bench": BENCH, **fn(n, dim, args), "threads": args.threads,
                      "seed": args.seed, "busy_cores_before": busy,
                      **provenance("faiss", "sklearn"), "command": args.command}
            records.append(out.emit(record))
    return records


if __name__ == "__main__":
    main()
