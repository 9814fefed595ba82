"""gpiozero's own mock pins, read back as runs of (state, seconds)."""

from __future__ import annotations

import time

from gpiozero.pins.mock import MockFactory, MockPWMPin


class ToneRecordingPin(MockPWMPin):
    """gpiozero's ``MockPWMPin`` that also keeps every frequency set on it, with the
    monotonic time, because a tonal buzzer's pitch is its PWM frequency."""

    def __init__(self, factory, info):
        self.frequencies: list[tuple[float, float | None]] = []
        super().__init__(factory, info)

    def _set_frequency(self, value):
        super()._set_frequency(value)
        self.frequencies.append((time.monotonic(), value))


def mock_factory() -> MockFactory:
    """A MockFactory whose pins do PWM (for the tonal buzzer) and record pitches."""
    return MockFactory(pin_class=ToneRecordingPin)


def runs(pin) -> list[tuple[bool, float | None]]:
    """What ``pin`` did since its states were last cleared: ``(on, seconds)`` runs, the
    first (before anything happened) left out, the last one open (``None``)."""
    states = pin.states
    out: list[tuple[bool, float | None]] = []
    for i in range(1, len(states)):
        lasted = states[i + 1].timestamp if i + 1 < len(states) else None
        out.append((bool(states[i].state), lasted))
    return out


def assert_runs(
    pin, expected: list[tuple[bool, float | None]], tolerance: float = 0.15, *, prefix: bool = False
) -> None:
    """``pin``'s runs are ``expected``: same states in order, each duration within ``tolerance``
    seconds (``None`` in ``expected``: any duration, or still going). With ``prefix``, only
    the first ``len(expected)`` runs are compared."""
    actual = runs(pin)
    if prefix:
        actual = actual[: len(expected)]
    shown = [(on, None if s is None else round(s, 3)) for on, s in actual]
    assert [on for on, _ in actual] == [on for on, _ in expected], f"pin {pin.info.name}: {shown}"
    for (_, lasted), (_, want) in zip(actual, expected, strict=True):
        if want is not None:
            assert lasted is not None and abs(lasted - want) <= tolerance, f"pin {pin.info.name}: {shown}"
