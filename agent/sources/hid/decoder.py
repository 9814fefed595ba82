"""Keyboard events in, scans out: the keyboard-wedge decoder. Pure: no device needed.

>>> from evdev import InputEvent, ecodes as e
>>> d = KeyDecoder("us")
>>> def key(code, value, t): return InputEvent(int(t), int(t % 1 * 1e6), e.EV_KEY, code, value)
>>> events = [key(e.KEY_LEFTSHIFT, 1, 0.0), key(e.KEY_A, 1, 0.01), key(e.KEY_A, 0, 0.015),
...           key(e.KEY_LEFTSHIFT, 0, 0.02), key(e.KEY_KP1, 1, 0.03), key(e.KEY_ENTER, 1, 0.04)]
>>> [t.raw for ev in events for t in d.feed(ev)]
[b'A1\\n']
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from evdev import InputEvent
from evdev import ecodes as e

from agent.sources.hid.keymaps import KEYPAD, LAYOUTS

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
