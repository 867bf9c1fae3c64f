"""The METHODS registry: one file per method, one line here per method."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Union

from pydantic import Field

from sslray.methods.byol import BYOL
from sslray.methods.cluster_transfer import ClusterTransfer
from sslray.methods.jigsaw_pp import JigsawPP
from sslray.methods.moco import MoCo
from sslray.methods.protocol import (
    MethodClass,
    MethodConfigBase,
    MethodContext,
    SSLMethod,
    StepOutput,
    as_module,
    probe_encoder,
)
from sslray.methods.supervised import Supervised

METHODS: dict[str, MethodClass] = {
    "moco": MoCo,
    "byol": BYOL,
    "jigsaw_pp": JigsawPP,
    "supervised": Supervised,
    "cc": ClusterTransfer,
}

METHOD_CONFIGS: dict[str, type[MethodConfigBase]] = {
    name: cls.Config for name, cls in METHODS.items()
}

if TYPE_CHECKING:  # the static view of the union (extend it when registering a method)
    from sslray.methods.byol import BYOLConfig
    from sslray.methods.cluster_transfer import ClusterTransferConfig
    from sslray.methods.jigsaw_pp import JigsawPPConfig
    from sslray.methods.moco import MoCoConfig
    from sslray.methods.supervised import SupervisedConfig

    MethodConfig = (
        MoCoConfig | BYOLConfig | JigsawPPConfig | SupervisedConfig | ClusterTransferConfig
    )
elif len(METHOD_CONFIGS) > 1:
    MethodConfig = Annotated[Union[tuple(METHOD_CONFIGS.values())], Field(discriminator="name")]  # type: ignore[valid-type]  # noqa: UP007
else:
    MethodConfig = next(iter(METHOD_CONFIGS.values()))  # type: ignore[misc]


def build_method(cfg: MethodConfigBase, ctx: MethodContext) -> SSLMethod:
    """Instantiate the method `cfg` configures (an nn.Module satisfying SSLMethod)."""
    return METHODS[cfg.name](cfg, ctx)


__all__ = [
    "METHODS",
    "METHOD_CONFIGS",
    "MethodConfig",
    "MethodConfigBase",
    "MethodContext",
    "SSLMethod",
    "StepOutput",
    "as_module",
    "build_method",
    "probe_encoder",
]
