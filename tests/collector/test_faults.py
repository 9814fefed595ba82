"""Collector faults: SIGKILLed and restarted, PostgreSQL restarted or killed, two collectors
sharing the load. Every event a real agent made is in PostgreSQL exactly once.

``COLLECTOR_CYCLES`` (default 2) sets how many faults each test makes.
"""

import json
import os
import threading
import time

from tests.collector.procs import CollectorProc, Kiosk
from tests.support.net import wait_until

CYCLES = int(os.environ.get("COLLECTOR_CYCLES", "2"))


class Feeder:
    """Scans ``total`` codes into the kiosk, ``chunk`` at a time every ``pause_s``, on its own thread."""

    def __init__(self, kiosk: Kiosk, total: int, chunk: int = 5, pause_s: float = 0.05) -> None:
        self.kiosk, self.total, self.chunk, self.pause_s = kiosk, total, chunk, pause_s
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for first in range(0, self.total, self.chunk):
            self.kiosk.scan(first, min(self.chunk, self.total - first))
            time.sleep(self.pause_s)

    def join(self) -> None:
        self.thread.join(120)


def stored_through(db) -> int:
    row = db.execute("SELECT stored_through_seq FROM devices WHERE device_id = 'kiosk-1'").fetchone()
    return row[0] if row else 0


def assert_all_once(db, kiosk: Kiosk, total: int) -> None:
    wait_until(lambda: kiosk.last_seq() == total, timeout=60, what=f"{total} scans decided")
    wait_until(lambda: stored_through(db) == total, timeout=60, what=f"stored through {total}")
    rows, distinct = db.execute("SELECT count(*), count(DISTINCT event_id) FROM events").fetchone()
    ids = {str(r[0]) for r in db.execute("SELECT event_id FROM events")}
    assert (rows, distinct) == (total, total), "0 lost, 0 duplicated rows"
    assert ids == kiosk.event_ids()
    assert db.execute("SELECT count(*) FROM chain_breaks").fetchone()[0] == 0


def test_collector_sigkilled_and_restarted_loses_and_doubles_nothing(tmp_path, broker, pg, db):
    total = 150 * (CYCLES + 1)
    collector = CollectorProc(tmp_path, broker.port, pg.dsn).start()
    kiosk = Kiosk(tmp_path, broker.port)
    feeder = Feeder(kiosk, total)
    try:
        for cycle in range(1, CYCLES + 1):
            wait_until(lambda c=cycle: stored_through(db) >= 100 * c, timeout=60, what="storing")
            collector.kill()
            time.sleep(0.5)  # events keep coming: the broker keeps them in the collector's session
            collector.start()
        feeder.join()
        assert_all_once(db, kiosk, total)
    finally:
        kiosk.stop()
        collector.stop()


def test_postgresql_restarted_and_killed_under_load_loses_nothing(tmp_path, broker, own_pg):
    pg = own_pg  # a cluster of its own: it restarts and kills it
    total = 150 * (CYCLES + 1)
    collector = CollectorProc(tmp_path, broker.port, pg.dsn).start()
    kiosk = Kiosk(tmp_path, broker.port)
    feeder = Feeder(kiosk, total)
    try:
        for cycle in range(1, CYCLES + 1):
            import psycopg

            with psycopg.connect(pg.dsn, autocommit=True) as conn:
                wait_until(lambda c=cycle, conn=conn: stored_through(conn) >= 100 * c, timeout=60, what="storing")
            if cycle % 2:
                pg.restart()  # fast shutdown: every connection cut
            else:
                pg.kill()  # a crash: recovery from the WAL at the next start
                time.sleep(0.5)
                pg.start()
        feeder.join()
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            assert_all_once(conn, kiosk, total)
        assert collector.proc.poll() is None
    finally:
        kiosk.stop()
        assert collector.stop() == 0, collector.text()
    assert "PostgreSQL lost" in collector.text()


def test_two_collectors_share_the_load_and_one_killed_loses_nothing(tmp_path, broker, pg, db):
    total = 200 * (CYCLES + 1)
    a = CollectorProc(tmp_path, broker.port, pg.dsn, name="collector-a").start()
    b = CollectorProc(tmp_path, broker.port, pg.dsn, name="collector-b").start()
    kiosk = Kiosk(tmp_path, broker.port)
    feeder = Feeder(kiosk, total)
    try:
        for cycle in range(1, CYCLES + 1):
            wait_until(lambda c=cycle: stored_through(db) >= 150 * c, timeout=60, what="storing")
            victim = a if cycle % 2 else b
            victim.kill()
            time.sleep(0.5)
            victim.start()
        feeder.join()
        assert_all_once(db, kiosk, total)
    finally:
        kiosk.stop()
        assert a.stop() == 0 and b.stop() == 0
    # Each stored a share (summed over its runs: each run logs its counts when stopped cleanly,
    # so only the last run of each is counted here).
    shares = [json.loads(c.text().rsplit("stopped: ", 1)[1].splitlines()[0]).get("stored", 0) for c in (a, b)]
    assert all(n > 0 for n in shares), f"one collector stored nothing: {shares}"
