"""Malformed input: 100,000 fuzzed byte strings (fixed seed) through the parser, and
through a source, the pipeline and the ledger: no crash, no hang, each decided with a reason."""

from __future__ import annotations

import io
import logging
import threading

from agent import codes
from agent.domain import VERDICTS
from agent.ledger import Ledger
from agent.pipeline import Pipeline
from agent.sources.stdin import StdinSource
from tests.faults.conftest import cycles
from tests.faults.fuzz import fuzzed
from tests.support.net import wait_until

# Reasons a decision may carry besides the parser's own.
LEDGER_REASONS = {"double_read", "already_dispensed", "already_received", "destroyed", "bill_full"}


def test_parser_decides_every_fuzzed_string(figures):
    count, valid = 100_000, 0
    for raw in fuzzed(count):
        parsed = codes.parse(raw)
        if parsed.valid:
            valid += 1
            assert len(parsed.code) == 20 and parsed.code.isdigit()
        else:
            assert parsed.reason in codes.REASONS, (raw, parsed.reason)
            assert parsed.detail
        # GS1 mode takes other paths through the parser; it must hold up as well.
        gs1 = codes.parse(raw, accept_gs1=True)
        assert gs1.valid or gs1.reason in codes.REASONS
    assert 0 < valid < count  # the fuzz reached both sides
    figures.fault = "malformed input: parser (x2 modes)"
    figures.cycles, figures.sent = 1, count


class Collect:
    def __init__(self) -> None:
        self.decisions = []

    def decided(self, decision) -> None:
        self.decisions.append(decision)


def test_source_pipeline_and_ledger_decide_every_fuzzed_line(caplog, figures):
    caplog.set_level(logging.WARNING)
    count = cycles(10) * 1000  # 10,000 by default; FAULT_CYCLES=100 gives 100,000
    stream = io.BytesIO(b"".join(raw + b"\n" for raw in fuzzed(count, seed=10)))
    ledger = Ledger.open(":memory:", device_id="kiosk-z", site_id="site-z")
    collect = Collect()
    pipeline = Pipeline(ledger, sinks=[collect], accept_gs1=True)
    source = StdinSource(stream, name="fuzz")
    submitted = []

    def submit(read) -> None:
        submitted.append(read)
        pipeline.submit(read)

    pipeline.start()
    source.start(submit)
    assert source.done.wait(60), "the source hung on fuzzed input"
    wait_until(lambda: len(collect.decisions) == len(submitted), timeout=60, what="every read decided")
    pipeline.stop()
    source.stop()

    assert len(submitted) >= count  # embedded newlines only ever split a line into more reads
    assert pipeline._thread is not None and not pipeline._thread.is_alive()
    for decision in collect.decisions:
        assert decision.verdict in VERDICTS, decision
        if decision.verdict != "accepted":
            assert decision.reason in (*codes.REASONS, *LEDGER_REASONS), decision
        assert decision.scan_id is not None  # recorded, whatever it was
    rows = ledger.conn.execute("SELECT COUNT(*) FROM scans").fetchone()[0]
    assert rows == len(collect.decisions)
    assert not [r for r in caplog.records if r.exc_info], "an exception escaped somewhere"
    assert threading.active_count() < 20
    figures.fault = "malformed input: stdin source + pipeline + ledger"
    figures.cycles, figures.sent = 1, len(submitted)
