"""The collector: events stored per second from a backlog, against a bare COPY; scan-to-stored latency.

    .venv/bin/python bench/collector.py [--events 1000000] [--rate 500] [--seconds 30]

1. **Backlog.** ``--events`` events of 20 devices (real scan-event/1 events with
   real hash chains, built as agent.events builds them) fed **directly to the
   store**: each message through :func:`collector.check.check` (JSON, envelope,
   hash) on one thread, as paho's thread does it in ``scan-collector run``, and
   :meth:`collector.store.Store.store` in batches of 5,000 on another (COPY,
   progress, chain, conflicts). MQTT is not in this
   figure. Against it: a bare ``COPY`` of the same rows into the same table (its
   indexes), in a fresh database. Target: the ratio >= 0.5. Each also prints the CPU
   it took, this process's and the PostgreSQL backend's (``/proc``), a figure other work
   on a shared machine disturbs less than the wall clock. The backlog held in memory
   (a million messages) is the bench's, not the collector's (the broker holds a real
   backlog): it is frozen out of the garbage collector's rounds (``gc.freeze``).
2. **Steady.** A publisher sends events at ``--rate`` per second over a real
   mosquitto to a real ``scan-collector run``; for each event, the time from its
   making (its scan, for this figure) to the first receipt covering it: stored,
   committed and confirmed back. p50 and p99.

Services are the tests' own: a PostgreSQL cluster and a mosquitto in a temporary directory,
stopped however the bench ends (``tests.support.postgres``: finally, atexit, SIGTERM, and a
sweep of the clusters of a bench SIGKILLed at the next start).
"""

from __future__ import annotations

import argparse
import gc
import os
import queue
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson
import paho.mqtt.client as mqtt
import psycopg

from agent.events import hashed_row
from agent.ledger.chain import GENESIS, row_hash
from bench.machine import header
from collector.check import COLUMNS, Event, check
from collector.schema import migrate
from collector.store import Store

BATCH = 5000


