"""Issue 17's headline: agent -> mosquitto without persistence -> collector -> PostgreSQL.

A real ``scan-agent run`` is fed new codes on stdin at a steady rate while a mosquitto
that keeps nothing on disk is SIGKILLed and started again, empty: no sessions, no
retained receipts. Between the restart and the collector's new subscription the broker
answers the agent's events with PUBACK 0x10 "no matching subscribers": the agent records
them delivered and nobody has them. A real ``scan-collector run`` stores into a
PostgreSQL cluster of the test's own and asks for gaps with ``cmd/resend``.

With ``[mqtt] receipts = true`` the agent sends again what no receipt covers: every
accepted scan must be in PostgreSQL exactly once, seq without gaps, chains unbroken, and
the agent's receipts must cover everything. Without receipts the same run is measured
(what it lost is printed and recorded, not asserted: the collector's gap requests bring
back what a later event reveals missing, so only a loss in the last outage stays, and
an idle outage's loss stays until the kiosk scans again).

Every other outage, and the last, the kiosk falls idle while the broker is down (it scans
again only after the catch-up, or after 5 s without receipts). Per cycle: **recovery** is
the broker back to the first event made after that stored in PostgreSQL (outages where the
kiosk scans on); **catch-up** is the broker back to ``stored_through_seq`` reaching the seq
the agent had made by then (everything lost in that outage stored again).
"""

from __future__ import annotations

import random
import threading
import time

import psycopg
import pytest

from tests.collector.procs import CollectorProc, Kiosk
from tests.faults.conftest import cycles
from tests.support.mosquitto import Mosquitto
from tests.support.net import wait_until
from tests.support.postgres import Postgres, migrated

CYCLES = cycles(3)
#: The collector's gap grace and first retry (short: the run is short).
GAP_ARGS = ("--gap-grace-s", "1", "--gap-retry-s", "1", "--gap-retry-max-s", "4")
#: A catch-up not reached in this long is counted as not caught up, and the run goes on.
CATCH_UP_S = 30.0
#: Without receipts a loss in an idle outage stays until the kiosk scans again: wait less.
IDLE_CATCH_UP_S = 5.0


@pytest.fixture
def pg(tmp_path):
    """A PostgreSQL cluster of this test's own, migrated."""
    with migrated(tmp_path) as server:
        yield server


