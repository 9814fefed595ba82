"""Documents and the station lock as the operator sees and hears them: which pattern each
decision gets, each new pattern on gpiozero's MockFactory pins, the ``locked`` state, the
console and printer lines, and the scanner's host-ACK."""

from __future__ import annotations

import io
import json
import os
import threading
import time
from dataclasses import replace

import pytest
from gpiozero import Device

from agent import codes
from agent.config import FeedbackConfig, parse_toml
from agent.domain import Decision
from agent.ledger import Ledger
from agent.ledger.documents import ExceptionItem, read_document
from agent.pipeline import Pipeline
from agent.read import Read
from agent.runner import Runner
from agent.sinks.feedback import ConsoleFeedback, NoFeedback, pattern_for
from agent.sinks.gpio import GpioFeedback
from agent.sinks.host_ack import HostAck
from agent.sinks.patterns import DEFAULT_PATTERNS, Step
from agent.sinks.printer import DecisionPrinter
from agent.sinks.profiles import HostAckCommands, ScannerProfile
from agent.station import StationCodes
from tests.support.gpio import assert_runs, mock_factory, runs
from tests.support.net import wait_until
from tests.test_feedback_gpio import EXPECTED as EXPECTED_BEFORE
from tests.test_feedback_gpio import PINS

T, F = True, False
AMOX, IBU, PARA = "8123456", "8234567", "8345678"
COMMAND = Read(b"", "command", "test")


def code(product: str, n: int) -> str:
    return f"{product}{n:013d}"


def lines(*items: tuple[str, int]) -> list[dict]:
    return [{"product_id": p, "name": f"drug {p}", "expected": n} for p, n in items]


class Counter:
    """A real ledger driven as the pipeline drives it: scans far apart (no double reads),
    the station's verbs as commands. Each returns the decision the sinks hear last."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("lifecycle", "warn")
        kwargs.setdefault("lock_on", ("dispensed_before", "duplicate"))
        self.ledger = Ledger.open(":memory:", device_id="k", site_id="s", **kwargs)
        self.t = 1000.0

    def scan(self, text: str, movement: str = "dispense") -> Decision:
        self.t += 10
        read = Read(text.encode(), "stdin", "stdin", t_first=self.t, t_last=self.t)
        return self.ledger.decide_and_record(read, movement, codes.parse(read.raw))

    def open(self, doc_id: str, kind: str = "prescription", items: tuple = ()) -> Decision:
        doc = read_document({"id": doc_id, "kind": kind, "lines": lines(*items)})
        return self.ledger.open_document(doc, read=COMMAND)[-1]

    def close(self, doc_id: str) -> Decision:
        return self.ledger.close_document(doc_id, closed_by="command", read=COMMAND)[-1]

    def void(self, event_id: str) -> Decision:
        return self.ledger.void(event_id, reason="wrong box", read=COMMAND)[-1]

    def exception(self, doc_id: str, line: str) -> Decision:
        item = ExceptionItem(line=line, kind="uncoded", reason="no code on the box", approver="sup-1")
        return self.ledger.add_exception(doc_id, item, read=COMMAND)[-1]

    def acknowledge(self) -> Decision:
        return self.ledger.acknowledge("sup-1", via="ack_code", read=COMMAND)[-1]


def scenario() -> dict[str, Decision]:
    """A pharmacist's day in decisions, each named for what it shows."""
    c = Counter()
    for n in range(3):
        c.scan(code(AMOX, n), "receive")
        c.scan(code(IBU, n), "receive")
    d = {"opened": c.open("RX00000001", items=((AMOX, 2), (IBU, 1)))}
    d["accepted"] = c.scan(code(AMOX, 0))
    d["not_on_document"] = c.scan(code("8999999", 0))
    c.scan(code(IBU, 0))
    d["line_complete"] = c.scan(code(IBU, 1))
    d["completing"] = c.scan(code(AMOX, 1))
    d["closed_complete"] = c.close("RX00000001")
    d["reversal"] = c.void(d["accepted"].event_id)
    c.open("SL00000001", kind="sale")
    d["flagged"] = c.scan(code(PARA, 0))  # never received here: recorded, with a warning
    d["void"] = c.void(d["flagged"].event_id)
    c.close("SL00000001")
    c.open("RX00000002", items=((PARA, 1),))
    d["exception"] = c.exception("RX00000002", PARA)
    d["closed_with_exceptions"] = c.close("RX00000002")
    c.open("RX00000003", items=((AMOX, 2),))
    d["closed_incomplete"] = c.close("RX00000003")
    c.open("SC00000001", kind="stock_check")
    c.scan(code(IBU, 2), "check")
    d["in_document"] = c.scan(code(IBU, 2), "check")
    c.close("SC00000001")
    d["dispensed_before"] = c.scan(code(IBU, 0), "receive")  # sold, and back (回流); no document: no lock
    c.open("WO00000001", kind="ward_order")
    d["locking"] = c.scan(code(AMOX, 1), "use")  # used already on RX00000001
    d["station_locked"] = c.scan(code(AMOX, 2), "use")
    d["acknowledged"] = c.acknowledge()
    d["strict_never_received"] = Counter(lifecycle="strict").scan(code(PARA, 1))
    refused = codes.Rejection("document_refused", "RX00000001", "id: used by a closed document", "")
    d["document_refused"] = c.ledger.decide_and_record(Read(b"RX00000001", "stdin", "stdin"), "dispense", refused)
    d["document_full"] = replace(d["line_complete"], reason="document_full")  # 3,500 codes, told by the table
    return d


