"""Jigsaw puzzles: the permutation set and batched puzzle construction (Jigsaw / Jigsaw++).

References: Noroozi & Favaro 2016 (Jigsaw, Algorithm 1: permutations by Hamming distance);
Noroozi et al. 2018 (Jigsaw++: 0-2 tiles replaced by tiles of another image). Recipe details from
the authors' released caffe code (`data_transformer.cpp`, `merge_data_layer.cpp`,
`train_val_cfn_jps++.prototxt`, commit d18dace), see docs/papers.md#jigsaw-puzzle-recipe.

Conventions (those of the released code): a puzzle with label `l` has at tile position `i` the
tile cut from grid cell `perms[l][i]` (cells and positions in row-major order). Occluded positions
still count as positions of the permutation; only their content is foreign.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sslray.atomic_file import atomic_write

_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as torchvision rgb_to_grayscale
MVN_EPS = 1e-4  # on the variance; chosen so flat tiles (FMNIST background) stay flat (caffe: 1e-9)


def make_permutations(n: int, grid_size: int = 3, seed: int = 0) -> np.ndarray:
    """`n` permutations of grid_size**2 tiles, chosen greedily by maximal minimum Hamming distance.

    The first permutation is drawn at random; each next one maximises its minimum Hamming distance
    to those already chosen (ties broken at random). Deterministic for a seed. Returns (n, K)
    int64 with K = grid_size**2. A running minimum-distance array over all K! candidates makes each
    pick O(K!): 9! = 362880 candidates, n=100 in 0.2 s, n=1000 in 0.6 s on this 2-core CPU
    (itertools enumeration included). Greedy min distances for grid 3, seed 0: 8 (n=10), 6 (n=100),
    5 (n=701; the authors' permutations_701.bin has 3).
    """
    k = grid_size * grid_size
    if grid_size < 2:
        raise ValueError(f"grid_size must be >= 2, got {grid_size}")
    if not 1 <= n <= math.factorial(k):
        raise ValueError(f"n must be in [1, {k}!] for grid_size {grid_size}, got {n}")
    cand = np.array(list(itertools.permutations(range(k))), dtype=np.uint8)  # (K!, K)
    cols = np.ascontiguousarray(cand.T)  # (K, K!): contiguous per-position compares
    rng = np.random.default_rng(seed)
    chosen = [int(rng.integers(len(cand)))]
    min_dist = np.full(len(cand), k, dtype=np.uint8)  # (K!,) distance to the chosen set
    for _ in range(n - 1):
        last = cand[chosen[-1]]
        dist = np.zeros(len(cand), dtype=np.uint8)
        for i in range(k):
            dist += cols[i] != last[i]
        np.minimum(min_dist, dist, out=min_dist)  # chosen rows hold 0, so are never picked again
        chosen.append(int(rng.choice(np.flatnonzero(min_dist == min_dist.max()))))
    return cand[chosen].astype(np.int64)


@functools.lru_cache(maxsize=8)
def _cached_permutations(n: int, grid_size: int, seed: int) -> np.ndarray:
    out = make_permutations(n, grid_size, seed)
    out.setflags(write=False)
    return out


def load_or_make_permutations(
    n: int, grid_size: int = 3, seed: int = 0, cache_dir: str | Path | None = None
) -> np.ndarray:
    """`make_permutations`, cached in `cache_dir/permutations_{n}_g{grid}_s{seed}.npy`.

    `cache_dir` None: kept in memory only (per process). A cached file of the wrong shape or with
    rows that are not permutations is an error that names the file (it is not silently replaced).
    """
    if cache_dir is None:
        return _cached_permutations(n, grid_size, seed).copy()
    path = Path(cache_dir) / f"permutations_{n}_g{grid_size}_s{seed}.npy"
    k = grid_size * grid_size
    if path.exists():
        perms = np.load(path)
        ok = perms.shape == (n, k) and bool(
            (np.sort(perms, axis=1) == np.arange(k)).all()
        )
        if not ok:
            raise ValueError(f"{path}: expected {n} permutations of {k}, got shape {perms.shape}")
        return perms.astype(np.int64)
    perms = _cached_permutations(n, grid_size, seed).copy()
    atomic_write(path, lambda f: np.save(f, perms))  # workers never read a half-written file
    return perms


@dataclass
class Puzzles:
    """A batch of puzzles. B images, K = grid**2 positions, tiles of t x t px.

    tiles: (B, K, C, t, t) in position order; labels: (B,) permutation indices;
    occluded: (B, K) bool, positions holding a foreign tile; donors: (B,) the batch index whose
    tiles fill the occluded positions (never the image itself); gray: (B,) bool.
    """

    tiles: torch.Tensor
    labels: torch.Tensor
    occluded: torch.Tensor
    donors: torch.Tensor
    gray: torch.Tensor


def _cut_cells(
    x: torch.Tensor, grid: int, tile: int, jitter: int, shift_px: int, shift_p: float
) -> torch.Tensor:
    """(B, C, S, S) -> (B, K, C, t, t): cell k's tile at a random offset in [0, jitter] per tile
    (caffe: rand()%(jitter+1)), plus a per-channel offset in [0, shift_px] on both axes with
    probability shift_p per tile (caffe: + rand()%3, against chromatic aberration)."""
    b, c, s, _ = x.shape
    cell, dev = s // grid, x.device
    ar = torch.arange(tile, device=dev)
    out = []
    for k in range(grid * grid):  # a loop over the K cells; each cut is batched
        base = torch.randint(0, jitter + 1, (2, b, 1), device=dev)  # (2, B, 1): y, x
        shift = torch.randint(0, shift_px + 1, (2, b, c), device=dev)
        shift = shift * (torch.rand(1, b, 1, device=dev) < shift_p)
        y0 = (k // grid) * cell + base[0] + shift[0]  # (B, C) top row
        x0 = (k % grid) * cell + base[1] + shift[1]
        rows = (y0[..., None] + ar).unsqueeze(-1).expand(b, c, tile, s)  # (B, C, t, S)
        cols = (x0[..., None] + ar).unsqueeze(-2).expand(b, c, tile, tile)  # (B, C, t, t)
        out.append(x.gather(2, rows).gather(3, cols))
    return torch.stack(out, dim=1)


def tile_mvn(tiles: torch.Tensor) -> torch.Tensor:
    """Per-tile, per-channel mean/variance normalisation (caffe MVN, across_channels false).

    tiles: (..., C, t, t) -> same shape, each (tile, channel) plane with mean 0 and std 1.
    """
    mean = tiles.mean(dim=(-2, -1), keepdim=True)
    var = tiles.var(dim=(-2, -1), keepdim=True, unbiased=False)
    return (tiles - mean) / torch.sqrt(var + MVN_EPS)


def make_puzzles(
    x: torch.Tensor,
    perms: torch.Tensor,
    tile: int,
    *,
    jitter: int = 0,
    channel_shift_px: int = 0,
    channel_shift_p: float = 1.0,
    grayscale_p: float = 0.0,
    occlusion_probs: tuple[float, ...] = (1.0,),
    normalize: bool = True,
    labels: torch.Tensor | None = None,
) -> Puzzles:
    """Cut a batch of crops into shuffled, partly occluded puzzles (batched; runs on x's device).

    x: (B, C, S, S) float crops, S divisible by grid; perms: (P, K) permutation set, K = grid**2;
    tile: the tile side t, with t + jitter + channel_shift_px <= S / grid. `occlusion_probs[j]` is
    the probability that j tiles are replaced (Jigsaw++ code: uniform over {0, 1, 2}); they come
    from ONE other image of the batch (a derangement: the batch rolled by a random nonzero offset),
    from distinct random cells, at distinct random positions. Then the whole puzzle goes grayscale
    with p grayscale_p (after occlusion, so a foreign tile never differs in colour mode), then
    per-tile MVN if `normalize`. `labels` (B,): fixed permutation indices (default: uniform).
    """
    b, c, s, s2 = x.shape
    k = perms.shape[1]
    grid = math.isqrt(k)
    if grid * grid != k or s != s2 or s % grid:
        raise ValueError(f"crops {tuple(x.shape)} do not split into a {grid}x{grid} grid")
    if tile + jitter + channel_shift_px > s // grid:
        raise ValueError(
            f"tile {tile} + jitter {jitter} + shift {channel_shift_px} > cell {s // grid} px"
        )
    dev = x.device
    cells = _cut_cells(x, grid, tile, jitter, channel_shift_px, channel_shift_p)  # (B, K, C, t, t)
    if labels is None:
        labels = torch.randint(0, perms.shape[0], (b,), device=dev)
    order = perms.to(dev)[labels]  # (B, K): position i <- cell order[:, i]
    rows = torch.arange(b, device=dev)[:, None]
    tiles = cells[rows, order]  # (B, K, C, t, t)

    probs = torch.tensor(occlusion_probs, device=dev, dtype=torch.float)
    n_occ = torch.multinomial(probs.expand(b, -1), 1).squeeze(1) if b > 1 else torch.zeros(
        b, dtype=torch.long, device=dev)  # (B,): a single image has no donor
    rank = torch.rand(b, k, device=dev).argsort(dim=1).argsort(dim=1)  # random rank per position
    occluded = rank < n_occ[:, None]  # (B, K): n_occ distinct random positions
    offset = int(torch.randint(1, b, ()).item()) if b > 1 else 0
    donors = torch.roll(torch.arange(b, device=dev), -offset)  # donors[i] = (i + offset) % B
    src = torch.rand(b, k, device=dev).argsort(dim=1)  # (B, K): distinct random donor cells
    foreign = cells[donors[:, None], src]  # (B, K, C, t, t)
    tiles = torch.where(occluded[:, :, None, None, None], foreign, tiles)

    gray = torch.rand(b, device=dev) < grayscale_p
    if c == 3 and grayscale_p > 0:
        w = torch.tensor(_LUMA, device=dev, dtype=tiles.dtype).view(1, 1, 3, 1, 1)
        luma = (tiles * w).sum(dim=2, keepdim=True).expand_as(tiles)
        tiles = torch.where(gray[:, None, None, None, None], luma, tiles)
    if normalize:
        tiles = tile_mvn(tiles)
    return Puzzles(tiles, labels, occluded, donors, gray)
