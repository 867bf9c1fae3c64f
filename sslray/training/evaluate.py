"""Evaluate a finished run directory again: other probes, the paper protocol, other datasets.

The run's own `config.json` rebuilds the model, its `final.pt` (or latest checkpoint) fills it,
and `eval.*` overrides choose what to measure, so a sweep's runs can be probed again without
pre-training them again.
"""

from __future__ import annotations

import torch

from sslray.config import RunConfig
from sslray.data.streams import load_train_split
from sslray.eval.evaluator import Evaluator
from sslray.methods import MethodContext, as_module, build_method, probe_encoder
from sslray.storage import Location
from sslray.training.checkpoint import load_trained_state


def evaluate_run(cfg: RunConfig, run: Location, device: torch.device | str | None = None,
                 at_init: bool = False) -> dict[str, float]:
    """eval/*, transfer/*, finetune/* and detection/* metrics of the run's trained encoder as
    `cfg.eval` says.

    `at_init`: also measure the same architecture at its random initialisation (suffix _init).
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    state = load_trained_state(run, cfg.method.name)
    data = load_train_split(cfg.data)
    torch.manual_seed(cfg.seed)  # the run's initial weights, for the _init baseline
    ctx = MethodContext.of(cfg, num_samples=len(data), for_training=False)
    method = build_method(cfg.method, ctx)
    module = as_module(method).to(device)
    evaluator = Evaluator(cfg, device, train=data)
    out: dict[str, float] = {}
    if cfg.eval.pixels:  # the same probes on raw pixels (as the network sees them)
        out.update(evaluator.pixels())
    # views of the trunk (no copies): the same modules read the init and, once loaded, the run
    encoder = method.feature_encoder()
    probe = probe_encoder(method, cfg.eval.layer, cfg.eval.pool_grid)
    if at_init:
        out.update(evaluator(probe, suffix="_init"))
        out.update(evaluator.transfer(probe, suffix="_init"))
        out.update(evaluator.finetune(encoder, suffix="_init"))
        out.update(evaluator.detection(encoder, suffix="_init"))
    module.load_state_dict(state["model"])
    out.update(evaluator(probe))
    out.update(evaluator.transfer(probe))
    if cfg.eval.linear_paper_epochs:
        out.update(evaluator.linear_paper(probe))
    out.update(evaluator.finetune(encoder))  # eval.finetune / eval.detection, where set
    out.update(evaluator.detection(encoder))
    return {"epoch": float(state["epoch"]), **out}
