"""Stand-in input devices for the HID source's device handling, where there is no ``/dev/uinput``.

This machine cannot create kernel input devices, so the reconnect loop is
driven with these: a node file in a temporary "input directory" (watched by
the real inotify helper) and an object with the device interface the source
uses, whose events are real ``evdev.InputEvent`` objects and whose readiness
is a real pipe for ``select``. Unplugging removes the node and makes ``read``
raise ``ENODEV``, as the kernel does. Grabbing and the kernel's own event
timing are what only the VM tests with a real kernel device can show.

    devs = StandInInputs(tmp_path)
    scanner = devs.plug("event5", DeviceInfo(...))
    source = HidSource(match, input_dir=devs.dir, opener=devs.open)
    scanner.type_keys([...])
    devs.unplug("event5")
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
from pathlib import Path

from evdev import InputEvent
from evdev import ecodes as e

from agent.sources.hid import DeviceInfo


class StandInDevice:
    def __init__(self, info: DeviceInfo, *, busy: bool = False) -> None:
        self.info = info
        self.monotonic = True
        self.busy = busy
        self.grabbed = False
        self.closed = False
        self.gone = False
        self._events: list[InputEvent] = []
        self._lock = threading.Lock()
        self.reopen()

    def reopen(self) -> None:
        """Opened again (each open of a node is a new descriptor)."""
        self.closed = False
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)

    def fileno(self) -> int:
        return self._r

    def read(self) -> list[InputEvent]:
        with contextlib.suppress(BlockingIOError):
            os.read(self._r, 65536)
        if self.gone:
            raise OSError(errno.ENODEV, "No such device")
        with self._lock:
            events, self._events = self._events, []
        return events

    def grab(self) -> None:
        if self.busy:
            raise OSError(errno.EBUSY, "Device or resource busy")
        self.grabbed = True

    def ungrab(self) -> None:
        if self.gone:
            raise OSError(errno.ENODEV, "No such device")
        self.grabbed = False

    def active_keys(self) -> list[int]:
        return []

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self._r)
            os.close(self._w)

    def emit(self, events: list[InputEvent]) -> None:
        with self._lock:
            self._events.extend(events)
        os.write(self._w, b".")

    def type_keys(self, codes: list[int], *, gap: float = 0.002) -> None:
        """Press and release each key in turn, with SYN_REPORTs, stamped on the monotonic clock."""
        for code in codes:
            for value in (1, 0):
                now = time.monotonic()
                sec, usec = int(now), int(now % 1 * 1_000_000)
                self.emit([InputEvent(sec, usec, e.EV_KEY, code, value), InputEvent(sec, usec, e.EV_SYN, 0, 0)])
            time.sleep(gap)

    def unplug(self) -> None:
        self.gone = True
        os.write(self._w, b"!")


class StandInInputs:
    """A directory of stand-in event nodes and the opener the HID source uses on it."""

    def __init__(self, workdir: Path) -> None:
        self.dir = Path(workdir) / "input"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.devices: dict[str, StandInDevice] = {}
        self.opened: list[str] = []

    def plug(self, node: str, info: DeviceInfo, *, busy: bool = False) -> StandInDevice:
        path = str(self.dir / node)
        device = StandInDevice(DeviceInfo(**{**info.__dict__, "path": path}), busy=busy)
        self.devices[path] = device
        Path(path).touch()
        return device

    def unplug(self, node: str) -> None:
        path = str(self.dir / node)
        self.devices.pop(path).unplug()
        Path(path).unlink()

    def open(self, path: str, links: tuple[str, ...] = ()) -> StandInDevice:
        if path not in self.devices or not Path(path).exists():
            raise OSError(errno.ENOENT, "No such file or directory", path)
        self.opened.append(path)
        device = self.devices[path]
        if device.closed:
            device.reopen()
        if links:
            device.info = DeviceInfo(**{**device.info.__dict__, "links": links})
        return device