class Device:
    """Makes one device's events, chained and hashed as the agent's ledger does."""

    def __init__(self, device: str, site: str = "site-1") -> None:
        self.device, self.site = device, site
        self.seq, self.prev = 0, GENESIS
        self.t = datetime(2026, 11, 1, tzinfo=UTC)

    def next(self, n: int, ts: str | None = None) -> dict:
        self.seq += 1
        self.t += timedelta(milliseconds=37)
        code = f"8{n:019d}"
        event = {
            "schema": "scan-event/1",
            "event_id": str(uuid.uuid4()),
            "seq": self.seq,
            "device_id": self.device,
            "site_id": self.site,
            "ts": ts or self.t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{self.t.microsecond // 1000:03d}Z",
            "clock_synced": True,
            "movement": "dispense",
            "verdict": "accepted",
            "reason": None,
            "detail": "",
            "code": code,
            "raw": code,
            "kind": "nmpa20",
            "product_id": code[1:8],
            "serial": code[11:],
            "symbology": "]C0",
            "ais": None,
            "source": {"kind": "serial", "id": "usb-Newland_NLS-1234"},
            "operator": "op-7",
            "bill": "",
            "earlier": None,
            "document": None,
            "record": None,
            "ledger_id": self.seq,
            "hash": "",
            "prev_hash": self.prev,
            "backfilled": False,
            "sent_ts": "",
        }
        event["hash"] = row_hash(hashed_row(event))
        event["sent_ts"] = event["ts"]
        self.prev = event["hash"]
        return event


def topic(event: dict) -> str:
    return f"trace/v1/{event['site_id']}/{event['device_id']}/events"


def backlog(n: int) -> list[tuple[str, bytes]]:
    devices = [Device(f"kiosk-{i:02d}") for i in range(20)]
    return [(topic(e), orjson.dumps(e)) for e in (devices[i % 20].next(i) for i in range(n))]


def fresh_db(admin: psycopg.Connection, name: str, dsn: str) -> str:
    admin.execute(f"DROP DATABASE IF EXISTS {name}")
    admin.execute(f"CREATE DATABASE {name}")
    url = dsn.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn)
        conn.execute("CREATE TABLE events_2026_11 PARTITION OF events FOR VALUES FROM ('2026-11-01') TO ('2026-12-01')")
        conn.execute("CREATE TABLE events_2026_12 PARTITION OF events FOR VALUES FROM ('2026-12-01') TO ('2027-01-01')")
    return url


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_backlog(dsn: str, n: int) -> None:
    print(f"\n1. backlog of {n:,} events, 20 devices, fed to the store directly (no MQTT)")
    t0 = time.perf_counter()
    messages = backlog(n)
    gc.freeze()  # the bench's backlog: not the collector's garbage to look through
    print(f"   made in {time.perf_counter() - t0:.1f} s")
    with psycopg.connect(dsn, autocommit=True) as admin:
        url = fresh_db(admin, "bare", dsn)
        rows = [check(t, p, prefix="trace/v1").row() for t, p in messages]
        with psycopg.connect(url) as conn:
            backend = conn.info.backend_pid
            t0, c0, b0 = time.perf_counter(), time.process_time(), cpu_s(backend)
            with conn.cursor().copy(f"COPY events ({', '.join(COLUMNS)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            conn.commit()
            bare = time.perf_counter() - t0
            bare_cpu, bare_pg = time.process_time() - c0, cpu_s(backend) - b0
        del rows
        print(
            f"   bare COPY:  {n / bare:>9,.0f} events/s ({bare:.1f} s; CPU: this process {bare_cpu:.1f} s,"
            f" PostgreSQL {bare_pg:.1f} s)"
        )
        url = fresh_db(admin, "collected", dsn)
        store = Store(url)
        backend = store.conn.info.backend_pid
        t0, c0, b0 = time.perf_counter(), time.process_time(), cpu_s(backend)
        # As scan-collector run does it: the check on another thread (paho's there), the
        # writer storing each batch as soon as it is checked.
        batches: queue.Queue = queue.Queue(maxsize=4)
        checked = [0.0]

        def checker() -> None:
            for i in range(0, n, BATCH):
                c0 = time.perf_counter()
                batches.put([check(t, p, prefix="trace/v1") for t, p in messages[i : i + BATCH]])
                checked[0] += time.perf_counter() - c0
            batches.put(None)

        threading.Thread(target=checker, daemon=True).start()
        waited = 0.0
        while True:
            w0 = time.perf_counter()
            events = batches.get()
            waited += time.perf_counter() - w0
            if events is None:
                break
            assert all(isinstance(e, Event) for e in events)
            store.store(events)
        took = time.perf_counter() - t0
        took_cpu, took_pg = time.process_time() - c0, cpu_s(backend) - b0
        store.close()
        with psycopg.connect(url) as conn:
            count, through = conn.execute(
                "SELECT (SELECT count(*) FROM events), (SELECT min(stored_through_seq) FROM devices)"
            ).fetchone()
        assert count == n and through == n // 20, (count, through)
        print(
            f"   collector:  {n / took:>9,.0f} events/s ({took:.1f} s; the check {checked[0]:.1f} s on its"
            f" own thread, the writer waiting for it {waited:.1f} s; CPU: this process {took_cpu:.1f} s,"
            f" PostgreSQL {took_pg:.1f} s)"
        )
        print(f"   ratio:      {bare / took:.2f} (target >= 0.5)")
        print(
            f"   CPU an event: bare COPY {(bare_cpu + bare_pg) / n * 1e6:.0f} us,"
            f" collector {(took_cpu + took_pg) / n * 1e6:.0f} us"
        )
        gc.unfreeze()


def bench_steady(dsn: str, work: Path, rate: int, seconds: float) -> None:
    from tests.collector.procs import CollectorProc
    from tests.support.mosquitto import Mosquitto

    print(f"\n2. steady {rate} events/s for {seconds:.0f} s: made -> receipt covering it (stored, committed)")
    broker = Mosquitto(work)
    broker.start()
    try:
        with psycopg.connect(dsn, autocommit=True) as admin:
            url = fresh_db(admin, "steady", dsn)
        collector = CollectorProc(work, broker.port, url).start()
        try:
            _steady(broker.port, rate, seconds)
        finally:
            collector.stop()
    finally:
        broker.stop()


def _steady(port: int, rate: int, seconds: float) -> None:
    made: dict[int, float] = {}
    latencies: list[float] = []
    lock = threading.Lock()
    covered = [0]

    def on_receipt(client, userdata, message) -> None:
        now = time.perf_counter()
        n = orjson.loads(message.payload)["stored_through_seq"]
        with lock:
            for seq in range(covered[0] + 1, n + 1):
                latencies.append(now - made[seq])
            covered[0] = max(covered[0], n)

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-receipts")
    sub.on_message = on_receipt
    sub.connect("127.0.0.1", port)
    sub.subscribe("trace/v1/site-1/kiosk-steady/receipt", 1)
    sub.loop_start()
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-kiosk", protocol=mqtt.MQTTv5)
    pub.max_inflight_messages_set(1000)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    device = Device("kiosk-steady")
    total = int(rate * seconds)
    start = time.perf_counter()
    for i in range(total):
        due = start + i / rate
        while (now := time.perf_counter()) < due:
            time.sleep(min(0.001, due - now))
        ts = datetime.now(UTC)
        event = device.next(i, ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z")
        made[event["seq"]] = time.perf_counter()
        pub.publish(topic(event), orjson.dumps(event), qos=1)
    deadline = time.monotonic() + 30
    while covered[0] < total and time.monotonic() < deadline:
        time.sleep(0.05)
    sub.loop_stop()
    pub.loop_stop()
    lat = sorted(latencies)
    assert len(lat) == total, f"{len(lat)} of {total} confirmed"
    p50, p99 = lat[len(lat) // 2] * 1000, lat[int(len(lat) * 0.99)] * 1000
    print(f"   {total} events, all confirmed; p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {lat[-1] * 1000:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rate", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--skip-backlog", action="store_true")
    parser.add_argument("--skip-steady", action="store_true")
    args = parser.parse_args()
    print(header())
    from tests.support.postgres import Postgres

    with tempfile.TemporaryDirectory() as tmp:
        pg = Postgres(Path(tmp))
        pg.start()
        try:
            if not args.skip_backlog:
                bench_backlog(pg.dsn, args.events)
            if not args.skip_steady:
                bench_steady(pg.dsn, Path(tmp), args.rate, args.seconds)
        finally:
            pg.stop()


if __name__ == "__main__":
    main()
