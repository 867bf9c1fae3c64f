"""Jigsaw++: solve a 3x3 jigsaw puzzle in which 0-2 tiles come from another image.

Noroozi, Vinjimoor, Favaro, Pirsiavash 2018 ("Boosting self-supervised learning via knowledge
transfer"), on Jigsaw (Noroozi & Favaro 2016). Recipe from the authors' released caffe code
(train_val_cfn_jps++.prototxt, data_transformer.cpp, merge_data_layer.cpp, commit d18dace); see
docs/papers.md#jigsaw-puzzle-recipe and #jigsaw-network, and `sslray.data.jigsaw` for the puzzle
conventions.
The classifier predicts the permutation index among `num_permutations`: chance is 1 / P and the
loss at initialisation is about log P (6.55 for P = 701).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from sslray.config_types import AugmentConfig
from sslray.data.jigsaw import Puzzles, load_or_make_permutations, make_puzzles, tile_mvn
from sslray.methods.protocol import (
    MethodConfigBase,
    MethodContext,
    StepOutput,
    TrainBatch,
    feature_std,
    tapped,
)
from sslray.models import build_backbone

# The crop the puzzle is cut from. The authors take a fixed 255 px crop of a 256 px (short side)
# image, about 3/4 of its area, no colour jitter (the puzzle has its own grayscale and channel
# shift). Chosen: area 0.5-1 stands in for that, flip 0.5 (a mirrored image is still a puzzle).
JIGSAW_CROP = AugmentConfig(crop_scale=(0.5, 1.0), jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)


class JigsawPPConfig(MethodConfigBase):
    name: Literal["jigsaw_pp"] = "jigsaw_pp"
    num_permutations: int = Field(default=701, ge=2)  # Jigsaw++ code: permutations_701.bin
    permutation_seed: int = 0  # chosen: the set ignores the run's seed (same set across seeds)
    grid: int = Field(default=3, ge=2)  # Jigsaw/Jigsaw++: 3x3 tiles (prototxt siamese_size 9)
    crop_size: int = Field(default=255, ge=2)  # Jigsaw++ code: crop_size 255 -> 85 px cells
    tile_size: int = Field(default=64, ge=1)  # Jigsaw++ code: patch_size 64
    jitter: int = Field(default=18, ge=0)  # Jigsaw++ code: jitter_size 18, offset rand()%19
    channel_shift_px: int = Field(default=2, ge=0)  # Jigsaw++ code: + rand()%3 per channel
    channel_shift_p: float = Field(default=1.0, ge=0, le=1)  # Jigsaw++ code: every tile
    # Whole puzzle to grayscale: released code rand()%10 >= 5, i.e. 0.5; the paper text says 70%.
    grayscale_p: float = Field(default=0.5, ge=0, le=1)
    # P(j foreign tiles), j = 0, 1, ...: code num_sub = rand()%3 (+ min_substitute 0) -> uniform
    # over {0, 1, 2}; the paper only says "0 to 2". The tuple's length sets the maximum.
    occlusion_probs: tuple[float, ...] = (1 / 3, 1 / 3, 1 / 3)
    tile_dim: int = Field(default=1024, ge=1)  # prototxt: fc6 1024 per tile
    hidden_dim: int = Field(default=4096, ge=1)  # prototxt: fc7 4096 over the 9 x 1024 concat
    # prototxt: dropout 0.5 after fc6; the same after fc7 as in CaffeNet (chosen, not verified).
    dropout: float = Field(default=0.5, ge=0, lt=1)
    augment: AugmentConfig = JIGSAW_CROP
    # What the frozen-feature probes (kNN, linear, transfer) read. "image": the trunk on the
    # whole image (the papers transfer the conv layers to whole images). "tiles": the network as
    # it is trained, the trunk on tiles of the image resized to crop_size, each tile normalised
    # (MVN) as in the puzzle, the tile features concatenated in position order: the
    # context-free network's view (Noroozi & Favaro 2016, sec. 3). Fine-tuning and detection
    # always take the trunk itself.
    probe: Literal["image", "tiles"] = "image"
    # Tiles per side for probe "tiles", spaced evenly over the crop (overlapping when more than
    # grid); None: one centred tile per puzzle cell (grid per side).
    probe_grid: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _geometry(self) -> JigsawPPConfig:
        k = self.grid * self.grid
        if self.crop_size % self.grid:
            raise ValueError(f"crop_size {self.crop_size} must be divisible by grid {self.grid}")
        cell = self.crop_size // self.grid
        if self.tile_size + self.jitter + self.channel_shift_px > cell:
            raise ValueError(
                f"tile_size {self.tile_size} + jitter {self.jitter} + channel_shift_px "
                f"{self.channel_shift_px} must fit in a cell of {cell} px (crop_size / grid)"
            )
        if self.probe_grid is not None and self.probe != "tiles":
            raise ValueError(
                f"probe_grid {self.probe_grid} applies to probe: tiles only; with probe: "
                f"{self.probe} remove it (on the command line: method.probe_grid=null)"
            )
        if self.num_permutations > math.factorial(k):
            raise ValueError(f"num_permutations must be <= {k}! = {math.factorial(k)}")
        probs = self.occlusion_probs
        if not probs or min(probs) < 0 or abs(sum(probs) - 1) > 1e-6 or len(probs) > k:
            raise ValueError(
                f"occlusion_probs must be probabilities summing to 1, at most {k} of them "
                f"(at least one own tile stays), got {probs}"
            )
        return self

    @property
    def gap(self) -> int:
        """Slack of a cell around its tile (Jigsaw++: 85 - 64 = 21 px)."""
        return self.crop_size // self.grid - self.tile_size

    @property
    def view_augs(self) -> tuple[AugmentConfig, ...]:
        return (self.augment,)  # one crop; the puzzle is cut from it on the device


def to_crop_size(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) float -> (B, C, size, size), bilinear (antialiased when shrinking): the
    puzzle's crop, for training and for the tile probe alike."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=x.shape[-1] > size)


class TileProbe(nn.Module):
    """(N, C, H, W) -> (N, per_side**2 * D): the trunk on tile_size tiles cut from the image
    resized to crop_size, MVN per tile (as the puzzle's tiles), features concatenated in
    row-major position order. The trunk is held (a submodule: train/eval mode follows this
    module), not copied. `per_side == grid` takes the centred tile of each puzzle cell; more
    tiles are spaced evenly from edge to edge and overlap."""

    def __init__(self, backbone: nn.Module, crop_size: int, tile_size: int, grid: int,
                 per_side: int) -> None:
        super().__init__()
        self.backbone, self.crop_size, self.tile_size = backbone, crop_size, tile_size
        if per_side == grid:
            cell = crop_size // grid
            starts = [i * cell + (cell - tile_size) // 2 for i in range(grid)]
        elif per_side == 1:
            starts = [(crop_size - tile_size) // 2]
        else:
            span = crop_size - tile_size
            starts = [round(i * span / (per_side - 1)) for i in range(per_side)]
        self.starts = starts

    @property
    def out_dim(self) -> int | None:
        """Tiles x the trunk's width (None until a tapped layer's first forward)."""
        width = getattr(self.backbone, "out_dim", None)
        return len(self.starts) ** 2 * int(width) if width else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = to_crop_size(x.float(), self.crop_size)
        t = self.tile_size
        tiles = torch.stack([x[:, :, r:r + t, c:c + t] for r in self.starts
                             for c in self.starts], dim=1)  # (N, K, C, t, t)
        feats = self.backbone(tile_mvn(tiles).flatten(0, 1))  # (N * K, D)
        return feats.view(x.shape[0], -1)


def jigsaw_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the permutation classifier, in fp32 even under autocast.

    logits: (B, P) scores over the permutation set; labels: (B,) int64 indices in [0, P).
    About log P at initialisation (chance accuracy 1 / P).
    """
    with torch.autocast(logits.device.type, enabled=False):
        return F.cross_entropy(logits.float(), labels)


