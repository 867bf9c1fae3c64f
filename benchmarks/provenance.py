"""Where a benchmark figure comes from: machine, versions, git revision, command, time.

Every JSON line the benchmark scripts print carries these fields, so a results file read months
later still says which machine and which code produced each number.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import IO, Any

from sslray.provenance import git_revision, usable_cpus, versions

ROOT = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_isa() -> str:
    """The vector instruction set torch's CPU kernels use here (AVX512, AVX2, ...): two hosts
    of one model name (AMD EPYC) differ by it, and bf16 is native only with AVX-512 BF16."""
    try:
        import torch

        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # noqa: BLE001  (a benchmark without torch still records the rest)
        return "unknown"


def usable_cores() -> int:
    return usable_cpus()


def provenance(*packages: str) -> dict[str, Any]:
    """The fields every benchmark line carries."""
    return {
        "git_rev": git_revision(ROOT, timeout=10),
        "cpu": cpu_model(),
        "cpu_isa": cpu_isa(),
        "cores": usable_cores(),
        "python": platform.python_version(),
        **versions(("torch", *packages)),
        "timestamp": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def command_line(module: str, argv: list[str] | None) -> str:
    args = sys.argv[1:] if argv is None else argv
    return " ".join(["python -m", module, *(shlex.quote(a) for a in args)])


class JsonLines:
    """Prints each record as one JSON line on stdout and writes it to `path` (when given)."""

    def __init__(self, path: str | Path | None, append: bool = False) -> None:
        self.file: IO[str] | None = None
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.file = open(path, "a" if append else "w")  # noqa: SIM115 (closed in close())

    def emit(self, record: dict[str, Any]) -> dict[str, Any]:
        line = json.dumps(record, sort_keys=False, default=str)
        print(line, flush=True)
        if self.file is not None:
            self.file.write(line + "\n")
            self.file.flush()
        return record

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

    def __enter__(self) -> JsonLines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _busy_jiffies() -> tuple[int, int] | None:
    """(busy, total) jiffies of the whole machine from /proc/stat (steal counts as not ours)."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    steal = v[7] if len(v) > 7 else 0
    guest = sum(v[8:10]) if len(v) > 9 else 0  # already inside user/nice
    total = sum(v) - guest
    return total - idle - steal, total


def busy_cores(interval: float = 1.0) -> float | None:
    """Cores the whole machine kept busy over `interval` seconds (None off Linux).

    Sampled while this benchmark is idle, it is the load of everything else (Ray's idle daemons
    are about 0.05): a figure taken while another job ran is not comparable."""
    a = _busy_jiffies()
    time.sleep(interval)
    b = _busy_jiffies()
    if a is None or b is None or b[1] == a[1]:
        return None
    return round((b[0] - a[0]) / (b[1] - a[1]) * usable_cores(), 3)


def wait_quiet(max_wait_s: float, threshold: float = 0.25) -> float | None:
    """Wait (at most `max_wait_s`) until other processes use fewer than `threshold` cores;
    returns the last busy-cores sample. `max_wait_s` 0: one sample, no waiting."""
    deadline = time.monotonic() + max_wait_s
    while True:
        busy = busy_cores()
        if busy is None or busy < threshold or time.monotonic() >= deadline:
            if busy is not None and busy >= threshold and max_wait_s > 0:
                log(f"machine still busy ({busy:.2f} cores) after {max_wait_s:.0f} s; measuring")
            return busy
        log(f"waiting for a quiet machine ({busy:.2f} busy cores) ...")
        time.sleep(4.0)


def log(msg: str) -> None:
    """Diagnostics go to stderr: stdout holds only JSON lines."""
    print(msg, file=sys.stderr, flush=True)
