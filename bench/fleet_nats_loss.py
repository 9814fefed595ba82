"""NATS's MQTT loses QoS 1 messages to a subscriber, without the agent: paho clients only.

    .venv/bin/python -m bench.fleet_nats_loss [--publishers 100] [--rounds 15] [--no-peers]

A three-node NATS cluster (:mod:`tests.support.nats`: JetStream, MQTT, R3). One audit
client (MQTT 3.1.1, persistent session) on node 2 subscribes QoS 1 to
``t/+/+/events``. ``--publishers`` paho clients (3.1.1, persistent sessions), spread over
the three nodes, in sites of 5; each (unless ``--no-peers``) also subscribes QoS 1 to its
site's ``t/{site}/+/events``, as an agent with ``[site] peers`` does. Each publishes a
730-byte QoS 1 message every 0.5 s for ``--rounds`` rounds; every PUBACK is waited for,
then 5 s more for the audit client. No node is killed.

Prints sent, received and lost at the audit client. On nats-server 2.9.10 (2026-11-30,
2-core VM) 100 publishers with their site subscriptions lost 14, 31 and 4 of 1,500 (the 4
at load average 1.3); without them, 0 of 1,500. mosquitto in ``bench/fleet.py`` under the
same pattern loses none.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as mqtt  # noqa: E402

from bench.machine import header  # noqa: E402
from tests.support.nats import NATS_SERVER, NatsCluster  # noqa: E402

PAYLOAD = b"x" * 730


def client(client_id: str, port: int, topics: list[str], on_message=None) -> mqtt.Client:
    """A connected 3.1.1 client with a persistent session, subscribed (QoS 1) to ``topics``."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311, clean_session=False)
    ready = threading.Event()
    c.on_connect = lambda cl, u, f, rc, p: cl.subscribe([(t, 1) for t in topics]) if topics else ready.set()
    c.on_subscribe = lambda *a: ready.set()
    if on_message:
        c.on_message = on_message
    c.connect("127.0.0.1", port, keepalive=30)
    c.loop_start()
    if not ready.wait(60):
        raise TimeoutError(f"{client_id}: not connected/subscribed")
    return c


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--publishers", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--no-peers", action="store_true", help="publishers subscribe to nothing")
    args = parser.parse_args()
    print(header())
    print(f"nats-server: {NATS_SERVER}")
    with tempfile.TemporaryDirectory(prefix="nats-loss-") as tmp:
        cluster = NatsCluster(Path(tmp), name="loss")
        cluster.start()
        clients: list[mqtt.Client] = []
        try:
            got: set[bytes] = set()
            audit = client("audit", cluster.mqtt_ports[2], ["t/+/+/events"], lambda c, u, m: got.add(m.payload[:12]))
            clients.append(audit)
            for i in range(args.publishers):
                site = f"s{i // 5}"
                peers = [] if args.no_peers else [f"t/{site}/+/events"]
                clients.append(client(f"k{i}", cluster.mqtt_ports[i % 3], peers))
            infos = []
            for n in range(args.rounds):
                for i, c in enumerate(clients[1:]):
                    tag = b"%05d-%05d-" % (i, n)
                    infos.append(c.publish(f"t/s{i // 5}/k{i}/events", tag + PAYLOAD, qos=1))
                time.sleep(0.5)
            for info in infos:
                info.wait_for_publish(60)
            time.sleep(5)
            sent = {b"%05d-%05d-" % (i, n) for n in range(args.rounds) for i in range(args.publishers)}
            lost = sorted(sent - got)
            peers = "no site subscriptions" if args.no_peers else "each subscribed to its site"
            print(f"{args.publishers} publishers ({peers}), {len(infos)} QoS 1 messages, all PUBACKed")
            print(f"audit subscriber got {len(got & sent)}, LOST {len(lost)}: {[x.decode() for x in lost[:10]]}")
        finally:
            for c in clients:
                c.disconnect()
                c.loop_stop()
            cluster.stop()


if __name__ == "__main__":
    main()
