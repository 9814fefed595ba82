"""Scans typed or piped on standard input, one per line: the built-in default.

>>> import io
>>> reads = []
>>> src = StdinSource(io.BytesIO(b"81234567890123456789\\r\\n123\\n"))
>>> src.start(reads.append); src.done.wait(5)
True
>>> [r.raw for r in reads]
[b'81234567890123456789\\r\\n', b'123\\n']
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import BinaryIO

from agent.read import Read

log = logging.getLogger(__name__)


class StdinSource:
    """Reads lines from a binary stream on a daemon thread; ``done`` is set at EOF."""

    kind = "stdin"

    def __init__(self, stream: BinaryIO | None = None, *, name: str = "console", movement: str | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdin.buffer
        self.name = name
        self.movement = movement
        self.done = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, submit: Callable[[Read], None]) -> None:
        self._thread = threading.Thread(target=self._read_lines, args=(submit,), name=f"stdin:{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        # A blocked read on stdin cannot be interrupted portably; the thread is
        # a daemon and dies with the process.
        pass

    def _read_lines(self, submit: Callable[[Read], None]) -> None:
        try:
            while True:
                line = self.stream.readline(4096)
                if not line:
                    break
                while len(line) >= 4096 and not line.endswith(b"\n"):
                    # An overlong line is one (too long) scan, not many.
                    rest = self.stream.readline(4096)
                    line = line[:4096] + rest[-1:]
                    if not rest or rest.endswith(b"\n"):
                        break
                now = time.monotonic()
                submit(
                    Read(
                        line,
                        self.kind,
                        f"stdin:{self.name}",
                        t_first=now,
                        t_last=now,
                        movement=self.movement,
                        scanner=self.name,
                    )
                )
        except (OSError, ValueError) as problem:
            log.error("stdin scanner %s stopped: %s", self.name, problem)
        finally:
            self.done.set()
