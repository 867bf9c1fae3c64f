"""Progress output for long runs: a live bar on a terminal, one line per epoch everywhere."""

from __future__ import annotations

import sys
import time


class EpochProgress:
    def __init__(self, epochs: int, steps: int, enabled: bool = True) -> None:
        self.epochs, self.steps, self.enabled = epochs, steps, enabled
        self.live = enabled and sys.stdout.isatty()
        self._last = 0.0

    def step(self, epoch: int, step: int, loss: float | None = None) -> None:
        if not self.live or time.monotonic() - self._last < 0.2:
            return
        self._last = time.monotonic()
        done = int(20 * step / max(self.steps, 1))
        bar = "#" * done + "." * (20 - done)
        tail = f" loss {loss:.3f}" if loss is not None else ""
        sys.stdout.write(f"\repoch {epoch + 1}/{self.epochs} [{bar}] {step}/{self.steps}{tail}")
        sys.stdout.flush()

    def end_epoch(self, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        if self.live:
            sys.stdout.write("\r" + " " * 78 + "\r")
        shown = {k: v for k, v in metrics.items() if k not in ("epoch",)}
        parts = [f"epoch {int(metrics['epoch'])}/{self.epochs}"]
        parts += [f"{k.split('/')[-1]} {v:.4g}" for k, v in shown.items()]
        # sys.stdout.write, not print: Ray Train patches print() into a logger (printed twice).
        sys.stdout.write(" | ".join(parts) + "\n")
        sys.stdout.flush()
