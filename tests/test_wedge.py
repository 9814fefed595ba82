"""The keyboard wedge's pure parts, and the sink around a recording keyboard.

This machine has no /dev/uinput: the keys the wedge would type are checked by
decoding them with the agent's own HID decoder (what a POS on that layout
would read). The real uinput device, typed into and read back through the
kernel, is tested in the USB VM bench (tests/usb/test_wedge_vm.py).
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import replace

import pytest
from evdev import InputEvent
from evdev import ecodes as e

from agent import codes
from agent.config import ConfigError, WedgeConfig
from agent.ledger import Ledger
from agent.ledger.documents import Document
from agent.read import Read
from agent.sinks.wedge import Untypable, Wedge, key_events, keys_for, open_uinput, show, text_for
from agent.sources.hid import KeyDecoder
from agent.sources.hid.keymaps import LAYOUTS, strokes

CODE = "81234567890123456789"
OTHER = "81234567890123450000"
EAN13 = "6901234567892"
GS1 = "(01)09506000134352(21)A1b2-C3/4.5"


def decode(events, layout: str) -> list[bytes]:
    """What a reader on ``layout`` gets from ``(type, code, value)`` events: one scan per Enter."""
    decoder = KeyDecoder(layout, key_timeout=1.0)
    out = []
    for i, (etype, code, value) in enumerate(events):
        t = 1000 + i * 0.0005
        out += [typed.raw for typed in decoder.feed(InputEvent(int(t), round(t % 1 * 1e6), etype, code, value))]
    rest = decoder.flush()
    return out + ([rest.raw] if rest else [])


class Keys:
    """A recording stand-in for the uinput device: every event written, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[int, int, int]] = []
        self.closed = False

    def write(self, etype: int, code: int, value: int) -> None:
        self.events.append((etype, code, value))

    def syn(self) -> None:
        self.events.append((e.EV_SYN, e.SYN_REPORT, 0))

    def close(self) -> None:
        self.closed = True


def decide(ledger: Ledger, raw: str, movement: str = "dispense"):
    read = Read(raw.encode(), "stdin", "-")
    return ledger.decide_and_record(read, movement, codes.parse(read.raw, accept_gs1=True))


# -- the char -> key table ----------------------------------------------------


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_character_a_layout_has_round_trips_through_the_decoder(layout):
    table = strokes(layout)
    assert len(table) > 60  # letters both cases, digits, punctuation
    for char in table:
        assert decode(key_events(keys_for(char, layout, "enter")), layout) == [char.encode() + b"\n"], char


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("text", [CODE, GS1, "POS:" + CODE])
def test_codes_round_trip_on_every_layout(layout, text):
    assert decode(key_events(keys_for(text, layout, "enter")), layout) == [text.encode() + b"\n"]


def test_the_host_layout_matters_a_us_reader_of_fr_keys_gets_garbage():
    # Typed for AZERTY (Shift + the number row), read as QWERTY: Shift + the number row is symbols.
    assert decode(key_events(keys_for("123", "fr", "enter")), "us") == [b"!@#\n"]


def test_azerty_digits_are_shifted_and_altgr_is_right_alt():
    assert {keys_for(d, "fr")[0][1] for d in "0123456789"} == {e.KEY_LEFTSHIFT}
    assert {keys_for(d, "us")[0][1] for d in "0123456789"} == {None}
    assert keys_for("@", "de") == [(e.KEY_Q, e.KEY_RIGHTALT)]
    assert keys_for("z", "de") == [(e.KEY_Y, None)]


def test_the_events_of_one_key_are_a_down_report_and_an_up_report():
    assert show(key_events(keys_for("A", "us", "tab"))) == "LEFTSHIFT+ A+ | A- LEFTSHIFT- | TAB+ | TAB- |"
    assert show(key_events(keys_for("1", "us", "none"))) == "1+ | 1- |"


@pytest.mark.parametrize(("suffix", "end"), [("enter", b"\n"), ("tab", b"\t"), ("none", b"")])
def test_prefix_code_and_suffix(suffix, end):
    decoder = KeyDecoder("de", key_timeout=1.0, tab_terminates=True)
    events = key_events(keys_for("#" + CODE, "de", suffix))
    got = [t.raw for i, ev in enumerate(events) for t in decoder.feed(InputEvent(1000, i, *ev))]
    rest = decoder.flush()
    assert got + ([rest.raw] if rest else []) == [b"#" + CODE.encode() + end]


