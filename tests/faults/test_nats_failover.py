"""A clustered broker loses the agent's node mid-drain: the agent moves on, nothing is lost.

A real three-node NATS cluster (JetStream and MQTT on, :mod:`tests.support.nats`).
Each cycle the uplink (``[mqtt] hosts`` = the three nodes, MQTT 3.1.1) drains a
backlog; the node it is connected to is SIGKILLed mid-drain. The uplink moves to
another node and sends again whatever the dead one had not acknowledged. A QoS 1
subscriber on a surviving node, deduplicating by ``event_id``, must get every
event of the ledger: lost must be 0. The killed node is started again (same
store) before the next cycle, so the cluster keeps its quorum.

Cycles: ``NATS_FAILOVER_CYCLES``, else ``FAULT_CYCLES`` capped at 20, else 1 (the main suite).
"""

from __future__ import annotations

import os
import time
from collections import Counter

import pytest

from agent.config import MqttConfig
from agent.sinks.uplink import Uplink
from tests.faults.conftest import cycles
from tests.support.backlog import fill_ledger
from tests.support.mqtt import Subscriber
from tests.support.nats import NatsCluster
from tests.support.net import wait_until
from tests.test_uplink import BASE, delivered_ids, depth, ledger_events

#: Events drained per cycle; the node dies once about a quarter are acknowledged.
PER_CYCLE = 1200


def nats_cycles() -> int:
    return int(os.environ.get("NATS_FAILOVER_CYCLES", min(cycles(1), 20)))


@pytest.fixture
def cluster(tmp_path):
    c = NatsCluster(tmp_path)
    c.start()
    yield c
    c.stop()


def uplink_for(path, cluster: NatsCluster, first: int) -> Uplink:
    """An uplink whose hosts are the cluster's nodes, starting at node ``first``."""
    ports = cluster.mqtt_ports[first:] + cluster.mqtt_ports[:first]
    config = MqttConfig(
        enabled=True,
        protocol="3.1.1",
        hosts=tuple(("127.0.0.1", port) for port in ports),
        host="127.0.0.1",
        port=ports[0],
        keepalive_s=5,
        backoff_max_s=1,
        max_inflight=20,
    )
    return Uplink(config, db_path=path, device_id="kiosk-1", site_id="site-1")


def test_nats_node_killed_mid_drain_the_agent_moves_on_and_loses_nothing(tmp_path, cluster, figures):
    path = tmp_path / "ledger.db"
    figures.fault = "broker node SIGKILLed mid-drain (3-node NATS cluster, [mqtt] hosts)"
    figures.note = f"{PER_CYCLE} events a cycle, MQTT 3.1.1; subscriber on a third node; recovery = kill to next PUBACK"
    count = nats_cycles()
    for cycle in range(count):
        killed = cycle % 3
        kill_mid_drain(path, cluster, cycle, killed, figures)
        if cycle < count - 1:
            cluster.start_node(killed)


def kill_mid_drain(path, cluster: NatsCluster, cycle: int, killed: int, figures) -> None:
    """One cycle: a backlog drains into node ``killed``, which dies a quarter of the way in."""
    survivor = (killed + 2) % 3  # the agent goes to killed + 1; the subscriber is on neither
    before = set(ledger_events(path)) if path.exists() else set()
    fill_ledger(path, PER_CYCLE, start=cycle * PER_CYCLE)
    sub = Subscriber(cluster.mqtt_ports[survivor], f"{BASE}/events", client_id=f"audit-{cycle}").start()
    uplink = uplink_for(path, cluster, killed)
    uplink.start()
    try:
        wait_until(lambda: depth(path) <= PER_CYCLE * 3 // 4, timeout=60, what="a quarter drained")
        assert uplink.counters.broker == f"127.0.0.1:{cluster.mqtt_ports[killed]}"
        delivered_at_kill = uplink.delivered
        cluster.kill(killed)
        killed_at = time.monotonic()
        assert 0 < len(delivered_ids(path)) - len(before) < PER_CYCLE, "not mid-drain; the cycle proves nothing"
        wait_until(lambda: uplink.delivered > delivered_at_kill + 1, timeout=60, what="delivering again")
        figures.recovered(killed_at)
        wait_until(lambda: depth(path) == 0, timeout=120, what="outbox drained through another node")
        assert uplink.counters.broker != f"127.0.0.1:{cluster.mqtt_ports[killed]}"
        wanted = set(ledger_events(path)) - before
        try:
            wait_until(lambda: sub.event_ids() >= wanted, timeout=30, what="every event at the subscriber")
        finally:
            seen = Counter(e["event_id"] for e in sub.events())
            lost = wanted - set(seen)
            figures.cycles += 1
            figures.sent += len(wanted)
            figures.lost += len(lost)
            figures.duplicated += sum(n - 1 for n in seen.values())
        assert not lost
        assert uplink.failures == 0
    finally:
        uplink.stop()
        sub.stop()
