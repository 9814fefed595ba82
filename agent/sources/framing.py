"""Cutting a serial byte stream into scans: terminators, an inter-byte timeout, overlong lines.

Pure: bytes and times in, :class:`Frame` objects out, so every case can be
tested without a port.

>>> f = LineFramer("any")
>>> [fr.raw for fr in f.feed(b"8123\\r\\n456", now=1.0)]
[b'8123\\r']
>>> [fr.raw for fr in f.feed(b"\\n", now=1.1)]
[b'456\\n']

A CR LF split across two reads is still one terminator, never an empty scan:

>>> f = LineFramer("any")
>>> [fr.raw for fr in f.feed(b"8123\\r", 1.0)] + [fr.raw for fr in f.feed(b"\\n9\\r", 1.1)]
[b'8123\\r', b'9\\r']
"""

from __future__ import annotations

from dataclasses import dataclass

#: Longest scan kept whole. A longer line becomes one read of ``MAX_LINE + 1``
#: bytes (which the code check rejects as ``too_long``) and the rest of the
#: line up to the next terminator is dropped.
MAX_LINE = 512

TERMINATORS = ("cr", "lf", "crlf", "any")

CR, LF = 0x0D, 0x0A


@dataclass(frozen=True)
class Frame:
    """One scan cut from the stream: bytes including any terminator, first and last byte times."""

    raw: bytes
    t_first: float
    t_last: float
    overlong: bool = False


class LineFramer:
    """Splits a byte stream at ``terminator`` (``cr``, ``lf``, ``crlf`` or ``any``).

    ``any`` ends a scan at CR, LF or CR LF: the scan is handed over at the CR
    (without waiting to see whether an LF follows) and an LF right after it is
    dropped as part of that terminator. ``cr`` drops an LF right after the CR too:
    a scanner left on its CR LF default would otherwise start every next scan with
    an LF, and each would be rejected. Empty lines (a terminator alone) are not scans and produce
    nothing. ``read_timeout`` (seconds, or None) ends a scan that stops
    without a terminator: see :meth:`expire`.
    """

    def __init__(self, terminator: str = "any", *, read_timeout: float | None = None, max_line: int = MAX_LINE) -> None:
        if terminator not in TERMINATORS:
            raise ValueError(f"terminator {terminator!r}; allowed: {', '.join(TERMINATORS)}")
        self.terminator = terminator
        self.read_timeout = read_timeout
        self.max_line = max_line
        self._buf = bytearray()
        self._t_first = 0.0
        self._t_last = 0.0
        self._skipping = False  # after an overlong line, until the next terminator
        # With these, an LF right after a CR that ended a scan belongs to that CR.
        self._lf_joins_cr = terminator in ("any", "cr")
        self._after_cr = False  # last byte ended a scan with CR: a following LF belongs to it
        self._prev = -1  # the byte before this one (for "crlf")
        self.dropped = 0  # bytes thrown away from overlong lines, for logs

    def feed(self, data: bytes, now: float) -> list[Frame]:
        """Add bytes received at ``now``; return the scans they complete."""
        frames: list[Frame] = []
        expired = self.expire(now)
        if expired is not None:
            frames.append(expired)
        for byte in data:
            if self._after_cr:
                self._after_cr = False
                if byte == LF:
                    continue
            end = self._ends_scan(byte)
            self._prev = byte
            if self._skipping:
                if end:
                    self._skipping = False
                    self._after_cr = byte == CR and self._lf_joins_cr
                else:
                    self.dropped += 1
                continue
            if not self._buf:
                self._t_first = now
            self._buf.append(byte)
            self._t_last = now
            if end:
                self._after_cr = byte == CR and self._lf_joins_cr
                if len(self._buf) > (2 if self.terminator == "crlf" else 1):
                    frames.append(self._take())
                else:
                    self._buf.clear()  # a terminator alone: not a scan
            elif len(self._buf) > self.max_line:
                frames.append(self._take(overlong=True))
                self._skipping = True
        return frames

    def expire(self, now: float) -> Frame | None:
        """The unfinished scan, if no byte came for longer than ``read_timeout``."""
        if self.read_timeout is None or not self._buf or now - self._t_last <= self.read_timeout:
            return None
        return self._take()

    def deadline(self) -> float | None:
        """When :meth:`expire` will next have something to return, or None."""
        if self.read_timeout is None or not self._buf:
            return None
        return self._t_last + self.read_timeout

    def flush(self) -> Frame | None:
        """The unfinished scan now, whatever its age (the port went away); the framer starts afresh."""
        frame = self._take() if self._buf else None
        self._skipping = self._after_cr = False
        self._prev = -1
        return frame

    def _ends_scan(self, byte: int) -> bool:
        if self.terminator == "cr":
            return byte == CR
        if self.terminator == "lf":
            return byte == LF
        if self.terminator == "crlf":
            return byte == LF and self._prev == CR
        return byte in (CR, LF)

    def _take(self, overlong: bool = False) -> Frame:
        frame = Frame(bytes(self._buf), self._t_first, self._t_last, overlong)
        self._buf.clear()
        return frame