def test_a_character_the_layout_cannot_type_is_refused_not_left_out():
    with pytest.raises(Untypable, match="'é'"):
        keys_for("caf" + "é", "us")
    assert keys_for("é", "fr") == [(e.KEY_2, None)]
    with pytest.raises(Untypable):
        keys_for("\x1d", "us")  # a GS1 separator is never typed


# -- which decisions are typed ------------------------------------------------


def test_only_accepted_trace_codes_are_typed_by_default():
    ledger = Ledger.open(":memory:", device_id="k", site_id="s", double_read_window_s=0)
    accepted = decide(ledger, CODE)
    duplicate = decide(ledger, CODE)
    ean = decide(ledger, EAN13)
    garbage = decide(ledger, "hello\x1bworld")
    assert [d.verdict for d in (accepted, duplicate, ean, garbage)] == ["accepted", "duplicate", "rejected", "rejected"]
    verdicts = ("accepted",)
    assert [text_for(d, verdicts) for d in (accepted, duplicate, ean, garbage)] == [CODE, None, None, None]
    gs1 = decide(ledger, "]d2" + "0109506000134352" + "21A1b2-C3/4.5")
    assert (gs1.verdict, text_for(gs1, verdicts)) == ("accepted", GS1)


def test_rejected_verdicts_type_only_codes_that_passed_the_code_checks():
    ledger = Ledger.open(":memory:", device_id="k", site_id="s", lifecycle="strict")
    never_received = decide(ledger, CODE)
    ean = decide(ledger, EAN13)
    garbage = decide(ledger, "DROP TABLE;\r")
    assert (never_received.verdict, never_received.reason) == ("rejected", "never_received")
    everything = ("accepted", "duplicate", "rejected")
    assert text_for(never_received, everything) == CODE
    assert text_for(ean, everything) is None  # a product barcode is not a trace code
    assert text_for(garbage, everything) is None


def test_entry_rows_double_reads_and_faults_are_never_typed():
    ledger = Ledger.open(":memory:", device_id="k", site_id="s", double_read_window_s=5)
    opened = ledger.open_document(Document("S-1", "sale"), read=Read(b"", "stdin", "-"))
    assert [d.verdict for d in opened] == ["opened"]
    first = decide(ledger, CODE)
    again = decide(ledger, CODE)
    assert (first.verdict, again.verdict) == ("accepted", "double_read")
    fault = replace(first, verdict="fault")
    everything = ("accepted", "duplicate", "rejected", "opened", "double_read", "fault")
    assert text_for(first, everything) == CODE
    assert [text_for(d, everything) for d in (*opened, again, fault)] == [None, None, None]


# -- the sink -----------------------------------------------------------------


def test_the_sink_types_accepted_codes_in_order_and_nothing_else():
    ledger = Ledger.open(":memory:", device_id="k", site_id="s", double_read_window_s=0)
    keys = Keys()
    wedge = Wedge(keys, layout="fr", prefix="", suffix="enter", key_delay=0)
    for raw in (CODE, EAN13, CODE, "garbage", OTHER, CODE):
        wedge.decided(decide(ledger, raw))
    wedge.close()
    assert decode(keys.events, "fr") == [CODE.encode() + b"\n", OTHER.encode() + b"\n"]
    assert keys.closed and wedge.typed == 2


class HeldTypist:
    """A ``sleep`` seam that holds the typing thread after its first key until ``go`` is set."""

    def __init__(self) -> None:
        self.held = threading.Event()
        self.go = threading.Event()

    def __call__(self, _seconds: float) -> None:
        self.held.set()
        self.go.wait(30)


def test_typing_runs_on_its_own_thread_so_decided_never_waits_for_it():
    ledger = Ledger.open(":memory:", device_id="k", site_id="s")
    keys = Keys()
    typist = HeldTypist()
    wedge = Wedge(keys, key_delay=0.001, sleep=typist)
    try:
        wedge.decided(decide(ledger, CODE))
        assert typist.held.wait(5)
        wedge.decided(decide(ledger, OTHER))  # taken while the typist is held
        assert show(keys.events) == "8+ | 8- |"
    finally:
        typist.go.set()
        wedge.close()
    assert decode(keys.events, "us") == [CODE.encode() + b"\n", OTHER.encode() + b"\n"]


