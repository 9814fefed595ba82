"""One line naming the machine a benchmark ran on, for every script in bench/.

>>> "cores" in describe()
True
"""

from __future__ import annotations

import os
import platform
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