#: name in :func:`scenario` -> its verdict, reason, and the pattern it gets.
TABLE = {
    "opened": ("opened", None, "document_opened"),
    "accepted": ("accepted", None, "accepted"),
    "not_on_document": ("rejected", "not_on_document", "wrong_drug"),
    "line_complete": ("rejected", "line_complete", "over_count"),
    "in_document": ("rejected", "in_document", "over_count"),
    "document_full": ("rejected", "document_full", "over_count"),
    "completing": ("accepted", None, "document_complete"),
    "closed_complete": ("closed", "complete", "document_complete"),
    "closed_with_exceptions": ("closed", "complete_with_exceptions", "document_complete"),
    "closed_incomplete": ("closed", "incomplete", "document_incomplete"),
    "flagged": ("accepted", "never_received", "flagged"),
    "void": ("void", None, "void"),
    "reversal": ("reversal", None, "void"),
    "exception": ("exception", "uncoded", "exception"),
    "dispensed_before": ("duplicate", "dispensed_before", "duplicate"),
    "locking": ("duplicate", "already_dispensed", "locked"),
    "station_locked": ("rejected", "station_locked", "locked"),
    "acknowledged": ("acknowledged", None, "acknowledged"),
    "strict_never_received": ("rejected", "never_received", "rejected"),
    "document_refused": ("rejected", "document_refused", "rejected"),
}

NEW = (
    "flagged",
    "wrong_drug",
    "over_count",
    "document_opened",
    "document_complete",
    "document_incomplete",
    "locked",
    "void",
    "exception",
    "acknowledged",
)

# What the new patterns must do on the pins, written out independently of agent.sinks.patterns.
EXPECTED = {
    "flagged": {
        "green": [(T, 0.3), (F, None)],
        "amber": [(T, 1.0), (F, None)],
        "buzzer": [(T, 0.08), (F, 0.15), (T, 0.3), (F, None)],
    },
    "wrong_drug": {
        "red": [(T, 0.4), (F, 0.1), (T, 0.4), (F, None)],
        "buzzer": [(T, 0.3), (F, 0.1), (T, 0.6), (F, None)],
    },
    "over_count": {
        "red": [(T, 0.06), (F, 0.06)] * 4 + [(T, 0.06), (F, None)],
        "buzzer": [(T, 0.06), (F, 0.06)] * 4 + [(T, 0.06), (F, None)],
    },
    "document_opened": {
        "green": [(T, 0.1), (F, 0.1), (T, 0.1), (F, None)],
        "buzzer": [(T, 0.06), (F, 0.06), (T, 0.06), (F, None)],
    },
    "document_complete": {
        "green": [(T, 1.2), (F, None)],
        "buzzer": [(T, 0.1), (F, 0.03), (T, 0.1), (F, 0.03), (T, 0.35), (F, None)],
    },
    "document_incomplete": {
        "amber": [(T, 0.5), (F, 0.2), (T, 0.5), (F, None)],
        "buzzer": [(T, 0.35), (F, 0.05), (T, 0.1), (F, 0.03), (T, 0.1), (F, None)],
    },
    "locked": {
        "red": [(T, 0.2), (F, 0.05)] * 5 + [(T, 0.2), (F, None)],
        "buzzer": [(T, 0.2), (F, 0.05)] * 5 + [(T, 0.2), (F, None)],
    },
    "void": {"amber": [(T, 0.3), (F, None)], "buzzer": [(T, 0.3), (F, None)]},
    "exception": {
        "amber": [(T, 0.1), (F, 0.1), (T, 0.1), (F, 0.1), (T, 0.1), (F, None)],
        "buzzer": [(T, 0.3), (F, 0.08), (T, 0.08), (F, None)],
    },
    "acknowledged": {"green": [(T, 0.6), (F, None)], "buzzer": [(T, 0.08), (F, 0.1), (T, 0.6), (F, None)]},
}
PITCHES = {
    "flagged": [2700.0, 1200.0],  # the accept beep, then a low hint
    "wrong_drug": [1500.0, 500.0],
    "document_complete": [1600.0, 2000.0, 2700.0],  # up
    "document_incomplete": [2000.0, 1600.0, 1200.0],  # down
    "locked": [1800.0, 900.0] * 3,
}


