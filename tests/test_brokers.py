"""The interop matrix: the real agent against each broker it is meant to work with.

mosquitto over MQTT 5 and 3.1.1, NATS's MQTT (3.1.1, JetStream) and RabbitMQ's
MQTT plugin (3.1.1), each started by the test on free ports. For each:

- events: every scan decided by ``scan-agent run`` arrives, by event id;
- status: ``online`` retained at connect; the Last Will (``offline``, retained)
  when the agent is SIGKILLed, seen live and by a subscriber that comes later;
- commands: ``health`` answered (naming the broker), ``resend`` answered and the
  events sent again with the same event ids.

What differs between them is in docs/brokers.md (and :mod:`tests.test_brokers_behaviour`).
"""

from __future__ import annotations

import json
import signal
import threading

import pytest

from tests.support.agent import start_agent
from tests.support.backlog import code
from tests.support.mosquitto import Mosquitto
from tests.support.mqtt import Commander, Subscriber
from tests.support.nats import NatsCluster
from tests.support.net import wait_until
from tests.support.rabbitmq import RabbitMQ, RabbitUnavailable

DEVICE, SITE = "kiosk-m", "site-m"
BASE = f"trace/v1/{SITE}/{DEVICE}"
BROKERS = ["mosquitto-5", "mosquitto-3.1.1", "nats-3.1.1", "rabbitmq-3.1.1"]


class Broker:
    """A started broker of one kind: its MQTT port and how to stop it."""

    def __init__(self, kind: str, tmp_path) -> None:
        self.kind = kind
        self.protocol = kind.rsplit("-", 1)[1]
        name = kind.split("-")[0]
        if name == "mosquitto":
            self.server = Mosquitto(tmp_path)
            self.server.start()
            self.port = self.server.port
        elif name == "nats":
            self.server = NatsCluster(tmp_path, size=1)
            self.server.start()
            self.port = self.server.mqtt_ports[0]
        else:
            self.server = RabbitMQ(tmp_path)
            try:
                self.server.start()
            except RabbitUnavailable as problem:
                pytest.skip(f"RabbitMQ could not start here: {problem}")
            self.port = self.server.mqtt_port

    @property
    def v5(self) -> bool:
        return self.protocol == "5"

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture(params=BROKERS)
def broker_kind(request, tmp_path):
    b = Broker(request.param, tmp_path)
    yield b
    b.stop()


def write_config(tmp_path, port: int, protocol: str):
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f'[station]\ndevice_id = "{DEVICE}"\nsite_id = "{SITE}"\n'
        f'[ledger]\npath = "{tmp_path / "ledger.db"}"\n[feedback]\nbackend = "none"\n'
        f'[mqtt]\nenabled = true\nhosts = ["127.0.0.1:{port}"]\nprotocol = "{protocol}"\n'
        "keepalive_s = 5\nbackoff_max_s = 1\nhealth_interval_s = 3600\n"
    )
    return cfg


def test_events_status_will_commands_and_resend(tmp_path, broker_kind):
    b = broker_kind
    events = Subscriber(b.port, f"{BASE}/events", v5=b.v5).start()
    status = Subscriber(b.port, f"{BASE}/status", persistent=False, v5=b.v5).start()
    agent = start_agent("run", "--config", str(write_config(tmp_path, b.port, b.protocol)), "--json")
    decided: list[dict] = []
    errors: list[bytes] = []
    threading.Thread(target=lambda: decided.extend(json.loads(line) for line in agent.stdout), daemon=True).start()
    threading.Thread(target=lambda: errors.extend(agent.stderr), daemon=True).start()
    commander = Commander(b.port, BASE, v5=b.v5).start()
    try:
        wait_until(lambda: [m for m in status.on("/status") if m.payload == b"online"], timeout=20, what="online")
        for n in range(10):
            agent.stdin.write(code(n) + b"\n")
        agent.stdin.write(code(3) + b"\n")  # a duplicate is an event too
        agent.stdin.flush()
        wait_until(lambda: len(decided) == 11, timeout=20, what="11 decisions")
        ids = {d["event_id"] for d in decided}
        wait_until(lambda: events.event_ids() == ids, timeout=20, what="every event at the subscriber")
        assert sorted(e["seq"] for e in events.events()) == list(range(1, 12))

        health = commander.send("health", {}, timeout=20)
        assert health["ok"] is True and health["result"]["broker"] == f"127.0.0.1:{b.port}"
        resend = commander.send("resend", {"from_seq": 2, "to_seq": 4}, timeout=20)
        assert resend["ok"] is True and (resend["result"]["found"], resend["result"]["queued"]) == (3, 3)
        wait_until(lambda: len(events.events()) == 14, timeout=20, what="three sent again")
        assert sorted(e["seq"] for e in events.events()) == [1, 2, 2, 3, 3, 4, 4, *range(5, 12)]
        assert events.event_ids() == ids  # the same events: a consumer drops them by event_id

        # A subscriber that comes later gets the retained online status.
        late = Subscriber(b.port, f"{BASE}/status", persistent=False, v5=b.v5).start()
        message = wait_until(lambda: late.on("/status"), what="retained status")[-1]
        assert (message.payload, message.retain) == (b"online", True)
        late.stop()

        # The agent dies: the broker publishes its Last Will, retained.
        agent.send_signal(signal.SIGKILL)
        agent.wait(10)
        wait_until(lambda: status.on("/status")[-1].payload == b"offline", timeout=20, what="Last Will")
        late = Subscriber(b.port, f"{BASE}/status", persistent=False, v5=b.v5).start()
        message = wait_until(lambda: late.on("/status"), what="retained Last Will")[-1]
        assert (message.payload, message.retain) == (b"offline", True)
        late.stop()
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait(10)
        commander.stop()
        events.stop()
        status.stop()
    assert not [line for line in errors if b"Traceback" in line], b"".join(errors)[-2000:]
