"""What the bench tests share: trace codes to type, and watching an event device as a bystander."""

from __future__ import annotations

import errno
import time
from pathlib import Path

import evdev


def trace_codes(count: int, batch: int) -> list[str]:
    """``count`` distinct, structurally valid 20-digit trace codes; ``batch`` keeps tests apart.

    Runs of repeated digits are on purpose: dropped repeats are a known keyboard-wedge fault.

    >>> trace_codes(2, 7)
    ['80700000000000000000', '80700000000000000011']
    """
    return [f"8{batch:02d}{n * 11:017d}" for n in range(count)]


class Bystander:
    """Another reader of an event device (as a console or a second program would be), not grabbing."""

    def __init__(self, path: Path) -> None:
        self.device = evdev.InputDevice(str(path))

    def key_events(self) -> list[evdev.InputEvent]:
        """Every key event that reached this reader since the last call."""
        keys = []
        while True:
            try:
                events = list(self.device.read())
            except BlockingIOError:
                return keys
            keys += [e for e in events if e.type == evdev.ecodes.EV_KEY]

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
