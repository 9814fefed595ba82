"""LEDs and a buzzer on GPIO pins, through gpiozero.

Green, red and amber :class:`~gpiozero.LED` s and an active
:class:`~gpiozero.Buzzer` or a passive :class:`~gpiozero.TonalBuzzer`. A verdict's
LED tracks blink on gpiozero's own background threads (``blink(n=...)``); the buzzer
track and the return of each LED to its device-state look at the end of its track
run on one small scheduler thread. A new pattern pre-empts the one still playing; an
empty one (a double read) leaves it alone. The call from the pipeline returns at once.

>>> from gpiozero.pins.mock import MockFactory
>>> from agent.config import FeedbackConfig
>>> fb = GpioFeedback(FeedbackConfig(backend="gpio"), pin_factory=MockFactory())
>>> fb.play("accepted")
>>> fb.leds["green"].is_lit, fb.buzzer.is_active
(True, True)
>>> fb.close()
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable

from gpiozero import LED, Buzzer, TonalBuzzer
from gpiozero.tones import Tone

from agent.config import FeedbackConfig
from agent.domain import Decision
from agent.sinks.feedback import Feedback
from agent.sinks.patterns import DEFAULT_TONE_HZ, LEDS, STATES, Pattern, Step, tones

log = logging.getLogger(__name__)


class GpioFeedback(Feedback):
    """The ``gpio`` backend. ``pin_factory`` defaults to gpiozero's own choice
    (lgpio on a Raspberry Pi; ``MockFactory`` in tests)."""

    def __init__(self, config: FeedbackConfig, *, pin_factory=None) -> None:
        super().__init__()
        self.patterns = dict(config.patterns)
        self.looks = dict(config.states)
        self.leds: dict[str, LED] = {}
        self.buzzer: Buzzer | TonalBuzzer | None = None
        try:
            for name in LEDS:
                pin = getattr(config, f"{name}_pin")
                self.leds[name] = LED(pin, active_high=config.active_high, pin_factory=pin_factory)
            if config.buzzer == "active":
                self.buzzer = Buzzer(config.buzzer_pin, active_high=config.buzzer_active_high, pin_factory=pin_factory)
            elif config.buzzer == "tonal":
                mid, octaves = tone_range(tones(self.patterns))
                self.buzzer = TonalBuzzer(config.buzzer_pin, mid_tone=mid, octaves=octaves, pin_factory=pin_factory)
        except Exception:
            self._close_devices()
            raise
        self._generation = 0
        self._closed = False
        self._busy_until = dict.fromkeys(LEDS, 0.0)  # monotonic end of the LED's pattern track
        self._showing: dict[str, Step | None] = dict.fromkeys(LEDS)
        self._agenda = _Agenda()
        self._edges_of: dict[str, tuple[Pattern, list[tuple[float, float | None]]]] = {}
        self._sounding = False  # whether the buzzer was last told to sound (under the lock)
        with self.lock:
            self.show_states(self.states())

    # Patterns ------------------------------------------------------------------

    def pattern_duration(self, name: str) -> float:
        pattern = self.patterns.get(name)
        return pattern.duration if pattern is not None else 0.0

    def play(self, name: str, decision: Decision | None = None) -> None:
        pattern = self.patterns.get(name)
        if pattern is None or pattern.silent:
            return
        with self.lock:
            if self._closed:
                return
            self._generation += 1
            generation = self._generation
            now = time.monotonic()
            actions: list[tuple[float, Callable[[], None]]] = []
            # The buzzer first: its first edge is a plain pin write on this thread.
            self._silence()
            for offset, tone in self._edges(name, pattern):
                if offset == 0.0:
                    self._sound(tone)
                else:
                    actions.append((now + offset, self._when_current(generation, self._sound, tone)))
            for led_name, led in self.leds.items():
                step = pattern.led(led_name)
                if step is not None:
                    self._showing[led_name] = None
                    # Lit now, on this thread; gpiozero's blink thread then carries on from "on".
                    led.on()
                    led.blink(step.on_s, step.off_s, step.n, background=True)
                    self._busy_until[led_name] = now + step.duration
                    actions.append((now + step.duration, self._when_current(generation, self._end_track, led_name)))
                elif self._busy_until[led_name] > now:
                    self._end_track(led_name)  # cut short: the old pattern's track on this LED
            self._agenda.replace(actions)

    def _edges(self, name: str, pattern: Pattern) -> list[tuple[float, float | None]]:
        """:func:`_buzzer_edges` of ``pattern``, worked out once per pattern (it is on the way to the first edge)."""
        cached = self._edges_of.get(name)
        if cached is None or cached[0] is not pattern:
            cached = self._edges_of[name] = (pattern, _buzzer_edges(pattern.buzzer))
        return cached[1]

    def _when_current(self, generation: int, action: Callable, *args) -> Callable[[], None]:
        """``action(*args)``, unless a newer pattern has started since."""

        def run() -> None:
            with self.lock:
                if generation == self._generation:
                    action(*args)

        return run

    def _sound(self, tone: float | None) -> None:
        if self.buzzer is None:
            return
        if tone is None:
            self._silence()
        elif isinstance(self.buzzer, TonalBuzzer):
            self.buzzer.play(Tone.from_frequency(tone))
            self._sounding = True
        else:
            self.buzzer.on()
            self._sounding = True

    def _silence(self) -> None:
        # A buzzer this class left silent is not written again: a pattern's first edge
        # would otherwise wait for a pin write that changes nothing.
        if not self._sounding:
            return
        if isinstance(self.buzzer, TonalBuzzer):
            self.buzzer.stop()
        elif self.buzzer is not None:
            self.buzzer.off()
        self._sounding = False

    def _end_track(self, led_name: str) -> None:
        self._busy_until[led_name] = 0.0
        self._show_look(led_name, force=True)

    # Device states -------------------------------------------------------------

    def show_states(self, states: frozenset[str]) -> None:
        if self._closed:
            return  # a late word from the uplink after shutdown
        now = time.monotonic()
        for led_name in self.leds:
            if self._busy_until[led_name] <= now:
                self._show_look(led_name)

    def look_for(self, led_name: str, states: frozenset[str] | None = None) -> Step | None:
        """What ``led_name`` shows between patterns: the look of the first state on that has one."""
        states = self.states() if states is None else states
        for name in STATES:
            if name in states and led_name in self.looks.get(name, {}):
                return self.looks[name][led_name]
        return None

    def _show_look(self, led_name: str, force: bool = False) -> None:
        step = self.look_for(led_name)
        if step == self._showing[led_name] and not force:
            return  # already blinking this way: do not restart its rhythm
        self._showing[led_name] = step
        led = self.leds[led_name]
        if step is None:
            led.off()
        elif step.off_s == 0:
            led.on()
        else:
            led.blink(step.on_s, step.off_s, None, background=True)

    # ---------------------------------------------------------------------------

    def close(self) -> None:
        self._agenda.stop()
        with self.lock:
            self._generation += 1
            self._closed = True
            self._close_devices()

    def _close_devices(self) -> None:
        for device in [*self.leds.values(), self.buzzer]:
            if device is not None:
                try:
                    if isinstance(device, TonalBuzzer):
                        device.stop()
                    else:
                        device.off()
                    device.close()
                except Exception:
                    log.exception("could not release %r", device)


def _buzzer_edges(steps: tuple[Step, ...]) -> list[tuple[float, float | None]]:
    """``(offset_s, tone)`` edges of a buzzer track; tone ``None`` is silence.

    >>> _buzzer_edges((Step(0.1, 0.2, 2, 440.0),))
    [(0.0, 440.0), (0.1, None), (0.3, 440.0), (0.4, None)]
    """
    edges: list[tuple[float, float | None]] = []
    t = 0.0
    for step in steps:
        for _ in range(step.n or 1):
            edges.append((round(t, 6), step.tone_hz or DEFAULT_TONE_HZ))
            edges.append((round(t + step.on_s, 6), None))
            t += step.on_s + step.off_s
    return edges


def tone_range(pitches: list[float]) -> tuple[Tone, int]:
    """A TonalBuzzer's ``mid_tone`` and ``octaves`` covering every pitch in ``pitches``.

    >>> mid, octaves = tone_range([400.0, 2700.0])
    >>> mid.frequency < 400 * 2 ** octaves and mid.frequency > 2700 / 2 ** octaves
    True
    """
    if not pitches:
        return Tone("A4"), 1
    low = math.floor(12 * math.log2(min(pitches) / 440) + 69)
    high = math.ceil(12 * math.log2(max(pitches) / 440) + 69)
    mid = (low + high) // 2
    octaves = max(1, math.ceil(max(mid - low, high - mid) / 12))
    return Tone.from_midi(mid), octaves


class _Agenda:
    """One daemon thread running timed actions; :meth:`replace` swaps the whole agenda."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._items: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="feedback-agenda", daemon=True)
        self._thread.start()

    def replace(self, actions: list[tuple[float, Callable[[], None]]]) -> None:
        with self._cond:
            self._items = [(at, next(self._order), action) for at, action in actions]
            heapq.heapify(self._items)
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join(5)

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._stopped:
                        return
                    if self._items:
                        delay = self._items[0][0] - time.monotonic()
                        if delay <= 0:
                            action = heapq.heappop(self._items)[2]
                            break
                        self._cond.wait(delay)
                    else:
                        self._cond.wait()
            # Outside the condition: actions take the feedback's lock, and play()
            # holds that lock while it calls replace().
            try:
                action()
            except Exception:
                log.exception("feedback action failed")