@pytest.fixture(scope="module")
def decisions() -> dict[str, Decision]:
    return scenario()


@pytest.fixture
def factory():
    return mock_factory()


@pytest.fixture
def make(factory):
    """A GpioFeedback on the mock pins with ``states`` as its looks (none unless asked)."""
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


def fits(actual: list, expected: list, tolerance: float = 0.15) -> bool:
    """The runs of one pin are ``expected``, as :func:`tests.support.gpio.assert_runs` checks them."""
    if [on for on, _ in actual] != [on for on, _ in expected]:
        return False
    return all(
        want is None or (got is not None and abs(got - want) <= tolerance)
        for (_, got), (_, want) in zip(actual, expected, strict=True)
    )


# -- which pattern ---------------------------------------------------------------------


@pytest.mark.parametrize("name", list(TABLE))
def test_each_decision_gets_its_pattern(decisions, name):
    verdict, reason, pattern = TABLE[name]
    d = decisions[name]
    assert (d.verdict, d.reason) == (verdict, reason), d.detail
    assert pattern_for(d) == pattern


def test_the_decision_that_locks_says_so_and_the_rest_do_not(decisions):
    assert decisions["locking"].locks
    assert [n for n, d in decisions.items() if d.locks] == ["locking"]
    assert decisions["completing"].progress["complete"] and not decisions["accepted"].progress["complete"]


def test_a_flagged_scan_that_completes_its_document_stays_flagged():
    """The warning is never covered by the chime; closing complete still chimes."""
    c = Counter()
    c.open("RX00000009", items=((PARA, 1),))
    last = c.scan(code(PARA, 0))  # never received: flagged, and the line is complete
    assert (last.verdict, last.reason, last.progress["complete"]) == ("accepted", "never_received", True)
    assert pattern_for(last) == "flagged"
    assert pattern_for(c.close("RX00000009")) == "document_complete"


# -- on the pins -----------------------------------------------------------------------


@pytest.mark.parametrize("name", NEW)
def test_each_new_pattern_drives_its_pins_and_no_other_patterns_runs(make, factory, name):
    fb = make()
    fb.play(name)
    time.sleep(DEFAULT_PATTERNS[name].duration + 0.3)
    actual = {device: runs(factory.pin(PINS[device])) for device in PINS}
    for device in PINS:
        assert_runs(factory.pin(PINS[device]), EXPECTED[name].get(device, []))
    others = {**EXPECTED_BEFORE, **EXPECTED}
    others.pop(name)
    for other, expected in others.items():
        same = all(fits(actual[device], expected.get(device, [])) for device in PINS)
        assert not same, f"{name} cannot be told from {other} on the pins"


def test_the_expected_runs_differ_pairwise_by_more_than_the_tolerance():
    """What the previous test relies on: no two patterns are one run list on every pin."""
    everything = {**EXPECTED_BEFORE, **EXPECTED}
    names = list(everything)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            alike = all(fits([(on, s) for on, s in everything[a].get(d, [])], everything[b].get(d, [])) for d in PINS)
            assert not alike, (a, b)


