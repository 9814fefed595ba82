"""One line naming the machine a benchmark ran on, for every script in bench/, and a probe
of what its CPU alone does to a short piece of work.

>>> "cores" in describe()
True
"""

from __future__ import annotations

import os
import platform
import time
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


def spin(loops: int) -> int:
    """A fixed piece of pure-Python work: ``loops`` turns of a loop that allocates nothing."""
    total = 0
    for i in range(loops):
        total ^= i
    return total


def loops_for(seconds: float) -> int:
    """How many :func:`spin` loops take about ``seconds`` back to back on this CPU (the fastest
    of five tries, so a slow moment while calibrating does not shrink the work).

    >>> loops_for(0.0005) > 0
    True
    """
    per_loop = min(_timed(spin, 20_000) for _ in range(5)) / 20_000
    return max(1, round(seconds / per_loop))


def timed_spin(loops: int) -> float:
    """Seconds that :func:`spin` of ``loops`` took just now.

    A CPU probe: called after the same idle as a scan, its spread is the machine's own (a
    shared VM's slow moments, frequency changes, caches gone cold), which no code on the
    scan path can remove: a scan that takes 0.5 ms of work at p50 cannot beat this at p99.

    >>> timed_spin(loops_for(0.0001)) > 0
    True
    """
    return _timed(spin, loops)


def _timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0
