"""Wall-clock time, and whether the kernel believes it is synchronised.

One seam for every timestamp the agent writes, so tests (and the clock-jump
fault suite) can substitute their own clock.

>>> c = Clock()
>>> c.now().tzinfo is not None
True
"""

from __future__ import annotations

import ctypes
import time
from datetime import UTC, datetime

from agent.libc import libc

_TIME_ERROR = 5  # adjtimex(2): "the clock is not synchronised"
_SYNC_RECHECK_S = 30.0


class Clock:
    """UTC wall clock plus the kernel's NTP sync flag (cached for 30 s)."""

    def __init__(self) -> None:
        self._synced = False
        self._checked_at = float("-inf")

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    def synchronised(self) -> bool:
        if time.monotonic() - self._checked_at > _SYNC_RECHECK_S:
            self._synced = _kernel_says_synchronised()
            self._checked_at = time.monotonic()
        return self._synced


class _Timex(ctypes.Structure):
    # struct timex is 208 bytes on 64-bit Linux; only `modes` (first field,
    # zero = read only) matters to us, the rest is room for the kernel to write.
    _fields_ = [("modes", ctypes.c_uint), ("_rest", ctypes.c_byte * 256)]


def _kernel_says_synchronised() -> bool:
    try:
        state = libc("adjtimex").adjtimex(ctypes.byref(_Timex()))
    except (OSError, AttributeError):  # no libc with adjtimex: None has no attribute either
        return False
    return 0 <= state != _TIME_ERROR


def iso(moment: datetime) -> str:
    """Millisecond ISO-8601 in UTC, the form stored in the ledger.

    >>> iso(datetime(2026, 1, 1, tzinfo=UTC))
    '2026-01-01T00:00:00.000Z'
    """
    # isoformat is C all the way; strftime cost the scan path 0.05 ms (cold, each scan)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")[:-6] + "Z"
