"""Drain a backlog of events from the ledger into a local mosquitto, against a bare paho loop.

    python bench/drain.py [--events 100000] [--inflight 100]

Fills a fresh ledger with N undelivered events, starts its own mosquitto on a
free port, then in the same run:

1. bare paho: one MQTT v5 client publishes the same N payloads with QoS 1
   (prebuilt, same window) and waits for every PUBACK;
2. the uplink: :class:`agent.sinks.uplink.Uplink` drains the outbox, building each
   event from its row and recording every PUBACK in ``deliveries``.

Prints both rates (events/s), the ratio uplink/bare (target >= 0.6) and the machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as mqtt  # noqa: E402

from agent.config import MqttConfig  # noqa: E402
from agent.events import encode, event_from_row  # noqa: E402
from agent.ledger.outbox import Outbox  # noqa: E402
from agent.sinks.uplink import Topics, Uplink  # noqa: E402
from bench.machine import describe  # noqa: E402
from tests.support.backlog import fill_ledger  # noqa: E402
from tests.support.mosquitto import Mosquitto  # noqa: E402
from tests.support.net import wait_until  # noqa: E402

QUEUE_BOUND = 20_000


def bare_loop(port: int, topic: str, payloads: list[bytes], inflight: int) -> float:
    """Seconds for a plain paho client to publish all payloads with QoS 1 and get every PUBACK."""
    acked = 0
    done = threading.Event()
    # paho numbers messages with 16-bit ids and refuses one whose id is still
    # queued, so at most this many may wait in its queue (its window does the rest).
    room = threading.BoundedSemaphore(QUEUE_BOUND)

    def on_publish(client, userdata, mid, reason_code, properties):
        nonlocal acked
        acked += 1
        room.release()
        if acked == len(payloads):
            done.set()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-bare", protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(inflight)
    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    client.loop_start()
    start = time.perf_counter()
    for payload in payloads:
        room.acquire()
        client.publish(topic, payload, qos=1)
    done.wait()
    elapsed = time.perf_counter() - start
    client.disconnect()
    client.loop_stop()
    return elapsed


def uplink_drain(port: int, db: Path, count: int, inflight: int) -> float:
    """Seconds for the uplink to drain ``count`` events from the outbox, deliveries recorded."""
    config = MqttConfig(enabled=True, host="127.0.0.1", port=port, max_inflight=inflight, health_interval_s=3600)
    uplink = Uplink(config, db_path=db, device_id="kiosk-1", site_id="site-1")
    start = time.perf_counter()
    uplink.start()
    wait_until(lambda: uplink.delivered >= count, timeout=3600, interval=0.01, what="drained")
    elapsed = time.perf_counter() - start
    uplink.stop()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--inflight", type=int, default=MqttConfig().max_inflight)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-drain-") as tmp:
        db = Path(tmp) / "ledger.db"
        t0 = time.perf_counter()
        fill_ledger(db, args.events)
        print(f"backlog: {args.events} events recorded in {time.perf_counter() - t0:.1f} s", flush=True)
        outbox = Outbox.open(db)
        payloads = [encode(event_from_row(row)) for row in outbox.pending(0, args.events)]
        outbox.close()
        size = sum(map(len, payloads)) / len(payloads)

        broker = Mosquitto(Path(tmp))
        broker.start()
        try:
            topic = Topics("trace/v1", "site-1", "kiosk-1").events
            cpu = time.process_time()
            bare = bare_loop(broker.port, topic, payloads, args.inflight)
            bare_cpu, cpu = time.process_time() - cpu, time.process_time()
            drain = uplink_drain(broker.port, db, args.events, args.inflight)
            drain_cpu = time.process_time() - cpu
            outbox = Outbox.open(db)
            left = outbox.depth()
            outbox.close()
        finally:
            broker.stop()

    bare_rate, drain_rate = args.events / bare, args.events / drain
    print(f"date:     {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(f"machine:  {describe()}")
    print(f"events:   {args.events} ({size:.0f} bytes each), QoS 1, MQTT v5, window {args.inflight}, local mosquitto")
    print(f"bare paho publish loop: {bare:7.2f} s  {bare_rate:8.0f} events/s  (CPU {bare_cpu:.2f} s)")
    print(f"uplink outbox drain:    {drain:7.2f} s  {drain_rate:8.0f} events/s  (CPU {drain_cpu:.2f} s)")
    print(f"outbox left undelivered: {left}")
    print(f"ratio uplink/bare:      {drain_rate / bare_rate:.2f}  (target >= 0.6)")


if __name__ == "__main__":
    main()
