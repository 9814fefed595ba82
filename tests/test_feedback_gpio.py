"""The gpio backend on gpiozero's MockFactory: each pin's recorded history, pattern by pattern."""

from __future__ import annotations

import time
from dataclasses import replace
from statistics import median

import pytest

from agent import codes
from agent.config import FeedbackConfig
from agent.domain import Decision
from agent.ledger import Ledger
from agent.read import Read
from agent.sinks.feedback import ALL_CLEAR, SELF_TEST
from agent.sinks.gpio import GpioFeedback
from agent.sinks.patterns import DEFAULT_LOOKS, DEFAULT_PATTERNS, Step
from tests.support.gpio import assert_runs, mock_factory, runs

PINS = {"green": 23, "red": 24, "amber": 25, "buzzer": 18}
T, F = True, False

# What the default patterns must do on the pins, written out independently of agent.sinks.patterns.
EXPECTED = {
    "accepted": {"green": [(T, 0.3), (F, None)], "buzzer": [(T, 0.08), (F, None)]},
    "duplicate": {"red": [(T, 1.0), (F, None)], "buzzer": [(T, 0.8), (F, None)]},
    "rejected": {
        "red": [(T, 0.15), (F, 0.15), (T, 0.15), (F, 0.15), (T, 0.15), (F, None)],
        "buzzer": [(T, 0.08), (F, 0.22), (T, 0.08), (F, 0.22), (T, 0.08), (F, None)],
    },
    "product_barcode": {
        "amber": [(T, 0.25), (F, 0.15), (T, 0.25), (F, None)],
        "buzzer": [(T, 0.25), (F, 0.15), (T, 0.25), (F, None)],
    },
    "fault": {
        "red": [(T, 0.4), (F, 0.2), (T, 0.4), (F, 0.2), (T, 0.4), (F, None)],
        "amber": [(T, 0.4), (F, 0.2), (T, 0.4), (F, 0.2), (T, 0.4), (F, None)],
        "buzzer": [(T, 0.4), (F, 0.2), (T, 0.4), (F, 0.2), (T, 0.4), (F, None)],
    },
}
PITCHES = {
    "accepted": [2700.0],
    "duplicate": [600.0],
    "rejected": [1800.0, 1800.0, 1800.0],
    "product_barcode": [1000.0, 2000.0],
    "fault": [400.0, 400.0, 400.0],
}

#: Quick looks for the state tests, so they need not wait seconds per blink.
QUICK_LOOKS = {
    "fault": {"red": Step(0.1, 0.1, None)},
    "scanner_missing": {"amber": Step(0.05, 0.05, None)},
    "backlog": {"amber": Step(0.1, 0.1, None)},
    "broker_offline": {"amber": Step(0.2, 0.0, None)},
    "ready": {"green": Step(0.05, 0.15, None)},
}


@pytest.fixture
def factory():
    return mock_factory()


@pytest.fixture
def make(factory):
    """Build a GpioFeedback on the mock pins (no state looks unless asked), pins' history cleared."""
    made = []

    def build(states=None, **changes) -> GpioFeedback:
        fb = GpioFeedback(replace(FeedbackConfig(backend="gpio"), states=states or {}, **changes), pin_factory=factory)
        made.append(fb)
        for name in PINS:
            factory.pin(PINS[name]).clear_states()
        return fb

    yield build
    for fb in made:
        fb.close()


def pin(factory, name):
    return factory.pin(PINS[name])


def decisions() -> dict[str, Decision]:
    """Real decisions from a ledger, one per verdict (and the product barcode reject)."""
    ledger = Ledger.open(":memory:", device_id="k", site_id="s", double_read_window_s=0.0)

    def decide(raw: bytes, source: str = "a") -> Decision:
        read = Read(raw, "stdin", source, scanner=source)
        return ledger.decide_and_record(read, "dispense", codes.parse(raw))

    out = {"accepted": decide(b"81234567890123456789")}
    out["duplicate"] = decide(b"81234567890123456789", "b")
    out["rejected"] = decide(b"123")
    out["product_barcode"] = decide(b"6901234567892")
    read = Read(b"81234567890123456780", "stdin", "a")
    parsed = codes.parse(read.raw)
    out["fault"] = Decision("fault", "ledger_unwritable", "disk full", "dispense", parsed.code, parsed, read)
    return out


def settle(pattern: str) -> None:
    time.sleep(DEFAULT_PATTERNS[pattern].duration + 0.3)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_each_pattern_drives_its_pins_in_sequence_and_time(make, factory, name):
    fb = make()
    fb.decided(decisions()[name])
    settle(name)
    for device in PINS:
        assert_runs(pin(factory, device), EXPECTED[name].get(device, []))


