"""Disk full: the ledger on a small tmpfs filled to the brim, then space returns.

While full, no scan is announced as accepted unless it is on disk: the others
get ``fault`` (reason ``ledger_unwritable``), the fault feedback and a log line
with the unrecorded read. Everything recorded before stays, and the next scan
after space returns is accepted with the chain intact.
"""

from __future__ import annotations

import io
import logging
import os
import time

from agent import ledger
from agent.ledger import Ledger
from agent.pipeline import Pipeline
from agent.read import Read
from agent.sinks.feedback import ConsoleFeedback
from tests.faults.conftest import cycles
from tests.faults.ledgers import code
from tests.faults.smallfs import fill, free, small_filesystem
from tests.support.net import wait_until


def _usage(fs) -> str:
    st = os.statvfs(fs)
    files = {p.name: p.stat().st_size for p in fs.iterdir()}
    return f"free {st.f_bavail * st.f_frsize} bytes; files {files}"


class Collect:
    def __init__(self) -> None:
        self.decisions = []

    def decided(self, decision) -> None:
        self.decisions.append(decision)


def test_full_disk_faults_then_recovers(tmp_path, caplog, figures):
    caplog.set_level(logging.ERROR, logger="agent.pipeline")
    rounds = cycles(3)
    with small_filesystem(tmp_path / "small", "8m") as fs:
        led = Ledger.open(fs / "ledger.db", device_id="kiosk-d", site_id="site-d")
        collect, console = Collect(), io.StringIO()
        pipeline = Pipeline(led, sinks=[ConsoleFeedback(console, colour=False, bell=False), collect])
        pipeline.start()
        sent = 0

        def scan() -> object:
            nonlocal sent
            pipeline.submit(Read(code(sent), "stdin", "stdin:console"))
            sent += 1
            return wait_until(
                lambda: len(collect.decisions) == sent and collect.decisions[-1], interval=0.002, what="a decision"
            )

        try:
            for _ in range(20):
                assert scan().verdict == "accepted"
            for _ in range(rounds):
                fill(fs)
                faults = 0
                # The WAL may still have room from earlier commits: scans go on being
                # recorded (truly on disk) until it has to grow.
                for _ in range(2000):
                    decision = scan()
                    assert decision.verdict in ("accepted", "fault")
                    if decision.verdict == "fault":
                        assert decision.reason == "ledger_unwritable"
                        faults += 1
                        if faults == 5:
                            break
                assert faults == 5, "the disk never got full enough to refuse a commit"
                assert pipeline.faulted
                freed = time.monotonic()
                free(fs)
                assert scan().verdict == "accepted"
                assert not pipeline.faulted
                figures.recovered(freed)
                # Under back-to-back commits the checkpointer never catches up, so the
                # WAL only restarts (and stops growing) in a pause; give it one, as a
                # counter has between customers, or 100 rounds outgrow any small disk.
                time.sleep(1.5)
                for _ in range(10):
                    decision = scan()
                    assert decision.verdict == "accepted", (decision.detail, _usage(fs))
        finally:
            pipeline.stop()
            led.close()

        conn = ledger.connect(fs / "ledger.db")
        stored = {r["event_id"] for r in conn.execute("SELECT event_id FROM scans")}
        accepted = [d for d in collect.decisions if d.verdict == "accepted"]
        faulted = [d for d in collect.decisions if d.verdict == "fault"]
        assert len(collect.decisions) == sent
        figures.lost = len({d.event_id for d in accepted} - stored)
        assert {d.event_id for d in accepted} == stored  # every accept on disk, nothing else
        assert len(faulted) == 5 * rounds
        assert all(d.event_id is None for d in faulted)
        # Every unrecorded read is named in the log, raw text included.
        unrecorded = [r.getMessage() for r in caplog.records if "NOT RECORDED" in r.getMessage()]
        assert [m.rsplit(" ", 1)[-1] for m in unrecorded] == [d.text for d in faulted]
        # The operator saw FAULT exactly for those, never an OK.
        lines = console.getvalue().splitlines()
        assert sum(1 for line in lines if line.startswith("[FAULT]")) == len(faulted)
        assert sum(1 for line in lines if line.startswith("[ OK ]")) == len(accepted)
        result = ledger.verify(conn)
        assert result.ok, result.problem
        assert result.rows == len(accepted)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        conn.close()

    figures.fault = "disk full (8 MiB tmpfs filled to the brim)"
    figures.cycles, figures.sent = rounds, sent
    figures.note = f"{len(faulted)} scans answered fault (not recorded, operator told), 0 accepted lost"
