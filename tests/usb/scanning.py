"""What the bench tests share: trace codes to type, and watching an event device as a bystander."""

from __future__ import annotations

import errno
import os
import select
import threading
import time
from pathlib import Path

import evdev

#: What the sources log when a device is ready to be read (see :func:`wait_ready`).
GRABBED = "grabbed {node} "
OPENED = "opened "


def trace_codes(count: int, batch: int) -> list[str]:
    """``count`` distinct, structurally valid 20-digit trace codes; ``batch`` keeps tests apart.

    Runs of repeated digits are on purpose: dropped repeats are a known keyboard-wedge fault.

    >>> trace_codes(2, 7)
    ['80700000000000000000', '80700000000000000011']
    """
    return [f"8{batch:02d}{n * 11:017d}" for n in range(count)]


class Bystander:
    """Another reader of an event device (as a console or a second program would be), not grabbing.

    It reads on its own thread from the moment it is made: the kernel keeps
    only a small buffer per reader and drops all but the newest event when it
    overflows.
    """

    def __init__(self, path: Path) -> None:
        self.device = evdev.InputDevice(str(path))
        self.events: list[evdev.InputEvent] = []
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        fd = self.device.fd
        while True:
            ready, _, _ = select.select([fd, self._stop_r], [], [])
            if self._stop_r in ready:
                return
            try:
                self.events += self.device.read()
            except BlockingIOError:
                continue
            except OSError:  # the device went away
                return

    def key_events(self, settle: float = 0.5) -> list[evdev.InputEvent]:
        """Every key event (and any overflow marker) that reached this reader so far."""
        time.sleep(settle)  # let the reader thread catch up
        return [
            e
            for e in self.events
            if e.type == evdev.ecodes.EV_KEY or (e.type == evdev.ecodes.EV_SYN and e.code == evdev.ecodes.SYN_DROPPED)
        ]

    def can_grab(self) -> bool:
        """False while someone else (the agent) holds the grab."""
        try:
            self.device.grab()
        except OSError as problem:
            if problem.errno == errno.EBUSY:
                return False
            raise
        self.device.ungrab()
        return True

    def close(self) -> None:
        os.write(self._stop_w, b"x")
        self._thread.join(5)
        os.close(self._stop_r)
        os.close(self._stop_w)
        self.device.close()


def wait_held(agent, node_of, timeout: float = 20.0) -> Path:
    """Wait until the agent has the device node ``node_of()`` names open; return the node."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        node = node_of()
        if node is not None and agent.holds(node):
            return node
        if not agent.alive:
            raise AssertionError(f"the agent exited ({agent.proc.returncode}):\n{agent.log_text()}")
        time.sleep(0.01)
    raise AssertionError(f"the agent did not open {node_of()} within {timeout} s:\n{agent.log_text()}")


def wait_ready(agent, node_of, says: str, since: int = 0, timeout: float = 20.0) -> Path:
    """Wait until the agent has the node ``node_of()`` open and has logged ``says`` (after log line
    ``since``) about it: ``"grabbed {node}"`` for a keyboard, ``"opened"`` for a serial port.

    Having the node open is not enough to start typing: keys that arrive between the
    agent's open() and its EVIOCSCLOCKID ioctl are flushed by the kernel (the event clock
    changes), and pyserial flushes the input buffer right after opening a port.
    """
    node = wait_held(agent, node_of, timeout)
    text = says.format(node=node)
    deadline = time.monotonic() + timeout
    while not any(text in line for line in agent.log[since:]):
        if time.monotonic() > deadline:
            raise AssertionError(f"the agent did not log {text!r} within {timeout} s:\n{agent.log_text()}")
        time.sleep(0.005)
    return node
