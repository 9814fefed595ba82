"""The reader thread of a device source, with a wake pipe so that :meth:`stop`
interrupts a ``select()`` at once instead of waiting for the device.

>>> import select
>>> reader = ReaderThread("demo")
>>> reader.start(lambda: select.select([reader.wake_fd], [], []))
>>> reader.stop()
>>> reader.stopping.is_set()
True
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable


class ReaderThread:
    """One daemon thread running ``target(*args)``; the target selects on
    :attr:`wake_fd` beside its device and returns once :attr:`stopping` is set."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.stopping = threading.Event()
        self.wake_fd = -1
        self._wake_w = -1
        self._pipe_lock = threading.Lock()  # a wake() from another thread never writes to a closed pipe
        self._thread: threading.Thread | None = None

    def start(self, target: Callable[..., None], *args: object) -> None:
        self.wake_fd, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)  # a full pipe already says "wake up"
        self._thread = threading.Thread(target=target, args=args, name=self.name, daemon=True)
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wake(self) -> None:
        """Make the target's ``select()`` on :attr:`wake_fd` return; the target reads the byte.

        Does nothing once stopping, so other threads may call it at any time.
        """
        with self._pipe_lock:
            if self._wake_w >= 0 and not self.stopping.is_set():
                with contextlib.suppress(BlockingIOError):
                    os.write(self._wake_w, b"w")

    def woke(self, ready: list[int]) -> bool:
        """Whether :attr:`wake_fd` is among ``ready`` (what ``select()`` returned); consumes the wake-ups."""
        if self.wake_fd not in ready:
            return False
        os.read(self.wake_fd, 4096)
        return True

    def stop(self, timeout: float = 5.0) -> None:
        self.stopping.set()
        if self._thread is None:
            return
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"x")
        self._thread.join(timeout)
        if not self._thread.is_alive():
            # A thread still stuck in a driver keeps its pipe; closing it under
            # the thread could hand the descriptor number to someone else.
            with self._pipe_lock:
                os.close(self.wake_fd)
                os.close(self._wake_w)
                self.wake_fd = self._wake_w = -1
        self._thread = None
