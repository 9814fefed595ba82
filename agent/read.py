"""The one thing every scanner source produces: a :class:`Read`.

A source knows devices, not codes: it hands over the bytes it saw, where they
came from and when. The pipeline does the rest.

>>> r = Read(b"81234567890123456789\\r", source_kind="stdin", source_id="stdin")
>>> r.raw
b'81234567890123456789\\r'
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Read:
    """One scan as a device delivered it.

    ``source_id`` is a stable device identity (``VID:PID:serial``, a by-id
    path, ``stdin``), never ``/dev/input/eventN``. ``t_first`` and ``t_last``
    are :func:`time.monotonic` times of the first and last byte. ``movement``
    overrides the station's movement for scanners configured with their own.
    ``scanner`` is the ``name`` of the ``[[scanners]]`` entry it came from.
    ``reply`` sends bytes back to the scanner (host-ACK), where it can take them.
    """

    raw: bytes
    source_kind: str
    source_id: str
    symbology: str | None = None
    t_first: float = field(default_factory=time.monotonic)
    t_last: float = field(default_factory=time.monotonic)
    movement: str | None = None
    scanner: str = ""
    reply: Callable[[bytes], None] | None = field(default=None, compare=False, repr=False)
