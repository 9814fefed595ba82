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

import io
import logging
import os
import selectors
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

from agent.read import Read
from agent.sources.reader import ReaderThread

log = logging.getLogger(__name__)

MAX_LINE = 4096


class StdinSource:
    """Reads lines on a thread; ``done`` is set at EOF. :meth:`stop` ends the thread."""

    kind = "stdin"
    #: :meth:`present` is always True: the runner need not look at it.
    always_present = True

    def __init__(self, stream: BinaryIO | None = None, *, name: str = "console", movement: str | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdin.buffer
        self.name = name
        self.movement = movement
        self.done = threading.Event()
        self._reader = ReaderThread(f"stdin:{name}")

    @classmethod
    def from_config(cls, config: Any, stream: BinaryIO | None = None) -> StdinSource:
        """The source for a ``kind = "stdin"`` entry (:class:`agent.config.StdinScannerConfig`)."""
        return cls(stream, name=config.name, movement=config.movement)

    def start(self, submit: Callable[[Read], None]) -> None:
        self._reader.start(self._run, submit)

    def stop(self) -> None:
        self._reader.stop(2.0)

    def present(self) -> bool:
        return True

    def _run(self, submit: Callable[[Read], None]) -> None:
        try:
            for line in self._lines():
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

    def _lines(self) -> Iterator[bytes]:
        try:
            fd = self.stream.fileno()
        except (OSError, io.UnsupportedOperation):
            yield from iter(lambda: self.stream.readline(MAX_LINE), b"")
            return
        # Read the descriptor directly, beside the reader's wake pipe, so that
        # stop() can end this thread at once (and it sleeps until then): a thread
        # blocked inside a buffered readline at exit makes the interpreter abort.
        pending = b""
        discarding = False
        stopping = self._reader.stopping
        with selectors.DefaultSelector() as selector:
            try:
                selector.register(fd, selectors.EVENT_READ)
                selector.register(self._reader.wake_fd, selectors.EVENT_READ)
                wait = selector.select
            except (PermissionError, ValueError):
                wait = None  # a regular file (stdin redirected from it) never blocks
            while not stopping.is_set():
                if wait is not None and not any(key.fd == fd for key, _ in wait()):
                    continue  # woken by stop()
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    if not discarding:
                        yield line + b"\n"
                    discarding = False
                if len(pending) > MAX_LINE and not discarding:
                    # An overlong line is one (too long) scan, not many.
                    yield pending
                    pending, discarding = b"", True
                elif discarding:
                    pending = b""
        if pending and not discarding and not stopping.is_set():
            yield pending
