"""What each verdict and each device state looks and sounds like, as data.

A :class:`Pattern` has one track per device, all starting together: one
:class:`Step` for each LED that takes part, and a sequence of steps for the
buzzer. A *look* shows a device state for as long as it lasts: LED name to a
step that repeats until replaced.

>>> DEFAULT_PATTERNS["rejected"].red
Step(on_s=0.15, off_s=0.15, n=3, tone_hz=None)
>>> round(DEFAULT_PATTERNS["rejected"].duration, 3)
0.9
>>> DEFAULT_PATTERNS["double_read"].silent
True
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

LEDS = ("green", "red", "amber")

#: Pitch of a buzzer step that names none.
DEFAULT_TONE_HZ = 2000.0

#: Patterns the feedback plays (which decision gets which: ``agent.sinks.feedback.pattern_for``).
PATTERN_NAMES = (
    "accepted",
    "duplicate",
    "rejected",
    "product_barcode",
    "double_read",
    "fault",
    # Documents and the station lock.
    "flagged",
    "wrong_drug",
    "over_count",
    "document_opened",
    "document_complete",
    "document_incomplete",
    "delivery_discrepancy",
    "locked",
    "void",
    "exception",
    "acknowledged",
    # Another station of the site accepted a code this one accepted (told after the fact).
    "conflict",
)

#: Device states, most important first: each LED shows the first state that is on and has a
#: look for that LED. ``ready`` is on whenever neither ``fault`` nor ``locked`` is.
STATES = ("fault", "locked", "scanner_missing", "backlog", "broker_offline", "ready")


@dataclass(frozen=True)
class Step:
    """``n`` times: on for ``on_s`` seconds, then off for ``off_s``.

    ``n=None`` repeats until replaced (a look); with ``off_s=0`` that is steady on.
    ``tone_hz`` is the pitch on a tonal (passive) buzzer; an active buzzer ignores it.
    """

    on_s: float
    off_s: float = 0.0
    n: int | None = 1
    tone_hz: float | None = None

    @property
    def duration(self) -> float:
        return math.inf if self.n is None else self.n * (self.on_s + self.off_s)


@dataclass(frozen=True)
class Pattern:
    """One verdict's flashes and beeps; every track starts at once."""

    green: Step | None = None
    red: Step | None = None
    amber: Step | None = None
    buzzer: tuple[Step, ...] = ()

    def led(self, name: str) -> Step | None:
        return getattr(self, name)

    @property
    def silent(self) -> bool:
        """Nothing to show: such a pattern leaves whatever plays alone (a double read)."""
        return not self.buzzer and all(self.led(name) is None for name in LEDS)

    @property
    def duration(self) -> float:
        tracks = [self.led(name).duration for name in LEDS if self.led(name) is not None]
        tracks.append(sum(step.duration for step in self.buzzer))
        return max(tracks)


#: Each recognisable by ear alone, on an active buzzer too (by rhythm: one short, one long,
#: three short, two medium, three long, ...) and on a tonal one also by pitch.
DEFAULT_PATTERNS: Mapping[str, Pattern] = {
    "accepted": Pattern(green=Step(0.3, 0.2), buzzer=(Step(0.08, 0.0, 1, 2700.0),)),
    "duplicate": Pattern(red=Step(1.0, 0.2), buzzer=(Step(0.8, 0.0, 1, 600.0),)),
    "rejected": Pattern(red=Step(0.15, 0.15, 3), buzzer=(Step(0.08, 0.22, 3, 1800.0),)),
    # "That is the product barcode, scan the trace code": two medium beeps, rising.
    "product_barcode": Pattern(
        amber=Step(0.25, 0.15, 2), buzzer=(Step(0.25, 0.15, 1, 1000.0), Step(0.25, 0.15, 1, 2000.0))
    ),
    "double_read": Pattern(),
    "fault": Pattern(red=Step(0.4, 0.2, 3), amber=Step(0.4, 0.2, 3), buzzer=(Step(0.4, 0.2, 3, 400.0),)),
    # Documents. Green means recorded, red refused, amber "look again"; each rhythm is its own
    # (short-medium, medium-long, a trill, a chime up, a chime down, a siren, ...).
    # Recorded, with a lifecycle warning: the accept blink and beep, then a low tone and amber.
    "flagged": Pattern(
        green=Step(0.3, 0.2), amber=Step(1.0, 0.2), buzzer=(Step(0.08, 0.15, 1, 2700.0), Step(0.3, 0.0, 1, 1200.0))
    ),
    # Not on the document (串码): put it back, take the right drug. Falling, medium then long.
    "wrong_drug": Pattern(red=Step(0.4, 0.1, 2), buzzer=(Step(0.3, 0.1, 1, 1500.0), Step(0.6, 0.0, 1, 500.0))),
    # The line (or document) has all it takes, or this code is in it already: a fast trill.
    "over_count": Pattern(red=Step(0.06, 0.06, 5), buzzer=(Step(0.06, 0.06, 5, 2200.0),)),
    "document_opened": Pattern(
        green=Step(0.1, 0.1, 2), buzzer=(Step(0.06, 0.06, 1, 2000.0), Step(0.06, 0.0, 1, 2700.0))
    ),
    # A chime up: short, short, long.
    "document_complete": Pattern(
        green=Step(1.2, 0.2),
        buzzer=(Step(0.1, 0.03, 1, 1600.0), Step(0.1, 0.03, 1, 2000.0), Step(0.35, 0.0, 1, 2700.0)),
    ),
    # The same chime turned round: long, short, short, down.
    "document_incomplete": Pattern(
        amber=Step(0.5, 0.2, 2),
        buzzer=(Step(0.35, 0.05, 1, 2000.0), Step(0.1, 0.03, 1, 1600.0), Step(0.1, 0.0, 1, 1200.0)),
    ),
    # A delivery closed against its manifest with something missing, extra or mismatched:
    # amber and red together, three low falling pairs (unlike any scan's pattern).
    "delivery_discrepancy": Pattern(
        red=Step(0.3, 0.2, 3),
        amber=Step(0.3, 0.2, 3),
        buzzer=(Step(0.2, 0.05, 1, 1400.0), Step(0.3, 0.15, 1, 700.0)) * 3,
    ),
    # A two-tone siren; the ``locked`` look then keeps red blinking until acknowledged.
    "locked": Pattern(red=Step(0.2, 0.05, 6), buzzer=(Step(0.2, 0.05, 1, 1800.0), Step(0.2, 0.05, 1, 900.0)) * 3),
    # Confirmations of a supervisor's command: short, and unlike any scan's.
    "void": Pattern(amber=Step(0.3, 0.2), buzzer=(Step(0.3, 0.0, 1, 1000.0),)),
    "exception": Pattern(amber=Step(0.1, 0.1, 3), buzzer=(Step(0.3, 0.08, 1, 1500.0), Step(0.08, 0.0, 1, 2000.0))),
    "acknowledged": Pattern(green=Step(0.6, 0.2), buzzer=(Step(0.08, 0.1, 1, 1400.0), Step(0.6, 0.0, 1, 2700.0))),
    # A conflict with another station, after the fact: amber alone, long, with a low
    # double warble (no scan is in hand; a supervisor must look at both sales).
    "conflict": Pattern(amber=Step(1.5, 0.3, 2), buzzer=(Step(0.15, 0.05, 1, 900.0), Step(0.15, 0.3, 1, 1300.0)) * 2),
}

