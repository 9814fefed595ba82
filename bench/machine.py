"""What the scripts in bench/ share: one line naming the machine a benchmark ran on,
percentiles, and a row of them.

>>> "cores" in describe()
True
>>> pct([1.0, 2.0, 3.0], 50)
2.0
>>> row("flush", [0.001, 0.002, 0.003])
'       flush   2.000   2.980   3.000'
"""

from __future__ import annotations

import os
import platform
import statistics
from datetime import UTC, datetime
from pathlib import Path


def describe() -> str:
    """Architecture, CPU (or, on a Raspberry Pi, the board), cores, Python."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip().lower(), value.strip())
    except OSError:
        pass
    # x86 names the CPU in "model name"; a Raspberry Pi names the board in "Model".
    cpu = fields.get("model name") or fields.get("model") or fields.get("hardware") or platform.processor() or "?"
    return f"{platform.machine()} · {cpu} · {os.cpu_count()} cores · Python {platform.python_version()}"


def header() -> str:
    """The two lines every benchmark prints first: machine and date."""
    return f"machine: {describe()}\ndate:    {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"


def pct(values: list[float], q: int) -> float:
    """The ``q``-th percentile of ``values`` (inclusive method; one value is its own)."""
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def row(label: str, seconds: list[float], width: int = 12) -> str:
    """``label`` right-aligned in ``width``, then the p50, p99 and max of ``seconds`` in ms."""
    ms = [v * 1000 for v in seconds]
    return f"{label:>{width}} {pct(ms, 50):7.3f} {pct(ms, 99):7.3f} {max(ms):7.3f}"
