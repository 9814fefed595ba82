"""USB keyboard-wedge scanners read through evdev, grabbed so they never type into the console.

Three parts, each usable alone:

- :class:`KeyDecoder` turns one device's ``evdev.InputEvent`` stream into
  scans. Pure: events in, :class:`Typed` out, no device needed.
- :class:`DeviceMatch` says whether an input device is one of ours (USB ids,
  serial, name pattern or a stable ``/dev/input/by-id`` path).
- :class:`HidSource` finds matching devices in ``/dev/input`` (woken by
  inotify when one is plugged in), grabs each (EVIOCGRAB), gives each its own
  decoder, and survives devices vanishing.

>>> from evdev import InputEvent, ecodes as e
>>> d = KeyDecoder("us")
>>> def key(code, value, t): return InputEvent(int(t), int(t % 1 * 1e6), e.EV_KEY, code, value)
>>> events = [key(e.KEY_LEFTSHIFT, 1, 0.0), key(e.KEY_A, 1, 0.01), key(e.KEY_A, 0, 0.015),
...           key(e.KEY_LEFTSHIFT, 0, 0.02), key(e.KEY_KP1, 1, 0.03), key(e.KEY_ENTER, 1, 0.04)]
>>> [t.raw for ev in events for t in d.feed(ev)]
[b'A1\\n']
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import fnmatch
import logging
import os
import queue
import re
import select
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from evdev import InputEvent
from evdev import ecodes as e

from agent.read import Read
from agent.sources.aim import symbology
from agent.sources.identity import usb_identity
from agent.sources.keymaps import KEYPAD, LAYOUTS
from agent.sources.reader import ReaderThread
from agent.sources.watch import DirWatch

log = logging.getLogger(__name__)

#: Stands in for a character the layout cannot produce (ASCII SUB, "substitute").
#: It is a control character, so the code check rejects the read as ``not_text``:
#: the scan is recorded and refused, never silently shortened.
UNMAPPED = b"\x1a"

_SHIFT = frozenset({e.KEY_LEFTSHIFT, e.KEY_RIGHTSHIFT})
_CTRL = frozenset({e.KEY_LEFTCTRL, e.KEY_RIGHTCTRL})
_ALT = frozenset({e.KEY_LEFTALT})
_ALTGR = frozenset({e.KEY_RIGHTALT})
_IGNORED = frozenset({e.KEY_NUMLOCK, e.KEY_SCROLLLOCK, e.KEY_LEFTMETA, e.KEY_RIGHTMETA})
_MODIFIERS = _SHIFT | _CTRL | _ALT | _ALTGR
_ENTER = frozenset({e.KEY_ENTER, e.KEY_KPENTER})
_KEYPAD_DIGITS = {getattr(e, f"KEY_KP{n}"): n for n in range(10)}
_CONTROLLABLE = "@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_"


@dataclass(frozen=True)
class Typed:
    """One scan typed by a device: the bytes (UTF-8, terminator included), first and last key times,
    and the names of keys the layout gave no character for."""

    raw: bytes
    t_first: float
    t_last: float
    unmapped: tuple[str, ...] = ()


class KeyDecoder:
    """Key events of one device in, scans out.

    ``feed`` each event; it returns the scans that event completed. A scan
    ends at Enter or keypad Enter (and Tab with ``tab_terminates``), or when
    the next key comes more than ``key_timeout`` seconds after the last one;
    :meth:`expire` ends it when no key comes at all. Times are the events' own
    timestamps unless ``now`` is given.

    Keypad digits are digits whatever NumLock says. Ctrl+key gives the ASCII
    control character (Ctrl+] is GS, 0x1D, as scanners send it in GS1 codes);
    Alt held while typing a number on the keypad gives that character (Alt+029
    is GS). A ``SYN_DROPPED`` (the kernel's buffer overflowed) discards the
    unfinished scan and every event up to the next ``SYN_REPORT``; the held
    modifier keys are then unknown until :meth:`resync` tells them.
    """

    def __init__(
        self, layout: str = "us", *, key_timeout: float = 0.1, tab_terminates: bool = False, name: str = ""
    ) -> None:
        self.keymap = LAYOUTS[layout]
        self.has_altgr = layout != "us"
        self.key_timeout = key_timeout
        self.tab_terminates = tab_terminates
        self.name = name
        self.held: set[int] = set()
        self.caps = False
        self.dropping = False
        self.needs_resync = False
        self.discarded = 0  # unfinished scans thrown away by SYN_DROPPED
        self._buf = bytearray()
        self._unmapped: list[str] = []
        self._alt_number = ""
        self._t_first = 0.0
        self._t_last = 0.0

    def feed(self, event: InputEvent, now: float | None = None) -> list[Typed]:
        now = event.timestamp() if now is None else now
        if event.type == e.EV_SYN:
            self._sync(event.code)
            return []
        if self.dropping or event.type != e.EV_KEY:
            return []
        if event.value == 0:
            self._release(event.code)
            return []
        if event.value != 1:  # 2 is autorepeat: a scanner never holds a key that long
            return []
        return self._press(event.code, now)

    def expire(self, now: float) -> Typed | None:
        """The unfinished scan, if no key came for longer than ``key_timeout``."""
        if not self._buf or now - self._t_last <= self.key_timeout:
            return None
        return self._take()

    def deadline(self) -> float | None:
        """When :meth:`expire` will next have a scan to return, or None."""
        return self._t_last + self.key_timeout if self._buf else None

    def flush(self) -> Typed | None:
        """The unfinished scan now, whatever its age (the device went away)."""
        return self._take() if self._buf else None

    def resync(self, active_keys: Iterable[int]) -> None:
        """Set the held keys to what the device reports (after ``SYN_DROPPED``)."""
        self.held = set(active_keys) & _MODIFIERS
        self.needs_resync = False

    # -- internals -------------------------------------------------------------

    def _sync(self, code: int) -> None:
        if code == e.SYN_DROPPED:
            if self._buf:
                self.discarded += 1
                log.warning(
                    "hid scanner %s: events dropped by the kernel; unfinished scan %r discarded",
                    self.name,
                    bytes(self._buf),
                )
            self._buf.clear()
            self._unmapped.clear()
            self._alt_number = ""
            self.dropping = True
        elif code == e.SYN_REPORT and self.dropping:
            self.dropping = False
            self.held.clear()  # unknown until resync(); released is the likelier state
            self.needs_resync = True

    def _release(self, code: int) -> None:
        self.held.discard(code)
        if code in _ALT and self._alt_number:
            number, self._alt_number = int(self._alt_number), ""
            self._append(chr(number).encode() if number < 256 else UNMAPPED, self._t_last)

    def _press(self, code: int, now: float) -> list[Typed]:
        out = []
        if self._buf and now - self._t_last > self.key_timeout:
            out.append(self._take())
        if code in _MODIFIERS:
            self.held.add(code)
            return out
        if code == e.KEY_CAPSLOCK:
            self.caps = not self.caps
            return out
        if code in _IGNORED:
            return out
        if code in _ENTER or (code == e.KEY_TAB and self.tab_terminates):
            self._append(b"\t" if code == e.KEY_TAB else b"\n", now)
            if len(self._buf) > 1:
                out.append(self._take())
            else:
                self._buf.clear()  # a terminator alone is not a scan
            return out
        if code in _KEYPAD_DIGITS and self.held & _ALT:
            self._alt_number += str(_KEYPAD_DIGITS[code])
            self._t_last = now
            return out
        char = self._char(code)
        if char is None:
            names = e.KEY.get(code, str(code))
            self._unmapped.append(names if isinstance(names, str) else names[0])
            self._append(UNMAPPED, now)
        else:
            self._append(char.encode("utf-8"), now)
        return out

    def _char(self, code: int) -> str | None:
        if code == e.KEY_TAB:
            return "\t"
        if code in KEYPAD:
            return KEYPAD[code]
        key = self.keymap.get(code)
        if key is None:
            return None
        plain, shifted, altgr = key
        if self.has_altgr and self.held & _ALTGR:
            return altgr
        if self.held & _ALT or (not self.has_altgr and self.held & _ALTGR):
            return None  # Alt+letter is a shortcut, not a character
        use_shift = bool(self.held & _SHIFT)
        if self.caps and plain is not None and plain.isalpha() and shifted == plain.upper():
            use_shift = not use_shift
        char = shifted if use_shift else plain
        if char is not None and self.held & _CTRL:
            upper = char.upper()
            return chr(ord(upper) & 0x1F) if upper in _CONTROLLABLE else None
        return char

    def _append(self, data: bytes, now: float) -> None:
        if not self._buf:
            self._t_first = now
        self._buf += data
        self._t_last = now

    def _take(self) -> Typed:
        typed = Typed(bytes(self._buf), self._t_first, self._t_last, tuple(self._unmapped))
        self._buf.clear()
        self._unmapped.clear()
        return typed


# -- which devices ---------------------------------------------------------------


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

    def matches(self, info: DeviceInfo) -> bool:
        if not info.keyboard:
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


# -- the source --------------------------------------------------------------------

#: Safety net between inotify wake-ups while a scanner is missing.
RECHECK_S = 1.0
#: The longest the reader sleeps without looking for devices the finder handed over.
FOUND_POLL_S = 1.0
_EVENT_NODE = re.compile(r"event\d+")


def _release(device: InputDeviceLike) -> None:
    """Ungrab and close ``device``; either may fail when the device is already gone."""
    with contextlib.suppress(OSError):
        device.ungrab()
    with contextlib.suppress(OSError):
        device.close()


@dataclass
class _Open:
    device: InputDeviceLike
    decoder: KeyDecoder
    identity: str
    last_read: float = field(default_factory=time.monotonic)


class HidSource:
    """Reads every input device matching ``match``, each grabbed and with its own decoder.

    Two threads: a finder that watches ``input_dir``, opens and grabs matching
    devices and hands them over, and a reader that does nothing but read them.
    Looking at devices takes tens of milliseconds on a slow board while udev
    adds a freshly plugged scanner's links, and the person may already be
    scanning: the kernel keeps only 64 events (about ten keys) per reader, so
    the reader must never wait for the finder.

    ``opener(path, links)`` opens one device node (default :class:`EvdevDevice`);
    ``input_dir`` is where nodes appear. Never sets ``done``.
    """

    kind = "hid"

    def __init__(
        self,
        match: DeviceMatch,
        *,
        name: str = "hid",
        movement: str | None = None,
        layout: str = "us",
        key_timeout: float = 0.1,
        tab_terminates: bool = False,
        input_dir: str | os.PathLike = "/dev/input",
        opener: Callable[[str, tuple[str, ...]], InputDeviceLike] = EvdevDevice,
    ) -> None:
        self.match = match
        self.name = name
        self.movement = movement
        self.layout = layout
        self.key_timeout = key_timeout
        self.tab_terminates = tab_terminates
        self.input_dir = Path(input_dir)
        self.opener = opener
        self.done = threading.Event()
        self.devices: dict[str, _Open] = {}  # the reader thread's
        self._reader = ReaderThread(f"hid:{name}")
        self._finder = ReaderThread(f"hid:{name}:find")
        self._found: queue.SimpleQueue[tuple[str, _Open]] = queue.SimpleQueue()  # finder -> reader
        self._handover = threading.Lock()  # a device is either handed over or released, never left behind
        self._gone: queue.SimpleQueue[str] = queue.SimpleQueue()  # reader -> finder: dropped paths
        self._skip: dict[str, tuple] = {}  # the finder's: nodes not ours, by (inode, ctime, links)
        self._last_problem = ""
        self._last_absence = ""

    def present(self) -> bool:
        """True while at least one matching device is open and grabbed."""
        return bool(self.devices)

    def start(self, submit: Callable[[Read], None]) -> None:
        self._reader.start(self._run, submit)
        self._finder.start(self._find)

    def stop(self) -> None:
        self._finder.stop()  # first, so that nothing more is handed over
        self._reader.stop()

    # -- the reader thread -------------------------------------------------------

    def _run(self, submit: Callable[[Read], None]) -> None:
        try:
            while not self._reader.stopping.is_set():
                try:
                    self._step(submit)
                except Exception as problem:  # a reader thread must never die
                    if repr(problem) != self._last_problem:  # once per distinct failure, not in a loop
                        self._last_problem = repr(problem)
                        log.exception("hid scanner %s: unexpected failure; carrying on", self.name)
                    time.sleep(0.1)
        finally:
            with self._handover:  # the finder hands nothing over after this
                self._adopt()
            for path in list(self.devices):
                self._drop(path, submit, "released", level=logging.INFO)

    def _step(self, submit: Callable[[Read], None]) -> None:
        self._adopt()
        deadlines = [d for d in (o.decoder.deadline() for o in self.devices.values()) if d is not None]
        # The finder pokes the wake pipe when it hands a device over; the timeout only
        # bounds how late an adopted device is first read if that poke were missed.
        now = time.monotonic()
        wait = max(0.0, min([now + FOUND_POLL_S, *deadlines]) - now)
        fds = {o.device.fileno(): path for path, o in self.devices.items()}
        ready, _, _ = select.select([self._reader.wake_fd, *fds], [], [], wait)
        self._reader.woke(ready)
        for fd in ready:
            if fd in fds:
                self._read(fds[fd], submit)
        for _path, opened in list(self.devices.items()):
            typed = opened.decoder.expire(time.monotonic())
            if typed is not None:
                self._submit(opened, typed, submit)

    def _adopt(self) -> None:
        """Take over the devices the finder opened (``last_read`` stays their open time)."""
        while True:
            try:
                path, opened = self._found.get_nowait()
            except queue.Empty:
                return
            self.devices[path] = opened
            self._last_problem = ""

    def _read(self, path: str, submit: Callable[[Read], None]) -> None:
        opened = self.devices[path]
        try:
            events = opened.device.read()
        except OSError as problem:
            reason = "unplugged" if problem.errno == errno.ENODEV else f"read failed: {problem}"
            self._drop(path, submit, reason)
            return
        read_at = time.monotonic()
        since, opened.last_read = read_at - opened.last_read, read_at
        if any(event.type == e.EV_SYN and event.code == e.SYN_DROPPED for event in events):
            # Logged even between scans: then the lost keys were the start of the next one.
            log.warning(
                "hid scanner %s (%s): keys lost: the kernel's event buffer overflowed; %.0f ms since the previous read",
                self.name,
                opened.identity,
                since * 1000,
            )
        now = None if opened.device.monotonic else read_at
        for event in events:
            for typed in opened.decoder.feed(event, now):
                self._submit(opened, typed, submit)
            if opened.decoder.needs_resync:
                try:
                    opened.decoder.resync(opened.device.active_keys())
                except OSError:
                    opened.decoder.resync(())

    def _submit(self, opened: _Open, typed: Typed, submit: Callable[[Read], None]) -> None:
        if typed.unmapped:
            log.warning(
                "hid scanner %s (%s): keys %s give no character in layout %s; scan recorded as not text",
                self.name,
                opened.identity,
                ", ".join(typed.unmapped),
                self.layout,
            )
        submit(
            Read(
                typed.raw,
                self.kind,
                opened.identity,
                symbology=symbology(typed.raw),
                t_first=typed.t_first,
                t_last=typed.t_last,
                movement=self.movement,
                scanner=self.name,
            )
        )

    # -- the finder thread -------------------------------------------------------

    def _find(self) -> None:
        watch = DirWatch([self.input_dir, self.input_dir / "by-id", self.input_dir / "by-path"])
        held: set[str] = set()  # handed to the reader and not reported gone
        try:
            look = True
            while not self._finder.stopping.is_set():
                try:
                    if look:
                        self._look(held)
                    readable = [self._finder.wake_fd] + ([watch.fileno()] if watch.fileno() >= 0 else [])
                    ready, _, _ = select.select(readable, [], [], RECHECK_S)
                    woken = self._finder.woke(ready)
                    while not self._gone.empty():
                        held.discard(self._gone.get_nowait())
                    changed = watch.fileno() in ready and watch.drain()
                    look = woken or changed or (not ready and not held)
                except Exception as problem:  # the finder must never die either
                    if repr(problem) != self._last_absence:
                        self._last_absence = repr(problem)
                        log.exception("hid scanner %s: unexpected failure looking for devices; carrying on", self.name)
                    time.sleep(0.1)
        finally:
            watch.close()

    def _look(self, held: set[str]) -> None:
        """Open and grab every matching node not yet held; forget nodes that vanished."""
        links = self._links()
        present = set()
        for node in sorted(self.input_dir.glob("event*")):
            if self._finder.stopping.is_set():
                return
            if not _EVENT_NODE.fullmatch(node.name):
                continue
            path = str(node)
            present.add(path)
            if path in held:
                continue
            try:
                st = node.stat()
            except OSError:
                continue
            # A node is looked at again when it is replaced or udev gives it a new link
            # (a by-id link named in `path` may appear after the node itself).
            stamp = (st.st_ino, st.st_ctime_ns, links.get(path, ()))
            if self._skip.get(path) == stamp:
                continue
            opened = self._try_open(path, links.get(path, ()), stamp)
            if opened is not None and self._hand_over(path, opened):
                held.add(path)
        self._skip = {p: s for p, s in self._skip.items() if p in present}
        if held:
            self._last_absence = ""
        else:
            self._absent(f"no input device matches {self.match}; waiting for one to be plugged in")

    def _hand_over(self, path: str, opened: _Open) -> bool:
        """Give ``opened`` to the reader; once the reader is stopping, release it instead."""
        with self._handover:
            if not self._reader.stopping.is_set():
                self._found.put((path, opened))
                self._reader.wake()
                return True
        _release(opened.device)
        log.info("hid scanner %s: %s (%s) released: stopping", self.name, opened.identity, path)
        return False

    def _try_open(self, path: str, links: tuple[str, ...], stamp: tuple) -> _Open | None:
        try:
            device = self.opener(path, links)
        except OSError as problem:
            if problem.errno in (errno.EACCES, errno.EPERM):
                # udev may not have set the permissions yet; an IN_ATTRIB will bring us back.
                self._absent(f"cannot open {path}: {problem.strerror}")
            elif problem.errno not in (errno.ENOENT, errno.ENODEV):
                self._skip[path] = stamp  # not an input device we can use; look again if it changes
            return None
        except Exception as problem:  # whatever a driver answers, the finder carries on
            log.warning("hid scanner %s: cannot read device info of %s: %s", self.name, path, problem)
            self._skip[path] = stamp
            return None
        if not self.match.matches(device.info):
            device.close()
            self._skip[path] = stamp
            return None
        try:
            device.grab()
        except OSError as problem:
            # Someone else holds it: reading anyway would let scans type into their window.
            log.error("hid scanner %s: cannot grab %s (%s): %s", self.name, path, device.info.name, problem)
            device.close()
            self._skip[path] = stamp
            return None
        decoder = KeyDecoder(
            self.layout, key_timeout=self.key_timeout, tab_terminates=self.tab_terminates, name=self.name
        )
        log.info("hid scanner %s: grabbed %s %r as %s", self.name, path, device.info.name, device.info.identity)
        return _Open(device, decoder, device.info.identity)

    def _drop(self, path: str, submit: Callable[[Read], None], reason: str, level: int = logging.WARNING) -> None:
        opened = self.devices.pop(path)
        typed = opened.decoder.flush()
        if typed is not None:
            self._submit(opened, typed, submit)  # cut short, recorded and rejected rather than lost
        _release(opened.device)
        log.log(level, "hid scanner %s: %s (%s) %s", self.name, opened.identity, path, reason)
        self._gone.put(path)
        self._finder.wake()  # look again: it may be back under another node

    def _links(self) -> dict[str, tuple[str, ...]]:
        """Node path -> the stable by-id / by-path links pointing at it."""
        links: dict[str, list[str]] = {}
        for sub in ("by-id", "by-path"):
            directory = self.input_dir / sub
            try:
                entries = list(directory.iterdir())
            except OSError:
                continue
            for link in entries:
                links.setdefault(os.path.realpath(link), []).append(str(link))
        return {node: tuple(sorted(found)) for node, found in links.items()}

    def _absent(self, message: str) -> None:
        """Log why no scanner is read, once per distinct reason."""
        if message != self._last_absence:
            self._last_absence = message
            log.warning("hid scanner %s: %s", self.name, message)
