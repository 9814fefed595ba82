"""Keyboard layouts: which character a key code gives, as the scanner believes the host types.

A keyboard-wedge scanner sends key positions, not characters, chosen for the
host layout set in the scanner (its "keyboard country"). Decoding with the
same layout gives back the characters it meant. Each table maps an evdev key
code to ``(plain, shift, altgr)``; ``None`` is a character the key cannot give
there (including dead keys, which only combine with the next key).

>>> from evdev import ecodes as e
>>> LAYOUTS["us"][e.KEY_2]
('2', '@', None)
>>> LAYOUTS["de"][e.KEY_Z][0], LAYOUTS["fr"][e.KEY_1][1]
('y', '1')

Keypad keys are the same in every layout and always give digits (see
:data:`KEYPAD`): scanners use them for digits whatever the host's NumLock.

The other way round, :func:`strokes` says which key types a character, for
the agent's own virtual keyboard (:mod:`agent.sinks.wedge`).
"""

from __future__ import annotations

import functools

from evdev import ecodes as e

Key = tuple[str | None, str | None, str | None]


def _letters(order: str, overrides: dict[int, Key] | None = None) -> dict[int, Key]:
    """Letter keys in QWERTY key-position order, given the letters the layout puts there."""
    positions = "qwertyuiopasdfghjklzxcvbnm"
    table: dict[int, Key] = {}
    for pos, letter in zip(positions, order, strict=True):
        table[getattr(e, f"KEY_{pos.upper()}")] = (letter, letter.upper(), None)
    table.update(overrides or {})
    return table


def _row(keys: list[str], plain: str, shift: str, altgr: str = "") -> dict[int, Key]:
    """A run of keys; ``·`` in a string marks a key that gives nothing there (a dead key)."""

    def at(chars: str, i: int) -> str | None:
        return chars[i] if i < len(chars) and chars[i] not in ("·", " ") else None

    return {getattr(e, f"KEY_{k}"): (at(plain, i), at(shift, i), at(altgr, i)) for i, k in enumerate(keys)}


_NUMBER_ROW = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "0", "MINUS", "EQUAL"]
_PUNCTUATION = ["LEFTBRACE", "RIGHTBRACE", "SEMICOLON", "APOSTROPHE", "GRAVE", "BACKSLASH", "102ND"]
_BOTTOM = ["COMMA", "DOT", "SLASH"]

US: dict[int, Key] = {
    **_letters("qwertyuiopasdfghjklzxcvbnm"),
    **_row(_NUMBER_ROW, "1234567890-=", "!@#$%^&*()_+"),
    **_row(_PUNCTUATION, "[];'`\\\\", '{}:"~||'),
    **_row(_BOTTOM, ",./", "<>?"),
    e.KEY_SPACE: (" ", " ", None),
}

DE: dict[int, Key] = {
    **_letters("qwertzuiopasdfghjklyxcvbnm", {e.KEY_Q: ("q", "Q", "@"), e.KEY_E: ("e", "E", "€")}),
    **_row(_NUMBER_ROW, "1234567890ß·", '!"§$%&/()=?·', " ²³    {[]}\\"),
    **_row(_PUNCTUATION, "ü+öä·#<", "Ü*ÖÄ°'>", " ~    |"),
    **_row(_BOTTOM, ",.-", ";:_"),
    e.KEY_SPACE: (" ", " ", None),
}

FR: dict[int, Key] = {
    **_letters(
        "azertyuiopqsdfghjklwxcvbn,",
        {
            e.KEY_E: ("e", "E", "€"),
            e.KEY_M: (",", "?", None),
        },
    ),
    **_row(_NUMBER_ROW, "&é\"'(-è_çà)=", "1234567890°+", " ·#{[|·\\^@]}"),
    **_row(_PUNCTUATION, "·$mù²*<", "·£M%·µ>", " ¤"),
    **_row(_BOTTOM, ";:!", "./§"),
    e.KEY_SPACE: (" ", " ", None),
}

LAYOUTS: dict[str, dict[int, Key]] = {"us": US, "de": DE, "fr": FR}

#: Keypad keys: the same characters in every layout, NumLock or not.
KEYPAD: dict[int, str] = {
    **{getattr(e, f"KEY_KP{n}"): str(n) for n in range(10)},
    e.KEY_KPDOT: ".",
    e.KEY_KPSLASH: "/",
    e.KEY_KPASTERISK: "*",
    e.KEY_KPMINUS: "-",
    e.KEY_KPPLUS: "+",
}

#: One key to type a character: the key code, and the modifier held with it
#: (``KEY_LEFTSHIFT``, ``KEY_RIGHTALT`` for AltGr) or None.
Stroke = tuple[int, int | None]
_LEVELS = (None, e.KEY_LEFTSHIFT, e.KEY_RIGHTALT)  # the order of a Key's three characters


@functools.cache
def strokes(layout: str) -> dict[str, Stroke]:
    """Which key, and which modifier with it, types each character on ``layout``: :data:`LAYOUTS` inverted.

    A character a key gives without a modifier is typed that way, then with Shift,
    then with AltGr; among keys of one level the lowest key code wins, and the
    ISO key beside the left Shift (``KEY_102ND``, absent from US keyboards) comes
    last. Keypad keys are never used: on the host they type digits only with
    NumLock on. AZERTY digits need Shift:

    >>> strokes("fr")["1"] == (e.KEY_1, e.KEY_LEFTSHIFT)
    True
    >>> strokes("us")["1"] == (e.KEY_1, None)
    True
    >>> strokes("de")["@"] == (e.KEY_Q, e.KEY_RIGHTALT)
    True
    >>> strokes("us")["\\\\"] == (e.KEY_BACKSLASH, None)
    True
    """
    table = LAYOUTS[layout]
    order = sorted(table, key=lambda code: (code == e.KEY_102ND, code))
    found: dict[str, Stroke] = {}
    for level, modifier in enumerate(_LEVELS):
        for code in order:
            char = table[code][level]
            if char is not None:
                found.setdefault(char, (code, modifier))
    return found
