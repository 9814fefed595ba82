"""The shared feedback rules, seen through the console backend, and the feedback config."""

from __future__ import annotations

import io

import pytest

from agent import codes
from agent.config import ConfigError, FeedbackConfig, parse_toml
from agent.domain import Decision
from agent.ledger import Ledger
from agent.read import Read
from agent.sinks.feedback import ConsoleFeedback, NoFeedback
from agent.sinks.patterns import DEFAULT_PATTERNS, Pattern, Step


def decide(ledger: Ledger, raw: bytes) -> Decision:
    return ledger.decide_and_record(Read(raw, "stdin", "stdin"), "dispense", codes.parse(raw))


@pytest.fixture
def console():
    out = io.StringIO()
    return ConsoleFeedback(out, colour=False, bell=False), out


def test_console_shows_each_verdict_and_nothing_for_a_double_read(console):
    fb, out = console
    ledger = Ledger.open(":memory:", device_id="k", site_id="s")
    for raw in (b"81234567890123456789", b"81234567890123456789", b"6901234567892", b"123"):
        fb.decided(decide(ledger, raw))
    assert out.getvalue().splitlines() == [
        "[ OK ] accepted 81234567890123456789",
        "[EAN?] product_barcode 6901234567892",
        "[ NO ] rejected wrong_length: 123",
    ]


def test_console_shows_state_changes_once_each(console):
    fb, out = console
    fb.set_state("broker_offline", True)
    fb.set_state("broker_offline", True)  # no change, no line
    fb.set_state("scanner_missing", True, cause="counter-1")
    fb.set_state("scanner_missing", True, cause="counter-2")
    fb.set_state("scanner_missing", False, cause="counter-1")  # counter-2 still missing: no line
    fb.set_state("scanner_missing", False, cause="counter-2")
    fb.set_state("broker_offline", False)
    assert out.getvalue().splitlines() == [
        "[STATE] broker_offline, ready",
        "[STATE] scanner_missing, broker_offline, ready",
        "[STATE] broker_offline, ready",
        "[STATE] ready",
    ]


def test_console_never_says_ok_while_in_fault(console):
    fb, out = console
    ledger = Ledger.open(":memory:", device_id="k", site_id="s")
    fb.set_state("fault", True, cause="disk_full")
    fb.decided(decide(ledger, b"81234567890123456789"))
    lines = out.getvalue().splitlines()
    assert lines[0] == "[STATE] fault"
    assert lines[1].startswith("[FAULT] fault 81234567890123456789 recorded, but the station is in fault (disk_full)")
    assert "[ OK ]" not in out.getvalue()


def test_colour_and_bells_on_a_terminal():
    out = io.StringIO()
    ConsoleFeedback(out, colour=True, bell=True).show("rejected", "123")
    assert out.getvalue() == "\x1b[31m[ NO ] rejected 123\x1b[0m\a\a\a\n"


def test_unknown_state_is_refused():
    with pytest.raises(ValueError, match="unknown device state 'ready'"):
        NoFeedback().set_state("ready", True)


def test_feedback_config_defaults_and_gpio_keys():
    assert FeedbackConfig().backend == "console"
    assert FeedbackConfig().patterns == DEFAULT_PATTERNS
    cfg = parse_toml(
        """
[feedback]
backend = "gpio"
green_pin = 5
buzzer = "tonal"
active_high = false
[feedback.patterns.accepted]
green = { on = 0.2, off = 0.1 }
buzzer = [{ on = 0.05, tone = 3000 }, { on = 0.05, tone = 3500 }]
[feedback.patterns.double_read]
buzzer = [{ on = 0.02 }]
[feedback.states.broker_offline]
red = { on = 0.5, off = 0.5 }
"""
    ).feedback
    assert (cfg.backend, cfg.green_pin, cfg.red_pin, cfg.buzzer, cfg.active_high) == ("gpio", 5, 24, "tonal", False)
    assert cfg.patterns["accepted"] == Pattern(
        green=Step(0.2, 0.1), buzzer=(Step(0.05, 0.0, 1, 3000.0), Step(0.05, 0.0, 1, 3500.0))
    )
    assert cfg.patterns["double_read"].buzzer == (Step(0.02, 0.0, 1, 2000.0),)
    assert cfg.patterns["duplicate"] == DEFAULT_PATTERNS["duplicate"]  # untouched entries keep their default
    assert cfg.states["broker_offline"] == {"red": Step(0.5, 0.5, None)}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('backend = "leds"', "[feedback] backend: 'leds' is not allowed; allowed: console, gpio, none"),
        ("red_pin = 23", "[feedback] red_pin: GPIO 23 is also green_pin"),
        ("green_pin = 40", "[feedback] green_pin: 40 is not allowed; allowed: a whole number from 0 to 27"),
        ('buzzer = "piezo"', "[feedback] buzzer: 'piezo' is not allowed; allowed: active, tonal, none"),
        ('buzzer = "tonal"\nbuzzer_active_high = false', "must be active high"),
        ("[feedback.patterns.acepted]", "[feedback.patterns] acepted: not a pattern"),
        ("[feedback.patterns.accepted]\ngreen = { off = 0.1 }", "[feedback.patterns.accepted.green] on: missing"),
        ("[feedback.patterns.accepted]\nbuzzer = [{ on = 0.1, ton = 3 }]", "buzzer #1] ton: unknown key"),
        ("[feedback.patterns.accepted]\nblue = { on = 0.1 }", "[feedback.patterns.accepted] blue: unknown key"),
        ("[feedback.states.ready]\ngreen = { on = 1, n = 2 }", "[feedback.states.ready.green] n: unknown key"),
        ("[feedback.states.offline]", "[feedback.states] offline: not a device state"),
    ],
)
def test_bad_feedback_config_names_the_key(text, message):
    with pytest.raises(ConfigError) as caught:
        parse_toml("[feedback]\n" + text if not text.startswith("[") else text)
    assert message in str(caught.value)
