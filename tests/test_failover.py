"""``[mqtt] hosts``: the uplink moves to the next broker when its broker dies.

Two real mosquittos, not bridged: the agent drains a backlog into the first,
which is SIGKILLed mid-drain; the agent moves on to the second with its
backoff, sends again everything the first had not acknowledged (the second has
no session of ours), and health names the second. A consumer subscribed on
both, deduplicating by ``event_id``, gets every event the dead broker did not
itself lose (mosquitto acknowledges before it forwards; see test_uplink.py).
"""

from __future__ import annotations

import time

from agent.config import MqttConfig
from agent.sinks.uplink import Uplink
from tests.support.backlog import fill_ledger
from tests.support.mosquitto import Mosquitto
from tests.support.mqtt import Commander, Subscriber
from tests.support.net import free_port, wait_until
from tests.test_uplink import BASE, delivered_ids, depth, ledger_events


def hosts_uplink(path, ports: list[int], **settings) -> Uplink:
    config = MqttConfig(
        enabled=True,
        hosts=tuple(("127.0.0.1", port) for port in ports),
        host="127.0.0.1",
        port=ports[0],
        keepalive_s=5,
        backoff_max_s=1,
        **settings,
    )
    return Uplink(config, db_path=path, device_id="kiosk-1", site_id="site-1")


def test_first_broker_killed_mid_drain_the_agent_moves_on_and_every_event_arrives(tmp_path):
    first = Mosquitto(tmp_path / "first", extra_conf="max_inflight_messages 0\n")
    second = Mosquitto(tmp_path / "second")
    first.start()
    second.start()
    path = tmp_path / "ledger.db"
    fill_ledger(path, 3000)
    on_first = Subscriber(first.port, f"{BASE}/events", client_id="collector-a").start()
    on_second = Subscriber(second.port, f"{BASE}/events", client_id="collector-b").start()
    uplink = hosts_uplink(path, [first.port, second.port], max_inflight=20)
    uplink.start()
    commander = None
    try:
        wait_until(lambda: depth(path) <= 2400, timeout=30, what="a fifth drained into the first broker")
        assert uplink.connection.broker == f"127.0.0.1:{first.port}"
        first.kill()
        time.sleep(0.5)  # no PUBACK can come from it now; let the acknowledged ones be recorded
        acked_by_first = delivered_ids(path)
        assert 0 < len(acked_by_first) < 3000, "not mid-drain; the test proves nothing"
        wait_until(lambda: depth(path) == 0, timeout=60, what="outbox drained into the second broker")
        recorded = set(ledger_events(path))
        # Everything the first broker had not acknowledged went to the second.
        wait_until(lambda: on_second.event_ids() >= recorded - acked_by_first, timeout=15, what="resent to second")
        seen = on_first.event_ids() | on_second.event_ids()  # the consumer, deduplicating by event_id
        lost_by_first = recorded - seen
        assert lost_by_first <= acked_by_first
        assert len(recorded) == 3000 and uplink.failures == 0
        # Health names the broker it is on now.
        commander = Commander(second.port, BASE).start()
        health = commander.send("health", {})["result"]
        assert health["broker"] == f"127.0.0.1:{second.port}"
        assert uplink.connection.broker == f"127.0.0.1:{second.port}"
    finally:
        if commander is not None:
            commander.stop()
        uplink.stop()
        on_first.stop()
        on_second.stop()
        first.stop()
        second.stop()


def test_an_unreachable_first_host_is_skipped_and_status_is_online_on_the_next(tmp_path, broker):
    dead = free_port()  # nothing listens here
    path = tmp_path / "ledger.db"
    fill_ledger(path, 50)
    events = Subscriber(broker.port, f"{BASE}/events").start()
    uplink = hosts_uplink(path, [dead, broker.port])
    uplink.start()
    try:
        wait_until(lambda: depth(path) == 0, timeout=20, what="drained through the second host")
        wait_until(lambda: len(events.event_ids()) == 50, what="all 50 at the subscriber")
        assert uplink.connection_errors >= 1  # the first host was tried and refused
        status = Subscriber(broker.port, f"{BASE}/status", persistent=False).start()
        message = wait_until(lambda: status.on("/status"), what="retained status")[-1]
        assert message.payload == b"online" and message.retain
        assert uplink.counters.broker == f"127.0.0.1:{broker.port}"  # what health reports
        status.stop()
    finally:
        uplink.stop()
        events.stop()