class JigsawPP(nn.Module):
    """Siamese tile encoder (shared weights over the K tiles) -> fc6 per tile -> concat -> fc7 ->
    permutation classifier. `feature_encoder()` is the tile encoder (applied to whole images);
    `probe_encoder()` what the probes read (`method.probe`)."""

    Config = JigsawPPConfig

    def __init__(self, cfg: JigsawPPConfig, ctx: MethodContext) -> None:
        super().__init__()
        self.cfg = cfg
        self.channels_last = ctx.channels_last
        self.backbone = build_backbone(ctx.backbone)
        k = cfg.grid * cfg.grid
        self.fc6 = nn.Sequential(
            nn.Linear(self.backbone.out_dim, cfg.tile_dim), nn.ReLU(inplace=True),
            nn.Dropout(cfg.dropout),
        )
        self.classifier = nn.Sequential(  # fc7 + fc8 over the (B, K * tile_dim) concatenation
            nn.Linear(k * cfg.tile_dim, cfg.hidden_dim), nn.ReLU(inplace=True),
            nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden_dim, cfg.num_permutations),
        )
        perms = load_or_make_permutations(cfg.num_permutations, cfg.grid, cfg.permutation_seed)
        # (P, K) int64; a buffer, so checkpoints carry the set and a resumed run keeps it.
        self.permutations: torch.Tensor
        self.register_buffer("permutations", torch.from_numpy(perms))
        # The set as a file next to the run (Ray Train writes it beside final.pt); the buffer
        # also travels in every checkpoint, so a resumed run keeps it.
        name = f"permutations_{cfg.num_permutations}_g{cfg.grid}_s{cfg.permutation_seed}.npy"
        self._artifacts = {name: perms}
        self.wants_sync_bn = False

    def feature_encoder(self) -> nn.Module:
        return self.backbone

    def probe_encoder(self, layer: str = "final", grid: int | None = None) -> nn.Module:
        """What kNN / linear / transfer read (`method.probe`): the trunk, or its tile grid;
        `layer` (`eval.layer`) pooled over `grid` (`eval.pool_grid`): that layer of the trunk,
        on the image or on every tile."""
        cfg = self.cfg
        trunk = tapped(self.backbone, layer, grid)
        if cfg.probe == "image":
            return trunk
        return TileProbe(trunk, cfg.crop_size, cfg.tile_size, cfg.grid,
                         cfg.probe_grid or cfg.grid)

    def artifacts(self) -> Mapping[str, np.ndarray]:
        return self._artifacts

    def puzzles(self, x: torch.Tensor) -> Puzzles:
        """Normalised views (B, C, S, S) -> `Puzzles` cut from crops resized to crop_size."""
        cfg = self.cfg
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            x = to_crop_size(x.float(), cfg.crop_size)
            # Grayscale acts on dataset-normalised values: a luma of (x - m) / s, which per-tile
            # MVN turns into the luma of x up to the small spread of the per-channel s.
            return make_puzzles(
                x, self.permutations, cfg.tile_size, jitter=cfg.jitter,
                channel_shift_px=cfg.channel_shift_px, channel_shift_p=cfg.channel_shift_p,
                grayscale_p=cfg.grayscale_p, occlusion_probs=cfg.occlusion_probs,
            )

    def logits(self, tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tiles (B, K, C, t, t) -> permutation logits (B, P) and tile features (B * K, D)."""
        b, k = tiles.shape[:2]
        flat = tiles.flatten(0, 1)  # (B * K, C, t, t): one pass of the shared-weight encoder
        if self.channels_last:
            flat = flat.contiguous(memory_format=torch.channels_last)
        feats = self.backbone(flat)  # (B * K, D)
        per_tile = self.fc6(feats).view(b, k * self.cfg.tile_dim)  # concat in position order
        return self.classifier(per_tile), feats

    def training_step(self, batch: TrainBatch) -> StepOutput:
        (x,) = batch.views
        p = self.puzzles(x)
        logits, feats = self.logits(p.tiles)
        loss = jigsaw_loss(logits, p.labels)
        acc = (logits.detach().argmax(dim=1) == p.labels).float().mean()
        metrics = {"loss": loss.detach(), "pretext_acc": acc, "feature_std": feature_std(feats)}
        return StepOutput(loss, metrics)

    def forward(self, batch: TrainBatch) -> StepOutput:
        return self.training_step(batch)  # DDP hooks run on forward()

    def after_optimizer_step(self, progress: float) -> None:
        pass  # no momentum encoder
