"""Site-wide duplicates: how soon a peer's event can decide a scan here, and what the
peer lookup costs a decision.

1. **Peer event → usable.** A real mosquitto on loopback, a real :class:`Uplink` with
   ``peers`` on (its ``uplink-peers`` thread and its own SQLite connection, WAL,
   ``synchronous=FULL``), and another station's real events (made by a real ledger,
   hashes and all) published one at a time with QoS 1. For each, the time from the
   publish call until a separate connection sees its row in ``peer_events``: from then
   on a decision of the pipeline counts it. Polled every 0.2 ms, so that is the
   resolution. p50/p99/max.
2. **The decision's cost.** ``Ledger.decide_and_record`` p50/p99 for codes no peer
   moved, on a ledger whose ``peer_events`` is empty and on one holding ``--peer-rows``
   rows (the lookup is one probe of the code index; a miss).

    .venv/bin/python -m bench.site [--events 2000] [--peer-rows 100000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from agent import codes
from agent.config import MqttConfig
from agent.events import encode, event_from_row
from agent.ledger import Ledger, connect, peers
from agent.read import Read
from bench.machine import header

SITE = "site-1"


def code(n: int) -> bytes:
    return b"8%019d" % n


def pct(times: list[float]) -> tuple[float, float, float]:
    cuts = statistics.quantiles(times, n=100)
    return cuts[49], cuts[98], max(times)


def peer_events(work: Path, n: int) -> list[bytes]:
    """``n`` real scan events of station kiosk-b, accepted dispenses of distinct codes."""
    other = Ledger.open(work / "b.db", device_id="kiosk-b", site_id=SITE)
    t = 1000.0
    for i in range(n):
        t += 10
        read = Read(code(10_000_000 + i), "stdin", "stdin", t_first=t, t_last=t)
        other.decide_and_record(read, "dispense", codes.parse(read.raw))
    rows = other.conn.execute("SELECT * FROM scans ORDER BY id").fetchall()
    other.close()
    return [encode(event_from_row(r)) for r in rows]


def publish_to_usable(work: Path, n: int) -> list[float]:
    from agent.sinks.uplink import Uplink
    from tests.support.mosquitto import Mosquitto
    from tests.support.net import wait_until

    broker = Mosquitto(work)
    broker.start()
    ledger = Ledger.open(work / "a.db", device_id="kiosk-a", site_id=SITE)
    uplink = Uplink(
        MqttConfig(enabled=True, host="127.0.0.1", port=broker.port, health_interval_s=3600),
        db_path=work / "a.db",
        device_id="kiosk-a",
        site_id=SITE,
        peers=True,
    )
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="kiosk-b-bench")
    payloads = peer_events(work, n + 50)
    reader = connect(work / "a.db")
    times = []
    try:
        uplink.start()
        wait_until(lambda: uplink.connected, timeout=10, what="uplink connected")
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        topic = f"trace/v1/{SITE}/kiosk-b/events"
        probe = "SELECT 1 FROM peer_events WHERE id = ?"
        for i, payload in enumerate(payloads):
            started = time.perf_counter()
            pub.publish(topic, payload, qos=1)
            while reader.execute(probe, (i + 1,)).fetchone() is None:
                time.sleep(0.0002)
            if i >= 50:  # the first ones warm the caches
                times.append((time.perf_counter() - started) * 1000)
    finally:
        pub.loop_stop()
        pub.disconnect()
        uplink.stop()
        reader.close()
        ledger.close()
        broker.stop()
    return times


def decide_cost(work: Path, peer_rows: int, n: int = 3000) -> list[float]:
    path = work / f"decide-{peer_rows}.db"
    ledger = Ledger.open(path, device_id="kiosk-a", site_id=SITE)
    batch = []
    for i in range(peer_rows):
        c = code(50_000_000 + i).decode()
        batch.append(
            dict.fromkeys(peers.COLUMNS, "x")
            | {"event_id": f"b-{i}", "device_id": "kiosk-b", "seq": i, "code": c, "product_id": c[:7]}
            | {"movement": "dispense", "verdict": "accepted"}
        )
        if len(batch) == 5000:
            peers.store(ledger.conn, batch, device_id="kiosk-a", received_ts="2026-01-01T00:00:00.000Z")
            batch = []
    if batch:
        peers.store(ledger.conn, batch, device_id="kiosk-a", received_ts="2026-01-01T00:00:00.000Z")
    times = []
    t = 1000.0
    for i in range(n):
        t += 10
        read = Read(code(i), "stdin", "stdin", t_first=t, t_last=t)
        parsed = codes.parse(read.raw)
        started = time.perf_counter()
        ledger.decide_and_record(read, "dispense", parsed)
        times.append((time.perf_counter() - started) * 1000)
    ledger.close()
    return times[200:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--peer-rows", type=int, default=100_000)
    args = parser.parse_args()
    print(header())
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        times = publish_to_usable(work, args.events)
        p50, p99, top = pct(times)
        print(f"\npeer event published -> stored, usable for a decision ({len(times)} events, loopback, QoS 1)")
        print(f"  p50 {p50:.2f} ms   p99 {p99:.2f} ms   max {top:.2f} ms")
        print(
            f"\nLedger.decide_and_record (synchronous=FULL), codes no peer moved ({args.peer_rows} peer rows vs none)"
        )
        print(f"{'peer_events rows':<20}{'p50':>8}{'p99':>8}{'max':>8}")
        for rows in (0, args.peer_rows):
            p50, p99, top = pct(decide_cost(work, rows))
            print(f"{rows:<20}{p50:>8.3f}{p99:>8.3f}{top:>8.2f}   ms")


if __name__ == "__main__":
    main()
