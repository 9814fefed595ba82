"""Time-ordered unique event ids (UUID version 7, RFC 9562).

Python 3.11 has no ``uuid.uuid7``. Ids from one generator strictly increase,
even within one millisecond or when the wall clock steps back, because the
event id doubles as a sort key upstream.

>>> gen = EventIds()
>>> a, b = gen.next(), gen.next()
>>> a < b and a.version == 7
True
"""

from __future__ import annotations

import os
import time
import uuid


class EventIds:
    """Generator of strictly increasing UUIDv7s."""

    def __init__(self, after: str | uuid.UUID | None = None) -> None:
        """``after``: the last id issued before (e.g. by a previous run); every new id is greater."""
        self._last_ms = 0
        self._counter = 0
        if after is not None:
            value = uuid.UUID(str(after)).int
            self._last_ms = value >> 80
            self._counter = (value >> 64) & 0xFFF

    def next(self, unix_ms: int | None = None) -> uuid.UUID:
        ms = time.time_ns() // 1_000_000 if unix_ms is None else unix_ms
        if ms > self._last_ms:
            self._last_ms = ms
            self._counter = int.from_bytes(os.urandom(2), "big") & 0x3FF
        else:
            # Same millisecond, or the clock went back: stay on the last
            # millisecond and count up (12 bits, then borrow the next ms).
            self._counter += 1
            if self._counter > 0xFFF:
                self._last_ms += 1
                self._counter = 0
        rand_b = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
        value = (self._last_ms & ((1 << 48) - 1)) << 80
        value |= 0x7 << 76 | self._counter << 64 | 0b10 << 62 | rand_b
        return uuid.UUID(int=value)