def test_new_patterns_are_told_apart_by_ear_alone_on_an_active_buzzer():
    """The buzzer track by itself (no LEDs to look at): every rhythm is its own."""
    everything = {**EXPECTED_BEFORE, **EXPECTED}
    buzzer = {name: everything[name]["buzzer"] for name in everything}
    for name in NEW:
        for other, track in buzzer.items():
            if other != name:
                assert not fits(buzzer[name], track, tolerance=0.04), (name, other)


def test_green_means_recorded_and_never_lights_with_red():
    green = {n for n in DEFAULT_PATTERNS if DEFAULT_PATTERNS[n].green}
    assert green == {"accepted", "flagged", "document_opened", "document_complete", "acknowledged"}
    assert not any(DEFAULT_PATTERNS[n].red for n in green)
    refused = ("duplicate", "rejected", "wrong_drug", "over_count", "locked")
    assert all(DEFAULT_PATTERNS[n].red and not DEFAULT_PATTERNS[n].green for n in refused)


@pytest.mark.parametrize("name", list(PITCHES))
def test_tonal_buzzer_plays_the_new_patterns_at_their_pitches(make, factory, name):
    fb = make(buzzer="tonal")
    buzzer = factory.pin(PINS["buzzer"])
    already = len(buzzer.frequencies)
    fb.play(name)
    time.sleep(DEFAULT_PATTERNS[name].duration + 0.3)
    pitches = [f for _, f in buzzer.frequencies[already:] if f is not None]
    assert pitches == pytest.approx(PITCHES[name])
    assert buzzer.frequencies[-1][1] is None


def test_fault_plays_instead_of_any_all_clear_pattern(decisions):
    out = io.StringIO()
    fb = ConsoleFeedback(out, colour=False, bell=False)
    fb.set_state("fault", True, cause="disk_full")
    for name in ("flagged", "completing", "opened", "acknowledged", "not_on_document"):
        fb.decided(decisions[name])
    shown = out.getvalue().splitlines()[1:]
    assert [line.split()[0] for line in shown] == ["[FAULT]"] * 4 + ["[DRUG]"]
    assert shown[2] == (
        "[FAULT] opened prescription RX00000001 (2 lines, 3 units) recorded, but the station is in fault (disk_full)"
    )


# -- the locked state ------------------------------------------------------------------

QUICK_LOOKS = {
    "fault": {"red": Step(0.4, 0.4, None)},
    "locked": {"red": Step(0.1, 0.1, None)},
    "ready": {"green": Step(0.05, 0.15, None)},
}


def test_locked_comes_with_the_locking_decision_and_goes_with_the_acknowledgement(make, factory, decisions):
    fb = make(states=QUICK_LOOKS)
    red, green = factory.pin(PINS["red"]), factory.pin(PINS["green"])
    time.sleep(0.3)
    assert fb.states() == {"ready"} and any(on for on, _ in runs(green))

    fb.decided(decisions["locking"])
    assert fb.states() == {"locked"}  # and not ready: scans are refused
    green.clear_states()
    time.sleep(DEFAULT_PATTERNS["locked"].duration + 0.6)
    # The siren on red, then red keeps blinking fast (the locked look); no ready blip on green.
    assert_runs(red, EXPECTED["locked"]["red"][:-1], prefix=True)
    after = runs(red)[len(EXPECTED["locked"]["red"]) : -1]
    assert len(after) >= 2 and all(abs(s - 0.1) <= 0.06 for _, s in after), runs(red)
    assert runs(green) in ([], [(F, None)])

    red.clear_states()
    fb.decided(decisions["station_locked"])  # each refused scan: the siren again
    time.sleep(DEFAULT_PATTERNS["locked"].duration + 0.2)
    # From its first 0.2 s flash: the look may have blinked between clearing and the decision.
    seen = runs(red)
    first = next(i for i, (on, s) in enumerate(seen) if on and s is not None and abs(s - 0.2) <= 0.06)
    siren = EXPECTED["locked"]["red"][:-1]
    assert fits(seen[first : first + len(siren)], siren), seen
    assert fb.is_on("locked")

    green.clear_states()
    fb.decided(decisions["acknowledged"])
    assert fb.states() == {"ready"}
    time.sleep(0.1)
    red.clear_states()
    time.sleep(DEFAULT_PATTERNS["acknowledged"].duration + 0.3)
    assert not red.state and runs(red) == []  # the locked look is over
    assert_runs(green, [(T, 0.6), (F, 0.2), (T, 0.05)], prefix=True)  # the confirmation, then the ready blip