@pytest.mark.parametrize("name", list(PITCHES))
def test_tonal_buzzer_plays_each_pattern_at_its_pitches(make, factory, name):
    fb = make(buzzer="tonal")
    buzzer = pin(factory, "buzzer")
    already = len(buzzer.frequencies)
    fb.play(name)
    settle(name)
    assert_runs(buzzer, EXPECTED[name]["buzzer"])
    pitches = [f for _, f in buzzer.frequencies[already:] if f is not None]
    assert pitches == pytest.approx(PITCHES[name])
    assert buzzer.frequencies[-1][1] is None  # silent at the end


def test_double_read_shows_nothing_and_does_not_cut_the_pattern_playing(make, factory):
    fb = make()
    d = decisions()
    fb.decided(d["accepted"])
    time.sleep(0.05)
    fb.play("double_read")
    settle("accepted")
    assert_runs(pin(factory, "green"), [(T, 0.3), (F, None)])
    assert_runs(pin(factory, "buzzer"), [(T, 0.08), (F, None)])
    assert runs(pin(factory, "red")) == runs(pin(factory, "amber")) == []


def test_a_new_verdict_pre_empts_the_one_playing(make, factory):
    fb = make()
    fb.play("duplicate")
    time.sleep(0.3)
    fb.play("accepted")
    time.sleep(1.3)  # past where the duplicate's red would have ended: nothing of it comes back
    assert_runs(pin(factory, "red"), [(T, 0.3), (F, None)], tolerance=0.15)
    assert_runs(pin(factory, "green"), [(T, 0.3), (F, None)])
    # The long low tone is cut, then the short beep.
    assert_runs(pin(factory, "buzzer"), [(T, 0.3), (F, 0.0), (T, 0.08), (F, None)], tolerance=0.15)


def test_fault_state_suppresses_the_accept_pattern(make, factory):
    # Fault shown steady on amber here, so that red carries the pattern alone.
    fb = make(states={"fault": {"amber": Step(1.0, 0.0, None)}})
    fb.set_state("fault", True, cause="disk_full")
    for device in PINS:
        pin(factory, device).clear_states()
    fb.decided(decisions()["accepted"])
    settle("fault")
    assert runs(pin(factory, "green")) == []
    assert_runs(pin(factory, "buzzer"), EXPECTED["fault"]["buzzer"])
    assert_runs(pin(factory, "red"), EXPECTED["fault"]["red"])
    assert pin(factory, "amber").state  # back to the fault look


def test_a_fault_decision_holds_fault_until_the_ledger_commits_again(make, factory):
    fb = make(states=QUICK_LOOKS)
    d = decisions()
    fb.decided(d["fault"])
    assert fb.is_on("fault") and not fb.is_on("ready")
    assert fb.causes("fault") == ["ledger"]
    settle("fault")
    # The whole fault pattern on red, then the fault look (blinking) beneath it.
    assert_runs(pin(factory, "red"), EXPECTED["fault"]["red"][:5], prefix=True)
    assert len(runs(pin(factory, "red"))) > 6
    for device in PINS:
        pin(factory, device).clear_states()
    fb.decided(d["accepted"])  # committed: the ledger writes again, so this is a real accept
    settle("accepted")
    assert not fb.is_on("fault")
    assert_runs(pin(factory, "green"), [(T, 0.3), (F, 0.2), (T, 0.05)], prefix=True)  # then the ready blip
    assert_runs(pin(factory, "buzzer"), [(T, 0.08), (F, None)])


def test_states_show_beneath_by_priority(make, factory):
    fb = make(states=QUICK_LOOKS)
    amber, red, green = (pin(factory, n) for n in ("amber", "red", "green"))
    time.sleep(0.5)
    assert len(runs(green)) >= 3 and {on for on, _ in runs(green)} == {T, F}  # ready: the blip
    assert runs(amber) == runs(red) == []

    fb.set_state("broker_offline", True)
    time.sleep(0.3)
    assert_runs(amber, [(T, None)])  # steady

    amber.clear_states()
    fb.set_state("backlog", True)  # outranks broker_offline
    time.sleep(0.5)
    blinks = [d for _, d in runs(amber)[:-1]]
    # The median, not every run: one run stretched by a loaded machine says nothing of the look.
    assert len(blinks) >= 3 and abs(median(blinks) - 0.1) <= 0.025, runs(amber)

    amber.clear_states()
    fb.set_state("scanner_missing", True, cause="counter-1")
    fb.set_state("scanner_missing", True, cause="counter-2")
    fb.set_state("scanner_missing", False, cause="counter-1")  # counter-2 still missing
    time.sleep(0.4)
    fast = [d for _, d in runs(amber)[1:-1]]
    assert len(fast) >= 3 and abs(median(fast) - 0.05) <= 0.02, runs(amber)  # twice backlog's rate

    green.clear_states()
    fb.set_state("fault", True, cause="config")
    time.sleep(0.5)
    assert not fb.is_on("ready")
    assert [on for on, _ in runs(red)][:4] == [T, F, T, F]  # fault: red blinking
    assert runs(green) in ([], [(F, None)])  # ready is off in fault

    fb.set_state("fault", False, cause="config")
    fb.set_state("scanner_missing", False, cause="counter-2")
    fb.set_state("backlog", False)
    red.clear_states()
    amber.clear_states()
    time.sleep(0.3)
    assert not red.state and runs(red) in ([], [(F, None)])
    assert amber.state  # back to broker_offline: steady on