class Stream:
    """Scans new codes into the kiosk, ``chunk`` every ``pause_s``, until :meth:`stop`;
    :meth:`idle` and :meth:`resume` pause it (a kiosk between customers).

    Threads: its own feeding thread; :attr:`sent` is written there, read by anyone;
    the other methods from the test's thread.
    """

    def __init__(self, kiosk: Kiosk, chunk: int = 2, pause_s: float = 0.05) -> None:
        self.kiosk, self.chunk, self.pause_s = kiosk, chunk, pause_s
        self.sent = 0
        self._stop = threading.Event()
        self._flowing = threading.Event()
        self._flowing.set()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._flowing.wait(0.1):
                continue
            self.kiosk.scan(self.sent, self.chunk)
            self.sent += self.chunk
            self._stop.wait(self.pause_s)

    def idle(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def stop(self) -> int:
        """Stop scanning; return how many codes were written."""
        self._stop.set()
        self.thread.join(10)
        return self.sent


def stored_through(db: psycopg.Connection) -> int:
    row = db.execute("SELECT stored_through_seq FROM devices WHERE device_id = 'kiosk-1'").fetchone()
    return row[0] if row else 0


def stored_after(db: psycopg.Connection, seq: int) -> bool:
    return db.execute("SELECT 1 FROM events WHERE device_id = 'kiosk-1' AND seq > %s LIMIT 1", (seq,)).fetchone()


def through_broker_kills(tmp_path, pg: Postgres, figures, *, receipts: bool) -> dict:
    """Run the scenario; return its figures (the final checks are the caller's)."""
    rng = random.Random(17)
    broker = Mosquitto(tmp_path, persistence=False)
    broker.start()
    mqtt = "receipts = true\nreceipt_timeout_s = 1\n" if receipts else ""
    collector = CollectorProc(tmp_path, broker.port, pg.dsn, *GAP_ARGS).start()
    kiosk = Kiosk(tmp_path, broker.port, mqtt=mqtt)
    stream = Stream(kiosk)
    db = psycopg.connect(pg.dsn, autocommit=True)
    catch_up: list[float] = []
    not_caught_up = idle_cycles = 0
    catch_up_s = CATCH_UP_S if receipts else IDLE_CATCH_UP_S
    try:
        wait_until(lambda: stored_through(db) >= 20, timeout=60, what="the first events stored")
        for cycle in range(CYCLES):
            # Every other outage, and the last, the kiosk falls idle while the broker is down:
            # nothing made later shows the collector what the restarted broker dropped.
            idle = cycle % 2 == 1 or cycle == CYCLES - 1
            time.sleep(rng.uniform(0.2, 1.5))  # scans flow
            broker.kill()
            time.sleep(rng.uniform(0.1, 1.0))  # scans go on into the agent's outbox
            if idle:
                stream.idle()
                idle_cycles += 1
            broker.start()
            back, made = time.monotonic(), kiosk.last_seq()
            if not idle:
                wait_until(lambda m=made: stored_after(db, m), timeout=60, what="a new event stored after the restart")
                figures.recovered(back)
            try:
                wait_until(lambda m=made: stored_through(db) >= m, timeout=catch_up_s, interval=0.05, what="catch-up")
                catch_up.append(time.monotonic() - back)
            except TimeoutError:
                not_caught_up += 1
            if cycle < CYCLES - 1:
                stream.resume()
        total = stream.stop()
        wait_until(lambda: kiosk.last_seq() == total, timeout=60, what=f"{total} scans decided")
        drain_started = time.monotonic()
        try:  # without receipts nothing may bring a lost tail back: wait less
            wait_until(lambda: stored_through(db) == total, timeout=120 if receipts else 15, what="all stored")
        except TimeoutError:
            if receipts:
                raise AssertionError(
                    f"stored through {stored_through(db)} of {total}; the agent confirmed {kiosk.confirmed()};"
                    f" agent log: {kiosk.log.read_text(errors='replace')[-3000:]}"
                    f" collector log: {collector.text()[-3000:]}"
                ) from None
        drain_s = time.monotonic() - drain_started
        if receipts:
            wait_until(lambda: kiosk.confirmed() == total, timeout=30, what=f"receipts through {total}")
        rows, distinct = db.execute("SELECT count(*), count(DISTINCT event_id) FROM events").fetchone()
        stored_ids = {str(r[0]) for r in db.execute("SELECT event_id FROM events")}
        result = {
            "receipts": receipts,
            "cycles": CYCLES,
            "scans": total,
            "accepted": kiosk.accepted(),
            "events": len(kiosk.event_ids()),
            "ledger_ids": kiosk.event_ids(),
            "stored_ids": stored_ids,
            "rows": rows,
            "distinct": distinct,
            "lost": len(kiosk.event_ids() - stored_ids),
            "duplicated_rows": rows - distinct,
            "dropped_copies": int(db.execute("SELECT COALESCE(sum(duplicates), 0) FROM devices").fetchone()[0]),
            "seqs": [s for (s,) in db.execute("SELECT seq FROM events WHERE device_id = 'kiosk-1' ORDER BY seq")],
            "chain_breaks": db.execute("SELECT count(*) FROM chain_breaks").fetchone()[0],
            "gap_requests": collector.text().count("asked for again"),
            "confirmed": kiosk.confirmed(),
            "max_recovery_s": round(max(figures.recovery_s), 2) if figures.recovery_s else None,
            "max_catch_up_s": round(max(catch_up), 2) if catch_up else None,
            "not_caught_up": not_caught_up,
            "idle_cycles": idle_cycles,
            "drain_s": round(drain_s, 2),
        }
    finally:
        stream.stop()
        db.close()
        kiosk.stop()
        collector.stop()
        broker.stop()
    shown = {k: v for k, v in result.items() if k not in ("ledger_ids", "stored_ids", "seqs")}
    print(f"broker without persistence, {CYCLES} SIGKILLs: {shown}")
    figures.cycles = CYCLES
    figures.sent = result["scans"]
    figures.lost = result["lost"]
    figures.duplicated = result["duplicated_rows"]
    figures.note = (
        f"{result['events']} events; {result['dropped_copies']} copies received again, dropped by event_id;"
        f" {result['gap_requests']} cmd/resend requests; max catch-up {result['max_catch_up_s']} s"
        f" ({not_caught_up} of {CYCLES} not caught up in {catch_up_s:.0f} s); {idle_cycles} outages with the"
        " kiosk falling idle (the last one too); recovery = broker back to the next new event in PostgreSQL,"
        " catch-up = to everything made by then stored"
    )
    return result


def test_with_receipts_every_scan_is_stored_once_through_empty_broker_restarts(tmp_path, pg, figures):
    figures.fault = "broker SIGKILL + restart empty (no persistence), agent to collector to PostgreSQL, receipts on"
    r = through_broker_kills(tmp_path, pg, figures, receipts=True)
    assert r["accepted"] == r["scans"] == r["events"], "every scan a new code, accepted, with an event"
    assert r["lost"] == 0 and r["stored_ids"] == r["ledger_ids"], "every accepted scan in PostgreSQL"
    assert r["rows"] == r["distinct"] == r["events"], "each exactly once"
    assert r["seqs"] == list(range(1, r["events"] + 1)), "seq without gaps"
    assert r["chain_breaks"] == 0, "chains verify"
    assert r["confirmed"] == r["events"], "receipts cover everything"
    assert r["not_caught_up"] == 0, f"{r['not_caught_up']} outages' losses not sent again within {CATCH_UP_S:.0f} s"


def test_without_receipts_the_same_run_is_measured(tmp_path, pg, figures):
    figures.fault = "broker SIGKILL + restart empty (no persistence), agent to collector to PostgreSQL, receipts off"
    r = through_broker_kills(tmp_path, pg, figures, receipts=False)
    assert r["accepted"] == r["scans"] == r["events"]
    assert r["stored_ids"] <= r["ledger_ids"] and r["rows"] == r["distinct"], "what is stored is stored once"
    assert r["chain_breaks"] == 0
    assert r["confirmed"] == 0, "receipts off: the agent records none"