def test_a_station_locked_rejection_alone_sets_locked(decisions):
    """A lock from before a restart the feedback was not told of still shows at the first refused scan."""
    fb = NoFeedback()
    fb.decided(decisions["station_locked"])
    assert fb.is_on("locked") and not fb.is_on("ready")


def test_console_shows_the_lock_and_its_end(decisions):
    out = io.StringIO()
    fb = ConsoleFeedback(out, colour=True, bell=True)
    fb.decided(decisions["locking"])
    fb.decided(decisions["acknowledged"])
    assert out.getvalue().splitlines() == [
        "\x1b[41;97m[LOCK] locked already_dispensed: 81234560000000000001 [ward_order WO00000001 0 scanned]"
        "\x1b[0m\a\a\a",
        "\x1b[41;97m[STATE] locked\x1b[0m",
        "\x1b[32m[ACK ] acknowledged by sup-1 (ack_code)\x1b[0m\a",
        "\x1b[32m[STATE] ready\x1b[0m",
    ]


def test_the_runner_shows_a_lock_left_from_before_the_restart(tmp_path):
    path = tmp_path / "ledger.db"
    ledger = Ledger.open(path, device_id="k", site_id="s", lock_on=("duplicate",))
    sold = Read(code(AMOX, 0).encode(), "stdin", "a")
    ledger.decide_and_record(sold, "dispense", codes.parse(code(AMOX, 0)))  # sold loose
    ledger.open_document(read_document({"id": "SL00000001", "kind": "sale"}), read=COMMAND)
    # sold again inside a sale (another scanner: a duplicate, not a double read): the station locks
    ledger.decide_and_record(Read(code(AMOX, 0).encode(), "stdin", "b"), "dispense", codes.parse(code(AMOX, 0)))
    assert ledger.lock is not None
    ledger.close()
    config = parse_toml(
        f"""
[ledger]
path = "{path}"
[documents]
ack_code = "SUPERVISOR-ACK"
[feedback]
backend = "gpio"
"""
    )
    before = Device.pin_factory
    Device.pin_factory = mock_factory()
    read_end, write_end = os.pipe()
    out = io.StringIO()
    runner = Runner(config, out=out, stdin=os.fdopen(read_end, "rb"))
    thread = threading.Thread(target=runner.run)
    thread.start()
    try:
        wait_until(lambda: runner.pipeline is not None, what="agent up")
        assert runner.feedback.is_on("locked")
        os.write(write_end, code(AMOX, 1).encode() + b"\n")
        wait_until(lambda: "station_locked" in out.getvalue(), what="the refused scan")
        os.write(write_end, b"SUPERVISOR-ACK\n")
        wait_until(lambda: "acknowledged" in out.getvalue(), what="the acknowledgement")
        assert not runner.feedback.is_on("locked")
    finally:
        os.close(write_end)
        thread.join(30)
        Device.pin_factory = before
    assert [line.split()[0] for line in out.getvalue().splitlines()] == ["rejected", "acknowledged"]


# -- console and printer lines ---------------------------------------------------------


def test_console_and_printer_lines_name_the_document_and_its_progress(decisions):
    names = [
        "opened",
        "accepted",
        "not_on_document",
        "line_complete",
        "completing",
        "closed_complete",
        "reversal",
        "flagged",
        "exception",
        "closed_incomplete",
    ]
    console, printed = io.StringIO(), io.StringIO()
    fb, printer = ConsoleFeedback(console, colour=False, bell=False), DecisionPrinter(printed)
    for name in names:
        fb.decided(decisions[name])
        printer.decided(decisions[name])
    voided = decisions["accepted"].event_id
    assert console.getvalue().splitlines() == [
        "[OPEN] opened prescription RX00000001 (2 lines, 3 units)",
        "[ OK ] accepted 81234560000000000000 [prescription RX00000001 1/3]",
        "[DRUG] wrong_drug not_on_document: 89999990000000000000 [prescription RX00000001 1/3]",
        "[OVER] over_count line_complete: 82345670000000000001 [prescription RX00000001 2/3]",
        "[DONE] document_complete 81234560000000000001 [prescription RX00000001 3/3]",
        "[DONE] closed RX00000001 complete 3/3",
        f"[VOID] reversal of {voided}: wrong box [prescription RX00000001]",
        "[OK !] accepted 83456780000000000000 [sale SL00000001 1 scanned] flagged never_received",
        "[EXCP] exception uncoded item on line 8345678: no code on the box [prescription RX00000002 1/1]",
        "[PART] closed RX00000003 incomplete 0/2",
    ]
    seq = {name: decisions[name].seq for name in names}
    lines = printed.getvalue().splitlines()
    assert lines[0] == "opened prescription RX00000001 (2 lines, 3 units)"
    assert lines[1] == f"accepted 81234560000000000000 seq={seq['accepted']} dispense [prescription RX00000001 1/3]"
    assert lines[2].startswith("rejected not_on_document 89999990000000000000 [prescription RX00000001 1/3] (product")
    assert lines[5] == "closed RX00000001 complete 3/3"
    assert lines[6] == f"reversal of {voided}: wrong box [prescription RX00000001]"
    assert lines[7] == (
        f"accepted 83456780000000000000 seq={seq['flagged']} dispense flagged never_received"
        " [sale SL00000001 1 scanned] (never received at this site)"
    )
    assert lines[9] == "closed RX00000003 incomplete 0/2"


