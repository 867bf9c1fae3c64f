"""Model parts: backbones, heads, momentum (EMA) helpers, queues. No method logic here."""

from sslray.models.backbones import Backbone, build_backbone
from sslray.models.heads import linear_head, mlp_head
from sslray.models.momentum import copy_params_, cosine_ema_decay, ema_update_, momentum_copy
from sslray.models.norm import SplitBatchNorm2d
from sslray.models.queue import FeatureQueue, MemoryBank

__all__ = [
    "Backbone",
    "FeatureQueue",
    "MemoryBank",
    "SplitBatchNorm2d",
    "build_backbone",
    "copy_params_",
    "cosine_ema_decay",
    "ema_update_",
    "linear_head",
    "mlp_head",
    "momentum_copy",
]
