"""The AIM symbology identifier a scanner may put before the data (``]C0`` Code 128, ``]d2`` GS1 DataMatrix).

Sources note it on the :class:`~agent.read.Read` so the ledger knows what was
read even when the code check rejects the text; the raw bytes keep it too.

>>> symbology(b"]d201069012345678921721")
']d2'
>>> symbology(b"81234567890123456789\\r") is None
True
"""

from __future__ import annotations

import re

from agent.codes import AIM_PATTERN

_AIM = re.compile(AIM_PATTERN.encode("ascii"))


def symbology(raw: bytes) -> str | None:
    """The three-character AIM identifier at the start of ``raw`` (after spaces), or None."""
    match = _AIM.match(raw.lstrip(b" "))
    return match.group().decode("ascii") if match else None