#: LED name -> a step repeating until the state ends.
DEFAULT_LOOKS: Mapping[str, Mapping[str, Step]] = {
    "fault": {"red": Step(0.5, 0.5, None)},
    # Twice as fast as fault: scans are refused until a supervisor acknowledges.
    "locked": {"red": Step(0.25, 0.25, None)},
    "scanner_missing": {"amber": Step(0.15, 0.35, None)},
    "backlog": {"amber": Step(1.0, 1.0, None)},
    "broker_offline": {"amber": Step(1.0, 0.0, None)},
    # A short blip every 3 s: the agent is alive and nothing is wrong.
    "ready": {"green": Step(0.05, 2.95, None)},
}


def tones(patterns: Mapping[str, Pattern]) -> list[float]:
    """Every pitch the patterns use, for sizing a tonal buzzer's range."""
    return [s.tone_hz or DEFAULT_TONE_HZ for p in patterns.values() for s in p.buzzer]


# Readers for the config file. They take agent.config's Table (duck-typed, so that
# this module stays importable by config without a cycle).


def read_step(t: Any, *, repeat: bool = False, tone: bool = False) -> Step:
    """A step from an inline table ``{ on = 0.1, off = 0.2, n = 3, tone = 2000 }``."""
    if "on" not in t.data:
        t.fail("on", "missing; every step needs its on time in seconds, e.g. { on = 0.1 }")
    step = Step(
        on_s=t.number("on", 0.1, low=0.001, high=10.0),
        off_s=t.number("off", 0.0, low=0.0, high=10.0),
        n=None if repeat else t.integer("n", 1, low=1, high=20),
        tone_hz=t.number("tone", DEFAULT_TONE_HZ, low=50.0, high=10000.0) if tone else None,
    )
    t.finish()
    return step


def read_pattern(t: Any) -> Pattern:
    """A pattern table: ``green``/``red``/``amber`` steps and a ``buzzer`` list of steps."""
    leds = {}
    for name in LEDS:
        if name in t.data:
            leds[name] = read_step(t.table(name))
        else:
            t.seen.add(name)
    steps = t.get("buzzer", [], list)
    if not all(isinstance(step, dict) for step in steps):
        t.fail("buzzer", "must be a list of steps, e.g. [{ on = 0.08, tone = 2700 }]")
    where = f"{t.where[:-1]}.buzzer"
    buzzer = tuple(read_step(type(t)(f"{where} #{n + 1}]", step), tone=True) for n, step in enumerate(steps))
    t.finish()
    return Pattern(buzzer=buzzer, **leds)


def read_look(t: Any) -> dict[str, Step]:
    """A state's look: LED name -> ``{ on = .., off = .. }`` repeating (``off = 0``: steady)."""
    look = {}
    for name in LEDS:
        if name in t.data:
            look[name] = read_step(t.table(name), repeat=True)
        else:
            t.seen.add(name)
    t.finish()
    return look