def test_close_gives_up_on_a_stuck_typist_and_says_how_much_was_not_typed(caplog):
    ledger = Ledger.open(":memory:", device_id="k", site_id="s")
    keys = Keys()
    typist = HeldTypist()
    wedge = Wedge(keys, key_delay=0.001, sleep=typist)
    for raw in (CODE, OTHER):
        wedge.decided(decide(ledger, raw))
    assert typist.held.wait(5)
    with caplog.at_level(logging.ERROR, logger="agent.sinks.wedge"):
        wedge.close(timeout=0.2)
    typist.go.set()
    assert keys.closed
    assert "codes not typed" in caplog.text
    assert show(keys.events) == "8+ | 8- |"  # stopped between keys, never with a key held down


def test_a_code_the_layout_cannot_type_is_logged_and_skipped(caplog):
    keys = Keys()
    wedge = Wedge(keys, key_delay=0)
    ledger = Ledger.open(":memory:", device_id="k", site_id="s")
    accepted = decide(ledger, CODE)
    odd = replace(accepted, parsed=replace(accepted.parsed, code="8123456789012345678é"))
    with caplog.at_level(logging.ERROR, logger="agent.sinks.wedge"):
        wedge.decided(odd)
        wedge.decided(accepted)
        wedge.close()
    assert decode(keys.events, "us") == [CODE.encode() + b"\n"]
    assert "no key for 'é'" in caplog.text


# -- from config, and the device ----------------------------------------------


def test_from_config_refuses_a_prefix_the_layout_cannot_type():
    opened = []
    with pytest.raises(ConfigError, match=r"\[wedge\] prefix 'µ'"):
        Wedge.from_config(WedgeConfig(enabled=True, prefix="µ", layout="us"), opener=lambda *a: opened.append(a))
    assert opened == []  # refused before any device was made


def test_from_config_passes_name_layout_and_delay():
    made = []

    def opener(name, layout):
        made.append((name, layout))
        return Keys()

    cfg = WedgeConfig(enabled=True, layout="de", device_name="counter 2 wedge", key_delay_ms=2.5, suffix="tab")
    wedge = Wedge.from_config(cfg, opener=opener)
    wedge.close()
    assert made == [("counter 2 wedge", "de")]
    assert (wedge.key_delay, wedge.suffix, wedge.layout) == (0.0025, "tab", "de")


def test_a_missing_uinput_node_refuses_to_start_naming_the_module(tmp_path):
    with pytest.raises(ConfigError, match="is not there: load the uinput module: sudo modprobe uinput"):
        open_uinput("scan-agent wedge", "us", path=str(tmp_path / "uinput"))


def test_a_node_that_is_not_uinput_refuses_to_start(tmp_path):
    plain = tmp_path / "uinput"
    plain.write_text("")
    with pytest.raises(ConfigError, match=r"\[wedge\] enabled = true, but .*uinput"):
        open_uinput("scan-agent wedge", "us", path=str(plain))


def test_a_character_device_that_is_not_uinput_is_refused_with_the_kernel_answer():
    # /dev/null passes python-evdev's checks (a writable character device); the kernel refuses the ioctls.
    with pytest.raises(ConfigError, match="cannot make a keyboard"):
        open_uinput("scan-agent wedge", "us", path="/dev/null")


@pytest.mark.skipif(
    not os.path.exists("/dev/uinput"), reason="no /dev/uinput here: scripts/usb-vm-tests -k wedge tests the device"
)
def test_the_real_device_is_on_the_virtual_bus_with_the_wedge_phys():
    import evdev

    from agent.sources.hid.device import WEDGE_PHYS

    keyboard = open_uinput("scan-agent wedge test", "us")
    try:
        device = evdev.InputDevice(keyboard.node)
        assert (device.name, device.phys, device.info.bustype) == ("scan-agent wedge test", WEDGE_PHYS, e.BUS_VIRTUAL)
        device.close()
    finally:
        keyboard.close()


@pytest.mark.skipif(os.path.exists("/dev/uinput"), reason="this machine has /dev/uinput: the agent would start")
def test_the_agent_refuses_to_start_without_uinput_and_says_how_to_fix_it(tmp_path):
    from tests.support.agent import run_agent

    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[ledger]\npath = "{tmp_path / "ledger.db"}"\n\n[wedge]\nenabled = true\nlayout = "de"\n')
    done = run_agent("run", "--config", str(cfg), input=b"81234567890123456789\n")
    err = done.stderr.decode()
    assert done.returncode == 2, err
    assert "bad config: [wedge] enabled = true, but /dev/uinput is not there" in err
    assert "sudo modprobe uinput" in err and "scan-agent doctor" in err
    assert done.stdout == b"", "nothing was decided: no scan is accepted that the POS would never get"
