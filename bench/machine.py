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
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.machine()} · {cpu} · {os.cpu_count()} cores · Python {platform.python_version()}"


def header() -> str:
    """The two lines every benchmark prints first: machine and date."""
    return f"machine: {describe()}\ndate:    {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
