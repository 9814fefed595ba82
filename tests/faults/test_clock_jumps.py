"""Clock jumps: the wall clock set back an hour mid-run (through the agent's clock seam).

Order is carried by ``id``, ``seq`` and the UUIDv7 ``event_id``; none of them
may go back. ``ts`` is kept as the clock read it, and ``clock_synced = 0`` says
it is not trustworthy while it is behind a scan already recorded.
"""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta

from agent import codes, ledger
from agent.clock import Clock
from agent.ledger import Ledger
from agent.read import Read
from tests.faults.conftest import cycles
from tests.faults.ledgers import code


class SteppedClock(Clock):
    """A wall clock that ticks 10 ms per reading and can be set back or forward; NTP says synced."""

    def __init__(self, start: datetime) -> None:
        super().__init__()
        self.at = start

    def now(self) -> datetime:
        self.at += timedelta(milliseconds=10)
        return self.at

    def synchronised(self) -> bool:
        return True

    def step(self, delta: timedelta) -> None:
        self.at += delta


def record(led: Ledger, i: int) -> None:
    read = Read(code(i), "stdin", "stdin:console")
    led.decide_and_record(read, "dispense", codes.parse(read.raw))


def test_clock_set_back_an_hour_mid_run(tmp_path, figures):
    db = tmp_path / "ledger.db"
    clock = SteppedClock(datetime(2026, 3, 1, 8, 0, tzinfo=UTC))
    led = Ledger.open(db, device_id="kiosk-c", site_id="site-c", clock=clock)
    n = 0
    jumps = cycles(5)
    for jump in range(jumps):
        for _ in range(50):
            record(led, n)
            n += 1
        clock.step(timedelta(hours=-1))
        if jump % 2 == 1:
            # Restart while the clock is behind: the new process must not reuse older ids.
            led.close()
            led = Ledger.open(db, device_id="kiosk-c", site_id="site-c", clock=clock)
        for _ in range(50):
            record(led, n)
            n += 1
        clock.step(timedelta(hours=1, minutes=1))  # NTP catches up: past everything recorded
    for _ in range(10):
        record(led, n)
        n += 1
    led.close()

    conn = ledger.connect(db)
    rows = conn.execute("SELECT id, seq, event_id, ts, clock_synced FROM scans ORDER BY id").fetchall()
    assert len(rows) == n == jumps * 100 + 10
    assert [r["seq"] for r in rows] == list(range(1, n + 1))
    ids = [uuid.UUID(r["event_id"]) for r in rows]
    assert all(a < b for a, b in itertools.pairwise(ids)), "event ids went back"
    assert all(i.version == 7 for i in ids)
    latest = ""
    for r in rows:
        # Flagged exactly when its ts is behind one already recorded.
        assert r["clock_synced"] == int(r["ts"] >= latest), r["id"]
        latest = max(latest, r["ts"])
    flagged = sum(1 for r in rows if not r["clock_synced"])
    assert flagged == jumps * 50
    assert ledger.verify(conn).ok

    figures.fault = "clock set back 1 h mid-run"
    figures.cycles, figures.sent = jumps, n
    figures.note = f"{flagged} scans flagged clock_synced=0; seq and event ids monotonic"


def test_unsynchronised_kernel_clock_is_flagged(tmp_path):
    class Unsynced(SteppedClock):
        def synchronised(self) -> bool:
            return False

    led = Ledger.open(tmp_path / "l.db", device_id="k", site_id="s", clock=Unsynced(datetime(2026, 1, 1, tzinfo=UTC)))
    record(led, 1)
    assert led.conn.execute("SELECT clock_synced FROM scans").fetchone()[0] == 0
    led.close()