def test_printer_says_a_scan_locked_the_station(decisions):
    out = io.StringIO()
    DecisionPrinter(out).decided(decisions["locking"])
    line = out.getvalue().strip()
    assert line.startswith("duplicate already_dispensed 81234560000000000001 [ward_order WO00000001 0 scanned]")
    assert line.endswith(" - station locked until a supervisor acknowledges")


def test_json_lines_carry_document_progress_record_and_lock(decisions):
    out = io.StringIO()
    printer = DecisionPrinter(out, as_json=True)
    for name in ("completing", "closed_complete", "locking"):
        printer.decided(decisions[name])
    completing, closed, locking = (json.loads(line) for line in out.getvalue().splitlines())
    assert completing["document"] == {"id": "RX00000001", "kind": "prescription"}
    assert (completing["progress"]["collected"], completing["progress"]["expected"]) == (3, 3)
    assert completing["progress"]["complete"] and completing["record"] is None and not completing["locks"]
    assert (closed["verdict"], closed["reason"], closed["record"]["status"]) == ("closed", "complete", "complete")
    amox = closed["record"]["lines"][0]
    assert [c["drug_trac_codg"] for c in amox["drugtracinfo"]] == [code(AMOX, 0), code(AMOX, 1)]
    assert locking["locks"] is True and locking["verdict"] == "duplicate"


# -- the scanner's own beep (host-ACK) --------------------------------------------------


def test_host_ack_answers_each_read_once_good_or_bad():
    profile = ScannerProfile("demo", "Demo 1", "Acme", "guide", HostAckCommands(True, b"G", b"B", "guide"))
    ack = HostAck({"counter": "demo"}, {"demo": profile})
    ledger = Ledger.open(":memory:", device_id="k", site_id="s", lifecycle="warn", lock_on=("duplicate",))
    pipeline = Pipeline(
        ledger,
        sinks=[ack],
        station_codes=StationCodes({"prescription": "^RX[0-9]{8}$"}, close_code="CLOSE", ack_code="ACK"),
    )
    answers: list[tuple[str, bytes]] = []
    t = [1000.0]

    def scan(text: str) -> str:
        t[0] += 10
        reply = lambda b: answers.append((text, b))  # noqa: E731 - the scanner's end of the line
        read = Read(text.encode(), "serial", "tty", scanner="counter", t_first=t[0], t_last=t[0], reply=reply)
        return pipeline.handle(read).verdict

    pipeline.handle(Read(code(IBU, 0).encode(), "stdin", "stdin", movement="receive"))
    steps = [
        ("RX00000001", "opened", b"G"),
        (code(AMOX, 0), "accepted", b"G"),  # never received: flagged, but recorded
        (code(IBU, 0), "accepted", b"G"),
        ("RX00000002", "opened", b"G"),  # closes RX00000001 and opens RX00000002: one read, one answer
        (code(IBU, 0), "duplicate", b"B"),  # locks the station
        (code(IBU, 1), "rejected", b"B"),  # station_locked
        ("ACK", "acknowledged", b"G"),
        ("CLOSE", "closed", b"G"),
        ("RX00000001", "rejected", b"B"),  # a closed document's id: document_refused
    ]
    for text, verdict, _ in steps:
        assert scan(text) == verdict, text
    assert answers == [(text, answer) for text, _, answer in steps]
