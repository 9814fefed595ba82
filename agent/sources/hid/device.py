"""Which input devices are ours, and an evdev device behind a small interface.

- :class:`DeviceInfo` is what identifies a device (node, name, USB ids, serial, links);
- :class:`DeviceMatch` says whether one is ours, from a ``[[scanners]]`` entry's selectors
  (never the agent's own virtual keyboard: see :func:`is_agent_keyboard`);
- :class:`EvdevDevice` opens one; :class:`InputDeviceLike` is the seam tests use instead.
"""

from __future__ import annotations

import fcntl
import fnmatch
import os
import struct
import time
from dataclasses import dataclass
from typing import Any, Protocol

from evdev import InputEvent
from evdev import ecodes as e

from agent.sources.identity import usb_identity

#: The ``phys`` the agent gives its own virtual keyboard (:mod:`agent.sinks.wedge`).
WEDGE_PHYS = "scan-agent/wedge"
# Nodes of the virtual keyboards this process made; see own_keyboard().
_own_nodes: set[str] = set()


@dataclass(frozen=True)
class DeviceInfo:
    """What identifies an input device: its node, name, USB ids, serial (``uniq``) and stable links."""

    path: str
    name: str = ""
    vendor: int = 0
    product: int = 0
    serial: str = ""
    phys: str = ""
    links: tuple[str, ...] = ()
    keyboard: bool = True
    bus: int = e.BUS_USB

    @property
    def identity(self) -> str:
        """``VID:PID:serial`` (or ``VID:PID@phys``), else a by-id link, else the name."""
        if self.vendor or self.product:
            return usb_identity(self.vendor, self.product, self.serial, location=self.phys)
        by_id = [link for link in self.links if "/by-id/" in link]
        return by_id[0] if by_id else f"input:{self.name}"


@dataclass(frozen=True)
class DeviceMatch:
    """The selectors of one ``[[scanners]]`` entry; every one given must match.

    >>> m = DeviceMatch(vendor_id=0x1EAB, name_pattern="Newland*")
    >>> m.matches(DeviceInfo("/dev/input/event5", "Newland FM430", 0x1EAB, 0x1D06))
    True
    >>> m.matches(DeviceInfo("/dev/input/event3", "AT Translated Set 2 keyboard", 1, 1))
    False
    """

    vendor_id: int | None = None
    product_id: int | None = None
    serial: str | None = None
    name_pattern: str | None = None
    path: str | None = None

    @classmethod
    def from_config(cls, config: Any) -> DeviceMatch:
        """The selectors of a ``kind = "hid"`` entry (:class:`agent.config.HidScannerConfig`)."""
        return cls(config.vendor_id, config.product_id, config.serial, config.name_pattern, config.path)

    def matches(self, info: DeviceInfo) -> bool:
        if not info.keyboard or is_agent_keyboard(info):
            return False
        if self.vendor_id is not None and info.vendor != self.vendor_id:
            return False
        if self.product_id is not None and info.product != self.product_id:
            return False
        if self.serial is not None and info.serial != self.serial:
            return False
        if self.name_pattern is not None and not fnmatch.fnmatchcase(info.name, self.name_pattern):
            return False
        return self.path is None or self.path in info.links or os.path.realpath(self.path) == info.path

    def __str__(self) -> str:
        parts = [
            f"{k}={v:#06x}" if isinstance(v, int) else f"{k}={v!r}" for k, v in vars(self).items() if v is not None
        ]
        return ", ".join(parts)


def own_keyboard(node: str, *, made: bool = True) -> None:
    """Record (``made=False``: forget) ``node`` as a virtual keyboard this process types on.

    Called by the wedge when it creates and destroys its device, before any
    source could look at the node.
    """
    if made:
        _own_nodes.add(node)
    else:
        _own_nodes.discard(node)


def is_agent_keyboard(info: DeviceInfo) -> bool:
    """True for a scan-agent's own virtual keyboard, which is never a scanner.

    Taking it for one would grab it away from the POS and feed every typed code
    back in as a duplicate scan. It is known two ways, so that a broad selector
    (``name_pattern = "*"``) still leaves it alone: a node this process made, or
    a virtual-bus device with the wedge's ``phys`` (another scan-agent's, or this
    one's before the node was recorded). A USB scanner is never on the virtual bus.

    >>> is_agent_keyboard(DeviceInfo("/dev/input/event9", "scan-agent wedge", bus=e.BUS_VIRTUAL, phys=WEDGE_PHYS))
    True
    >>> is_agent_keyboard(DeviceInfo("/dev/input/event5", "Newland", 0x1EAB, 0x1D06, phys=WEDGE_PHYS))
    False
    """
    return info.path in _own_nodes or (info.bus == e.BUS_VIRTUAL and info.phys == WEDGE_PHYS)


class InputDeviceLike(Protocol):
    """What :class:`HidSource` needs from an opened input device (see :class:`EvdevDevice`)."""

    info: DeviceInfo
    monotonic: bool

    def fileno(self) -> int: ...
    def read(self) -> list[InputEvent]: ...
    def grab(self) -> None: ...
    def ungrab(self) -> None: ...
    def active_keys(self) -> list[int]: ...
    def close(self) -> None: ...


# _IOW('E', 0xa0, int): choose the clock of event timestamps.
EVIOCSCLOCKID = 0x400445A0


class EvdevDevice:
    """A real ``/dev/input/eventN`` through python-evdev, with event times on the monotonic clock."""

    def __init__(self, path: str, links: tuple[str, ...] = ()) -> None:
        import evdev

        self.device = evdev.InputDevice(path)
        keys = set(self.device.capabilities().get(e.EV_KEY, []))
        self.info = DeviceInfo(
            path=path,
            name=self.device.name,
            vendor=self.device.info.vendor,
            product=self.device.info.product,
            serial=self.device.uniq or "",
            phys=self.device.phys or "",
            links=links,
            keyboard=e.KEY_ENTER in keys and (e.KEY_1 in keys or e.KEY_KP1 in keys),
            bus=self.device.info.bustype,
        )
        try:
            # Event times on the same clock as Read.t_first (time.monotonic).
            fcntl.ioctl(self.device.fd, EVIOCSCLOCKID, struct.pack("i", time.CLOCK_MONOTONIC))
            self.monotonic = True
        except OSError:
            self.monotonic = False

    def fileno(self) -> int:
        return self.device.fd

    def read(self) -> list[InputEvent]:
        try:
            return list(self.device.read())
        except BlockingIOError:
            return []

    def grab(self) -> None:
        self.device.grab()

    def ungrab(self) -> None:
        self.device.ungrab()

    def active_keys(self) -> list[int]:
        return list(self.device.active_keys())

    def close(self) -> None:
        self.device.close()
