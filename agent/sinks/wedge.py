"""The validated keyboard wedge: accepted codes typed into the POS through a uinput keyboard.

The scanner types into the agent (which grabs it); after the commit, the agent
types each code whose verdict is in ``[wedge] verdicts`` into the host through
a virtual keyboard of its own, in the host's layout, then the suffix. Rejected
codes, duplicates and product barcodes never reach the POS.

The pure core says which keys type a text, and the events that press them as
a USB keyboard would: one report with the modifier and the key down, one with
them up (``|`` is a ``SYN_REPORT``):

>>> show(key_events(keys_for("1", "fr", suffix="enter")))
'LEFTSHIFT+ 1+ | 1- LEFTSHIFT- | ENTER+ | ENTER- |'
>>> keys_for("é", "us")
Traceback (most recent call last):
agent.sinks.wedge.Untypable: layout us has no key for 'é'

:class:`Wedge` is the sink; its device is a python-evdev ``UInput`` unless a
test hands it another :class:`VirtualKeyboard`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from evdev import ecodes as e

from agent.config import ConfigError
from agent.domain import Decision
from agent.sources.hid.device import WEDGE_PHYS, own_keyboard
from agent.sources.hid.keymaps import Stroke, strokes

log = logging.getLogger(__name__)

SUFFIXES: dict[str, Stroke | None] = {"enter": (e.KEY_ENTER, None), "tab": (e.KEY_TAB, None), "none": None}
#: The verdicts ``[wedge] verdicts`` may name; a double read or a fault is never typed.
VERDICTS = ("accepted", "duplicate", "rejected")
UINPUT = "/dev/uinput"
#: Codes waiting to be typed; beyond this the POS is not reading and more would only pile up.
QUEUE_LIMIT = 256
#: The longest :meth:`Wedge.close` waits for queued codes to be typed.
CLOSE_TIMEOUT_S = 5.0
#: What ``scan-agent doctor`` and the refusal to start point at.
FIXES = {
    "module": "load the uinput module: sudo modprobe uinput (scripts/install.sh loads it at every boot)",
    "access": (
        "install the udev rule that gives group scan-agent read/write on /dev/uinput: "
        "sudo scripts/install.sh (or sudo udevadm trigger --sysname-match=uinput after installing it)"
    ),
    "unit": "the unit needs DeviceAllow=/dev/uinput rw: sudo scripts/install.sh installs the current unit",
}


class Untypable(ValueError):
    """A character the layout has no key for."""


def keys_for(text: str, layout: str, suffix: str = "none") -> list[Stroke]:
    """The keys that type ``text`` on ``layout``, then ``suffix`` (``enter``, ``tab``, ``none``).

    Raises :class:`Untypable` rather than leave a character out: a code typed
    short is worse than a code not typed.
    """
    table = strokes(layout)
    keys = []
    for char in text:
        if char not in table:
            raise Untypable(f"layout {layout} has no key for {char!r}")
        keys.append(table[char])
    end = SUFFIXES[suffix]
    return keys + ([end] if end is not None else [])


def key_events(keys: Iterable[Stroke]) -> Iterator[tuple[int, int, int]]:
    """``(type, code, value)`` events for ``keys``: per key, a report with it (and its
    modifier) down, then one with it up."""
    syn = (e.EV_SYN, e.SYN_REPORT, 0)
    for code, modifier in keys:
        if modifier is not None:
            yield e.EV_KEY, modifier, 1
        yield e.EV_KEY, code, 1
        yield syn
        yield e.EV_KEY, code, 0
        if modifier is not None:
            yield e.EV_KEY, modifier, 0
        yield syn


def show(events: Iterable[tuple[int, int, int]]) -> str:
    """Events in short: ``KEY+`` down, ``KEY-`` up, ``|`` the end of a report."""
    return " ".join(e.KEY[code][4:] + "-+"[value] if etype == e.EV_KEY else "|" for etype, code, value in events)


def text_for(decision: Decision, verdicts: Iterable[str]) -> str | None:
    """What the wedge types for ``decision``, or None: the canonical code of a real trace code.

    Never an entry row (a document opened or closed), a double read or a fault,
    and never what a rejected read was made of: only a code that passed the code
    checks (``decision.parsed`` is a :class:`~agent.codes.TraceCode`), even when
    ``verdicts`` lets rejected ones through (a code the ledger refused, e.g. not on
    the document). The canonical form types no control characters: 20 digits, or
    ``(01)…(21)…`` for GS1.
    """
    if decision.verdict not in VERDICTS or decision.verdict not in verdicts or decision.record is not None:
        return None
    if not decision.parsed.valid or decision.parsed.kind is None:
        return None
    return decision.parsed.code


class VirtualKeyboard(Protocol):
    """What the wedge needs of its device (python-evdev's ``UInput`` has it)."""

    def write(self, etype: int, code: int, value: int) -> Any: ...
    def syn(self) -> Any: ...
    def close(self) -> Any: ...


class UinputKeyboard:
    """python-evdev's ``UInput`` and the ``/dev/input/event*`` node the kernel made for it."""

    def __init__(self, uinput: Any, node: str) -> None:
        self.uinput = uinput
        self.node = node

    def write(self, etype: int, code: int, value: int) -> None:
        self.uinput.write(etype, code, value)

    def syn(self) -> None:
        self.uinput.syn()

    def close(self) -> None:
        self.uinput.close()
        own_keyboard(self.node, made=False)


def open_uinput(name: str, layout: str, path: str = UINPUT) -> UinputKeyboard:
    """A uinput keyboard with the keys ``layout`` types, on the virtual bus with the wedge's ``phys``.

    Raises :class:`~agent.config.ConfigError` naming what is missing: the agent
    refuses to start rather than accept scans the POS would never get.
    """
    from evdev import UInput, UInputError

    keys = {code for code, _ in strokes(layout).values()} | {e.KEY_LEFTSHIFT, e.KEY_RIGHTALT}
    keys |= {code for code, _ in filter(None, SUFFIXES.values())}
    where = f"[wedge] enabled = true, but {path}"
    try:
        uinput = UInput({e.EV_KEY: sorted(keys)}, name=name, bustype=e.BUS_VIRTUAL, phys=WEDGE_PHYS, devnode=path)
    except UInputError as problem:
        if not os.path.exists(path):
            raise ConfigError(f"{where} is not there: {FIXES['module']}; then scan-agent doctor") from problem
        raise ConfigError(f"{where}: {problem}: {FIXES['access']}; then scan-agent doctor") from problem
    except OSError as problem:
        if problem.errno in (errno.EACCES, errno.EPERM):
            # Allowed by the file's mode, refused anyway: systemd's DevicePolicy.
            fix = FIXES["unit"] if os.access(path, os.R_OK | os.W_OK) else FIXES["access"]
            raise ConfigError(f"{where} cannot be opened ({problem.strerror}): {fix}") from problem
        raise ConfigError(f"{where}: cannot make a keyboard: {problem}") from problem
    node = uinput.device.path
    own_keyboard(node)
    # python-evdev opened the new node to find it; nobody would read that descriptor.
    uinput.device.close()
    uinput.device = None
    return UinputKeyboard(uinput, node)


class Wedge:
    """A sink that types validated codes on a virtual keyboard, on a thread of its own.

    ``decided`` runs on the pipeline thread: it only picks the decision and queues
    its keys, so typing (about ``key_delay`` per key) never holds a decision up.
    The typing thread alone writes to ``device``, codes in the order decided.
    ``close`` is for the thread that owns the wedge (the runner), after the
    pipeline has stopped; ``sleep`` is the seam for time.

    >>> class Keys:
    ...     def __init__(self): self.down = []
    ...     def write(self, etype, code, value): value and self.down.append(e.KEY[code][4:])
    ...     def syn(self): pass
    ...     def close(self): pass
    >>> from agent.ledger import Ledger
    >>> from agent.read import Read
    >>> from agent import codes
    >>> ledger = Ledger.open(":memory:", device_id="k", site_id="s")
    >>> wedge = Wedge(Keys(), suffix="tab", key_delay=0)
    >>> for raw in (b"81234567890123456789", b"81234567890123456789", b"6901234567892"):
    ...     wedge.decided(ledger.decide_and_record(Read(raw, "stdin", "-"), "dispense", codes.parse(raw)))
    >>> wedge.close()
    >>> "".join(wedge.device.down)  # accepted once; the duplicate and the EAN-13 are not typed
    '81234567890123456789TAB'
    """

    def __init__(
        self,
        device: VirtualKeyboard,
        *,
        verdicts: Iterable[str] = ("accepted",),
        suffix: str = "enter",
        prefix: str = "",
        layout: str = "us",
        key_delay: float = 0.001,
        sleep: Callable[[float], Any] = time.sleep,
    ) -> None:
        keys_for(prefix, layout)  # Untypable now, not at the first scan
        self.device = device
        self.verdicts = frozenset(verdicts)
        self.suffix = suffix
        self.prefix = prefix
        self.layout = layout
        self.key_delay = key_delay
        self.sleep = sleep
        self.typed = 0  # codes typed, for the typing thread to count and anyone to read
        self._queue: queue.Queue[tuple[str, list[Stroke]] | None] = queue.Queue(QUEUE_LIMIT)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._type, name="wedge", daemon=True)
        self._thread.start()

    @classmethod
    def from_config(cls, config: Any, *, opener: Callable[[str, str], VirtualKeyboard] = open_uinput) -> Wedge:
        """The wedge for ``[wedge]`` (:class:`agent.config.WedgeConfig`); ConfigError if it cannot type."""
        try:
            keys_for(config.prefix, config.layout)
        except Untypable as problem:
            raise ConfigError(f"[wedge] prefix {config.prefix!r}: {problem}") from problem
        device = opener(config.device_name, config.layout)
        wedge = cls(
            device,
            verdicts=config.verdicts,
            suffix=config.suffix,
            prefix=config.prefix,
            layout=config.layout,
            key_delay=config.key_delay_ms / 1000,
        )
        log.info(
            "wedge: typing %s codes into %r (%s, layout %s, suffix %s)",
            "/".join(config.verdicts),
            config.device_name,
            getattr(device, "node", "?"),
            config.layout,
            config.suffix,
        )
        return wedge

    def decided(self, decision: Decision) -> None:
        text = text_for(decision, self.verdicts)
        if text is None:
            return
        try:
            keys = keys_for(self.prefix + text, self.layout, self.suffix)
        except Untypable as problem:
            log.error("wedge: %s not typed: %s (set [wedge] layout to the POS's layout)", text, problem)
            return
        try:
            self._queue.put_nowait((text, keys))
        except queue.Full:
            log.error("wedge: %s not typed: %d codes already waiting to be typed", text, QUEUE_LIMIT)

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Type what is queued (for at most ``timeout`` seconds), then remove the keyboard."""
        deadline = time.monotonic() + timeout
        with contextlib.suppress(queue.Full):  # still full at the deadline: stopped below
            self._queue.put(None, timeout=timeout)
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            self._stopping.set()  # stops between two keys, never between a key's down and up
            self._thread.join(1.0)
            log.error("wedge: closed with %d codes not typed after %.0f s", self._queue.qsize(), timeout)
        self.device.close()

    # -- the typing thread -------------------------------------------------------

    def _type(self) -> None:
        while not self._stopping.is_set():
            job = self._queue.get()
            if job is None:
                return
            text, keys = job
            try:
                self._type_keys(keys)
            except Exception:  # the POS misses this code; the next ones still go
                log.exception("wedge: typing %s failed", text)
                continue
            self.typed += 1

    def _type_keys(self, keys: list[Stroke]) -> None:
        for key in keys:
            if self._stopping.is_set():
                return
            for etype, code, value in key_events([key]):
                if etype == e.EV_SYN:
                    self.device.syn()
                else:
                    self.device.write(etype, code, value)
            if self.key_delay:
                # After each key, the last one too: the next code's first key waits as well.
                self.sleep(self.key_delay)
