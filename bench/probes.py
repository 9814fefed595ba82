"""What the machine alone costs a scan, with none of the agent's work: a disk flush, and a
fixed piece of CPU work after the same idle.

A scan is a few hundred microseconds of work after an idle spell, ended by a flush. On a
shared VM the same fixed piece of pure Python can take ten times as long now and then, and
the disk's flush has a tail of its own; the scan meets both. bench/feedback_latency.py runs
both probes between its scans, bench/cpu_probe.py the CPU one on its own.

>>> with FsyncProbe("/dev/shm") as flush:
...     flush() > 0
True
>>> timed_spin(loops_for(0.0001)) > 0
True
"""

from __future__ import annotations

import os
import tempfile
import time


class FsyncProbe:
    """One write of ``size`` bytes plus fdatasync into a file of its own in ``directory``,
    per call: what the disk costs a commit's flush."""

    def __init__(self, directory: str, size: int = 32 * 1024) -> None:
        self.file = tempfile.NamedTemporaryFile(dir=directory)  # noqa: SIM115 (closed by __exit__)
        self.block = os.urandom(size)

    def __call__(self) -> float:
        """Seconds the write and its flush took."""
        t0 = time.monotonic()
        os.pwrite(self.file.fileno(), self.block, 0)
        os.fdatasync(self.file.fileno())
        return time.monotonic() - t0

    def __enter__(self) -> FsyncProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()


def fsync_probe(directory: str, times: int = 300) -> list[float]:
    """Seconds for each of ``times`` :class:`FsyncProbe` calls, 2 ms apart."""
    seconds = []
    with FsyncProbe(directory) as flush:
        for _ in range(times):
            seconds.append(flush())
            time.sleep(0.002)
    return seconds


def spin(loops: int) -> int:
    """A fixed piece of pure-Python work: ``loops`` turns of an integer loop, no I/O."""
    total = 0
    for i in range(loops):
        total ^= i
    return total


def timed_spin(loops: int) -> float:
    """Seconds that :func:`spin` of ``loops`` took just now."""
    t0 = time.perf_counter()
    spin(loops)
    return time.perf_counter() - t0


def loops_for(seconds: float, tries: int = 5, apart: float = 0.03) -> int:
    """How many :func:`spin` loops take about ``seconds`` back to back on this CPU.

    The fastest of ``tries`` timings ``apart`` seconds apart: a slow moment of the machine
    lasts tens of milliseconds, and one that covered every try would shrink the work.
    """
    fastest = float("inf")
    for _ in range(tries):
        time.sleep(apart)
        spin(1_000)  # warm again after the sleep, so the timing is of the loop, not of waking
        fastest = min(fastest, timed_spin(20_000))
    return max(1, round(seconds * 20_000 / fastest))
