"""The automatic caption: what a reader needs to trust (or distrust) a number.

Users of SSL code bases mostly ask "which protocol produced this?" (online vs. offline linear
probe, kNN settings, epochs; docs/papers.md#evaluation-protocols), so every table states its
evaluation protocol, pre-training budget, data, backbone, where the numbers came from (sweep, git
revision, library versions) and how many trials finished, stopped or failed. A protocol value that
differs between the aggregated trials is listed as a set, never hidden behind the first trial's
value.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd

from analysis.load import STATUSES, STOPPED
from analysis.values import fmt_value, norm_value

if TYPE_CHECKING:
    from analysis.spec import Spec

__all__ = ["build_caption", "distinct"]


def distinct(df: pd.DataFrame, column: str, missing: str | None = None) -> str | None:
    """"200" for one value, "{20, 200}" for several, None if the column is absent/empty.

    `missing` names what a None means (train_subset None = the whole split); otherwise Nones
    are left out.
    """
    if column not in df.columns or df.empty:
        return None
    seen: dict[Any, str] = {}
    for value in df[column]:
        key = norm_value(value)
        if key is None:
            if missing is not None:
                seen[("z", missing)] = missing
            continue
        seen.setdefault(key, fmt_value(value))
    if not seen:
        return None
    values = [seen[k] for k in sorted(seen)]
    return values[0] if len(values) == 1 else "{" + ", ".join(values) + "}"


def _protocol(spec: Spec, df: pd.DataFrame) -> str | None:
    metrics = [m.metric for m in spec.metrics] + ([spec.figure.y] if spec.figure else [])
    parts = []
    if any("knn" in m for m in metrics):
        k, t = distinct(df, "eval.knn_k"), distinct(df, "eval.knn_temperature")
        center = distinct(df, "eval.knn_center")
        parts.append("kNN " + ", ".join(x for x in (k and f"k={k}", t and f"T={t}") if x)
                     + (" on mean-centred features" if center == "true" else
                        f" (mean-centred: {center})" if center and center.startswith("{") else ""))
    if any("linear_fast" in m for m in metrics):
        parts.append("linear probe fast (trained on cached frozen features)")
    if any("linear_paper" in m for m in metrics):
        epochs = distinct(df, "eval.linear_paper_epochs")
        parts.append("linear probe paper protocol" + (f" ({epochs} epochs)" if epochs else ""))
    transfer = sorted({m.split("/")[1] for m in metrics if m.startswith("transfer/") and
                       m.count("/") >= 2})
    if transfer:
        parts.append(f"transfer to {', '.join(transfer)}: the frozen backbone, same probes")
    if any(m.startswith("finetune/") for m in metrics):
        ft = [f"{v} {what}" for key, what in (("epochs", "epochs"), ("lr", "lr"),
                                             ("train_subset", "labelled images"))
              if (v := distinct(df, f"eval.finetune.{key}")) is not None]
        parts.append("fine-tuning: all layers + a new linear head"
                     + (f" ({', '.join(ft)})" if ft else ""))
    if any(m.startswith("detection/") for m in metrics):
        det = [f"{what} {v}" for key, what in (("dataset", "on"), ("n_train", "train images"),
                                              ("epochs", "epochs"), ("iterations", "iterations"),
                                              ("image_size", "image size"), ("lr", "lr"),
                                              ("bn", "BN"))
               if (v := distinct(df, f"eval.detection.{key}")) is not None]
        parts.append("detection: Faster R-CNN + FPN fine-tuned, COCO AP on the test split"
                     + (f" ({', '.join(det)})" if det else ""))
    pre = []
    if (epochs := distinct(df, "train.epochs")) is not None:
        pre.append(f"{epochs} epochs")
    if (batch := distinct(df, "train.batch_size")) is not None:
        pre.append(f"batch {batch}")
    if (dataset := distinct(df, "data.dataset")) is not None:
        subset = distinct(df, "data.train_subset", missing="all")
        pre.append(dataset + (f" (train subset {subset})" if subset and subset != "all" else ""))
    if (arch := distinct(df, "backbone.arch")) is not None:
        pre.append(f"backbone {arch}")
    if pre:
        parts.append("pre-training " + ", ".join(pre))
    return "Protocol: " + "; ".join(parts) + "." if parts else None


def _provenance(meta: dict[str, Any]) -> str:
    versions = meta.get("versions") or {}
    libs = ", ".join(f"{k} {v}" for k, v in versions.items())
    git = meta.get("git_revision") or "unknown"
    inner = f"git {git}" + (f"; {libs}" if libs else "")
    return f"Sweep {meta.get('name', '?')} ({inner})."


def _counts(filtered: pd.DataFrame, spec: Spec) -> str:
    counts = filtered["status"].value_counts()
    listed = ", ".join(f"{int(counts[s])} {s}" for s in STATUSES if counts.get(s, 0))
    used = "finished and stopped-early" if spec.include_stopped else "finished"
    text = f"Trials: {listed or 'none'}; cells use {used} trials."
    if spec.include_stopped and counts.get(STOPPED, 0):
        text += " Stopped-early trials contribute their last report (fewer epochs)."
    if "device_hours" in filtered.columns:
        hours = pd.to_numeric(filtered["device_hours"], errors="coerce").sum()
        if hours > 0:
            text += f" Compute: {hours:.3g} device-hours."
    return text


def build_caption(
    spec: Spec,
    meta: dict[str, Any],
    filtered: pd.DataFrame,
    trials: pd.DataFrame,
    notes: list[str] | None = None,
) -> str:
    """Plain-text caption (Unicode ±; the LaTeX renderer escapes it).

    `filtered`: every trial that passed the spec's filter (counted by status);
    `trials`: the aggregated ones (their configs describe the protocol).
    """
    parts = []
    if meta.get("smoke"):
        # `sslray sweep --smoke` shrinks every trial to test the plumbing: numbers mean nothing.
        parts.append("SMOKE RUN (every trial shrunk to seconds): the numbers are not results.")
    if spec.caption.strip():
        parts.append(spec.caption.strip())
    parts.append("Mean ± std over seeds, n = trials per cell; best per column in bold.")
    protocol = _protocol(spec, trials if not trials.empty else filtered)
    if protocol:
        parts.append(protocol)
    if spec.init_row and not spec.is_pivot:
        parts.append(
            f'Row "{spec.init_row}": the same backbone untrained, averaged within each seed, '
            "then mean ± std over seeds (n = seeds)."
        )
    if spec.pixels_row and not spec.is_pivot:
        parts.append(f'Row "{spec.pixels_row}": the same probes on the normalised pixels.')
    if spec.filter:
        shown = ", ".join(
            f"{k}={'/'.join(fmt_value(x) for x in v) if isinstance(v, list) else fmt_value(v)}"
            for k, v in spec.filter.items()
        )
        parts.append(f"Only trials with {shown}.")
    for note in notes or []:
        parts.append(f"Note: {note}.")
    parts.append(_provenance(meta))
    parts.append(_counts(filtered, spec))
    return " ".join(parts)
