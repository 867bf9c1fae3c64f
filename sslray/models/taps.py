"""Features of an intermediate layer, average-pooled: which layer the probes read and the CC step
clusters (`eval.layer`, `eval.pool_grid`).

Noroozi et al. (CVPR 2018) leave the clustered layer open (a port clusters VGG16 conv4; VISSL's
ClusterFit defaults to res5), so it is a hyperparameter (`method.layer` of `cc`). Names:

- "final": the backbone's own output (N, out_dim).
- "stage-1", "stage-2", ...: the last, penultimate, ... stage of a ResNet (SmallResNet.stages,
  TorchvisionResNet layer4, layer3, ...), pooled over space.
- "conv1" ... "convN": an AlexNet-style backbone with a `features` nn.Sequential: the output of
  the N-th convolution (after its ReLU when one follows), pooled over space.
- A backbone may also name its own taps: a `taps() -> dict[str, nn.Module]` method wins over all
  the rules above (the output of each named module is pooled).

Pooling: over all of space (global average), or over a g x g grid of regions (`grid`, the
C x g x g map flattened to C * g**2 features; Goyal et al. 2019 pool each ResNet stage's map to
about 9k features so the layers compare at one size). With a grid, "final" reads the map the
backbone itself pools (its last stage, or its conv tower), as it is before that pooling.

The forward pass stops at the tapped module (a forward hook raises), so the later layers cost
nothing.
"""

from __future__ import annotations

from torch import Tensor, nn


class _Tapped(Exception):  # noqa: N818  (control flow, not an error)
    def __init__(self, output: Tensor) -> None:
        super().__init__()
        self.output = output


def _stage_list(backbone: nn.Module) -> list[nn.Module]:
    stages = getattr(backbone, "stages", None)
    if isinstance(stages, nn.Sequential):  # SmallResNet
        return list(stages)
    net = getattr(backbone, "net", None)  # TorchvisionResNet wraps torchvision's ResNet
    names = [f"layer{i}" for i in range(1, 5)]
    if net is not None and all(isinstance(getattr(net, n, None), nn.Module) for n in names):
        return [getattr(net, n) for n in names]
    return []


def _conv_taps(backbone: nn.Module) -> dict[str, nn.Module]:
    """conv1..convN of a `features` Sequential: each conv's following ReLU, else the conv."""
    features = getattr(backbone, "features", None)
    if not isinstance(features, nn.Sequential):
        return {}
    mods = list(features)
    taps: dict[str, nn.Module] = {}
    for i, m in enumerate(mods):
        if isinstance(m, nn.Conv2d):
            j = i + 1
            while j < len(mods) and isinstance(mods[j], nn.BatchNorm2d | nn.GroupNorm):
                j += 1
            relu = j < len(mods) and isinstance(mods[j], nn.ReLU | nn.LeakyReLU)
            taps[f"conv{len(taps) + 1}"] = mods[j] if relu else m
    return taps


def layer_modules(backbone: nn.Module) -> dict[str, nn.Module | None]:
    """Tap name -> module whose output is read (None: the backbone output, "final")."""
    out: dict[str, nn.Module | None] = {"final": None}
    own = getattr(backbone, "taps", None)
    if callable(own):
        out.update(own())
        return out
    stages = _stage_list(backbone)
    out.update({f"stage-{i}": m for i, m in enumerate(reversed(stages), start=1)})
    out.update(_conv_taps(backbone))
    return out


def last_map(backbone: nn.Module) -> nn.Module | None:
    """The module whose output map the backbone pools into its "final" features (a ResNet's last
    stage, an AlexNet-style tower's `features`), or None when there is no such module."""
    stages = _stage_list(backbone)
    if stages:
        return stages[-1]
    features = getattr(backbone, "features", None)
    return features if isinstance(features, nn.Module) else None


def available_layers(backbone: nn.Module) -> list[str]:
    """The layer names `LayerFeatures` accepts for this backbone ("final" always)."""
    return list(layer_modules(backbone))


class LayerFeatures(nn.Module):
    """(N, 3, H, W) -> (N, C * g**2): the output of one layer of a backbone, average-pooled over
    a g x g grid of regions (`grid`; None: global average pooling, and "final" the backbone's own
    output).

    The backbone is held, not copied: its train/eval mode follows this module's (so
    `eval.features.frozen(LayerFeatures(...))` reads BatchNorm running statistics).
    `out_dim` is known after the first forward (None before).
    """

    def __init__(self, backbone: nn.Module, layer: str = "final", grid: int | None = None) -> None:
        super().__init__()
        taps = layer_modules(backbone)
        if layer not in taps:
            raise ValueError(
                f"layer {layer!r} is not a layer of {type(backbone).__name__}; "
                f"choose one of: {', '.join(taps)}"
            )
        if grid is not None and grid < 1:
            raise ValueError(f"grid {grid}: pool over a grid of at least 1 x 1 regions")
        self.backbone, self.layer, self.grid = backbone, layer, grid
        tap = taps[layer]
        if tap is None and grid is not None:
            tap = last_map(backbone)
            if tap is None:
                raise ValueError(f"{type(backbone).__name__} has no last map to pool over a "
                                 f"{grid} x {grid} grid (no stages, no `features` tower)")
        self._tap = (tap,)  # a tuple: the module is the backbone's, not registered twice here
        self.out_dim: int | None = getattr(backbone, "out_dim", None) if tap is None else None

    def forward(self, x: Tensor) -> Tensor:
        tap = self._tap[0]
        if tap is None:
            return self.backbone(x)

        def hook(_m: nn.Module, _inp: object, output: Tensor) -> None:
            raise _Tapped(output)

        handle = tap.register_forward_hook(hook)
        try:
            self.backbone(x)
        except _Tapped as tapped:
            out = tapped.output
        else:
            raise RuntimeError(f"layer {self.layer!r} was not reached in the backbone's forward")
        finally:
            handle.remove()
        if out.dim() == 4 and self.grid is not None:  # (N, C, H, W) -> (N, C * g * g)
            out = nn.functional.adaptive_avg_pool2d(out, self.grid).flatten(1)
        elif out.dim() == 4:  # (N, C, H, W) -> (N, C): global average pooling
            out = out.mean(dim=(2, 3))
        elif out.dim() != 2:
            raise ValueError(
                f"layer {self.layer!r} gives shape {tuple(out.shape)}; want 2-D or 4-D"
            )
        self.out_dim = int(out.shape[1])
        return out
