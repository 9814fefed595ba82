"""Faults on a real serial line (socat pty pair): fuzzed bytes, and agent crashes while scanning.

The scanner side is ``pty_pair.device``; the agent reads ``pty_pair.host`` with
its :class:`~agent.sources.serial.SerialSource`.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import threading
import time

from agent import codes, ledger
from agent.domain import VERDICTS
from agent.ledger import Ledger
from agent.pipeline import Pipeline
from agent.sources.serial import SerialSource
from tests.faults.conftest import cycles
from tests.faults.fuzz import fuzzed
from tests.faults.test_agent_crash import Traffic
from tests.faults.test_malformed_input import LEDGER_REASONS, Collect
from tests.support.agent import decisions_until_killed, start_agent
from tests.support.net import wait_until

SENTINEL = b"89999999999999999999"


def test_fuzzed_bytes_through_the_serial_source(pty_pair, caplog, figures):
    caplog.set_level(logging.WARNING)
    count = cycles(10) * 1000  # 10,000 by default; FAULT_CYCLES=100 gives 100,000
    led = Ledger.open(":memory:", device_id="kiosk-s", site_id="site-s")
    collect = Collect()
    pipeline = Pipeline(led, sinks=[collect], accept_gs1=True)
    source = SerialSource(str(pty_pair.host), name="fuzz", terminator="any", baudrate=115200)
    submitted = []

    def submit(read) -> None:
        submitted.append(read)
        pipeline.submit(read)

    pipeline.start()
    source.start(submit)
    fd = pty_pair.open_device()
    try:
        wait_until(source.connected.is_set, timeout=10, what="port open")
        for raw in fuzzed(count, seed=11):
            os.write(fd, raw + b"\r")
        os.write(fd, b"\r" + SENTINEL + b"\r")
        wait_until(
            lambda: any(d.text == SENTINEL.decode() for d in collect.decisions),
            timeout=120,
            what="the sentinel after every fuzzed line",
        )
        wait_until(lambda: len(collect.decisions) == len(submitted), timeout=30, what="every read decided")
        assert source.connected.is_set()  # still reading: nothing killed the reader
    finally:
        os.close(fd)
        source.stop()
        pipeline.stop()
    assert len(submitted) >= count
    for decision in collect.decisions:
        assert decision.verdict in VERDICTS, decision
        if decision.verdict != "accepted":
            assert decision.reason in (*codes.REASONS, *LEDGER_REASONS), decision
    assert not [r for r in caplog.records if r.exc_info], "an exception escaped somewhere"
    figures.fault = "malformed input: serial pty source + pipeline + ledger"
    figures.cycles, figures.sent = 1, len(submitted)


def test_agent_sigkill_restart_cycles_over_serial(tmp_path, pty_pair, figures):
    db = tmp_path / "ledger.db"
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f'[ledger]\npath = "{db}"\n[feedback]\nbackend = "console"\n'
        f'[[scanners]]\nkind = "serial"\nname = "counter"\nport = "{pty_pair.host}"\n'
        'terminator = "cr"\nbaudrate = 115200\n'
    )
    rng = random.Random(12)
    traffic = Traffic(seed=12)
    fd = pty_pair.open_device()
    printed: list[dict] = []
    shown_ok: list[str] = []
    runs = cycles(10)
    try:
        for _ in range(runs):
            started = time.monotonic()
            proc = start_agent("run", "--config", str(cfg), "--json")
            err: list[bytes] = []
            threading.Thread(target=lambda p=proc, e=err: e.extend(p.stderr), daemon=True).start()
            feeding = threading.Event()
            feeding.set()

            def feed(feeding=feeding):
                while feeding.is_set():
                    os.write(fd, traffic.line().replace(b"\n", b"\r"))
                    time.sleep(0.005)

            feeder = threading.Thread(target=feed, daemon=True)
            feeder.start()
            this_run = decisions_until_killed(proc, rng.randrange(5, 60), functools.partial(figures.recovered, started))
            feeding.clear()
            feeder.join(5)
            proc.wait()
            printed += this_run
            shown_ok += [ln.split()[-1] for ln in b"".join(err).decode().splitlines() if ln.startswith("[ OK ]")]
            # Lines written while no agent ran wait in the pty and go to the next agent, or are
            # lost with the cable; either way only what was printed is owed.
            conn = ledger.connect(db)
            result = ledger.verify(conn)
            assert result.ok, result.problem
            stored = {r["event_id"]: (r["verdict"], r["seq"]) for r in conn.execute("SELECT * FROM scans")}
            accepted = {r[0] for r in conn.execute("SELECT code FROM scans WHERE verdict = 'accepted'")}
            conn.close()
            lost = [d for d in printed if stored.get(d["event_id"]) != (d["verdict"], d["seq"])]
            assert lost == [], lost[:3]
            assert set(shown_ok) <= accepted
    finally:
        os.close(fd)
    assert {"accepted", "duplicate", "rejected"} <= {d["verdict"] for d in printed}
    figures.fault = "agent SIGKILL + restart (serial pty)"
    figures.cycles, figures.sent = runs, len(printed)
    figures.note = "recovery = process start to first decision"
