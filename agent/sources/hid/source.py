"""USB keyboard-wedge scanners read through evdev, grabbed so they never type into the console.

:class:`HidSource` finds matching devices in ``/dev/input`` (woken by inotify
when one is plugged in), grabs each (EVIOCGRAB), gives each its own
:class:`~agent.sources.hid.decoder.KeyDecoder`, and survives devices vanishing.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import re
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evdev import ecodes as e

from agent.read import Read
from agent.sources.aim import symbology
from agent.sources.hid.decoder import KeyDecoder, Typed
from agent.sources.hid.device import DeviceMatch, EvdevDevice, InputDeviceLike
from agent.sources.reader import ReaderThread
from agent.sources.watch import DirWatch

log = logging.getLogger(__name__)

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

    @classmethod
    def from_config(cls, config: Any) -> HidSource:
        """The source for a ``kind = "hid"`` entry (:class:`agent.config.HidScannerConfig`)."""
        return cls(
            DeviceMatch.from_config(config),
            name=config.name,
            movement=config.movement,
            layout=config.layout,
            key_timeout=config.key_timeout_ms / 1000,
            tab_terminates=config.tab_terminates,
        )

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