def test_a_state_change_waits_for_the_pattern_on_that_led(make, factory):
    fb = make(states=QUICK_LOOKS)
    fb.play("product_barcode")
    time.sleep(0.1)
    fb.set_state("broker_offline", True)
    settle("product_barcode")
    assert_runs(pin(factory, "amber"), [(T, 0.25), (F, 0.15), (T, 0.25), (F, 0.15), (T, None)])


def test_active_low_leds_and_no_buzzer(make, factory):
    fb = make(active_high=False, buzzer="none")
    assert fb.buzzer is None
    green = pin(factory, "green")
    assert green.state  # off is high when active low
    fb.play("accepted")
    settle("accepted")
    assert_runs(green, [(F, 0.3), (T, None)])
    assert runs(pin(factory, "buzzer")) == []


def test_the_call_returns_before_the_pattern_ends(make):
    fb = make()
    started = time.monotonic()
    fb.play("duplicate")  # 1.2 s of pattern
    assert time.monotonic() - started < 0.5  # a functional bound, not a speed figure


def test_default_patterns_are_told_apart_by_ear_on_an_active_buzzer():
    """By rhythm alone (an active buzzer has one pitch): each pattern's beeps differ."""

    def rhythm(name):
        return tuple((round(s.on_s, 2), round(s.off_s, 2)) for s in DEFAULT_PATTERNS[name].buzzer for _ in range(s.n))

    audible = [n for n in DEFAULT_PATTERNS if n != "double_read"]
    rhythms = {n: rhythm(n) for n in audible}
    assert len(set(rhythms.values())) == len(audible), rhythms
    assert DEFAULT_PATTERNS["double_read"].silent
    # Only what says "recorded, all good" lights green (and plays the fault pattern instead in fault).
    assert [n for n in audible if DEFAULT_PATTERNS[n].green] == list(ALL_CLEAR)


def test_default_looks_show_each_state_on_its_own_led():
    assert DEFAULT_LOOKS["broker_offline"] == {"amber": Step(1.0, 0.0, None)}  # amber, steady
    assert set(DEFAULT_LOOKS["fault"]) == {"red"} and set(DEFAULT_LOOKS["ready"]) == {"green"}
    assert set(DEFAULT_LOOKS["locked"]) == {"red"} and DEFAULT_LOOKS["locked"] != DEFAULT_LOOKS["fault"]
    amber = [DEFAULT_LOOKS[s]["amber"] for s in ("scanner_missing", "backlog", "broker_offline")]
    assert len(set(amber)) == 3  # three amber states, three rhythms
    assert all(step.n is None for look in DEFAULT_LOOKS.values() for step in look.values())


def test_a_late_state_or_verdict_after_close_is_ignored(make, factory):
    fb = make(states=QUICK_LOOKS)
    fb.close()
    fb.set_state("broker_offline", True)  # the uplink may still speak during shutdown
    fb.play("accepted")
    assert fb.is_on("broker_offline")
    assert not pin(factory, "amber").state and not pin(factory, "green").state


@pytest.mark.slow
def test_self_test_plays_every_pattern_on_every_pin(make, factory):
    fb = make()
    started = time.monotonic()
    fb.self_test(gap_s=0.3)  # each pattern whole: the next starts only when it has ended (slack for a loaded machine)
    assert time.monotonic() - started >= sum(DEFAULT_PATTERNS[name].duration for name in SELF_TEST)
    assert all(any(on for on, _ in runs(pin(factory, name))) for name in ("green", "red", "amber"))
    beeps = [on for on, _ in runs(pin(factory, "buzzer")) if on]
    # accepted, duplicate, rejected, product_barcode, fault, then flagged, wrong_drug, over_count,
    # document_opened, document_complete, document_incomplete, delivery_discrepancy, locked, void,
    # exception, acknowledged, conflict
    assert len(beeps) == 1 + 1 + 3 + 2 + 3 + 2 + 2 + 5 + 2 + 3 + 3 + 6 + 6 + 1 + 2 + 2 + 4
