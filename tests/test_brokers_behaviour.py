"""What each broker does differently, measured: the facts behind docs/brokers.md.

Each probe runs against a real broker started by the test (the same four as
:mod:`tests.test_brokers`) and is held against :data:`EXPECTED`, so a broker
upgrade that changes a behaviour fails here and the page gets corrected.
"""

from __future__ import annotations

import threading
import time
import uuid

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.test_brokers import BROKERS, Broker

#: Per broker: what the probes below find.
#: - shared: how many copies of 10 messages two ``$share/g/...`` subscribers get together
#:   (10: shared as MQTT 5 means; 0: taken as a plain topic filter that matches nothing);
#: - shared_granted: the QoS in the SUBACK for that ``$share`` subscription;
#: - qos2: the QoS the broker grants to a QoS 2 subscription;
#: - retained_cleared: an empty retained message removes the retained one;
#: - offline_queued: of 5 QoS 1 messages sent while a persistent session's client was away,
#:   how many it gets when it comes back;
#: - big_payload: a 2 MiB QoS 1 publish is acknowledged and delivered;
#: - no_subscriber_reason: the PUBACK's reason code for a message nobody subscribed to
#:   (MQTT 5 only; 3.1.1 has no reason codes: None);
#: - dot_in_topic: what a ``.`` in a topic level does (:func:`dot_in_topic`);
#: - v5_connect: the answer to an MQTT 5 CONNECT (:func:`v5_connect`).
EXPECTED = {
    "mosquitto-5": {
        "shared": 10,
        "shared_granted": 1,
        "qos2": 2,
        "retained_cleared": True,
        "offline_queued": 5,
        "big_payload": True,
        "no_subscriber_reason": 0x10,
        "dot_in_topic": "as-is",
        "v5_connect": "accepted",
    },
    "mosquitto-3.1.1": {
        "shared": 10,
        "shared_granted": 1,
        "qos2": 2,
        "retained_cleared": True,
        "offline_queued": 5,
        "big_payload": True,
        "no_subscriber_reason": None,
        "dot_in_topic": "as-is",
        "v5_connect": "accepted",
    },
    "nats-3.1.1": {
        "shared": 0,
        "shared_granted": 1,
        "qos2": 1,
        "retained_cleared": True,
        "offline_queued": 5,
        "big_payload": True,
        "no_subscriber_reason": None,
        "dot_in_topic": "publisher-dropped",
        "v5_connect": "Unsupported protocol version",
    },
    "rabbitmq-3.1.1": {
        "shared": 0,
        "shared_granted": 1,
        "qos2": 1,
        "retained_cleared": True,
        "offline_queued": 5,
        "big_payload": True,
        "no_subscriber_reason": None,
        "dot_in_topic": "dot-becomes-slash",
        "v5_connect": "closed",
    },
}
BIG = 2 * 1024 * 1024


class Client:
    """A paho client on the broker's protocol that records what it gets."""

    def __init__(
        self, broker: Broker, *topics: tuple[str, int], client_id: str | None = None, clean: bool = True
    ) -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self.granted: list[int] = []
        self.acks: dict[int, int] = {}
        self.ready = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id or f"probe-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5 if broker.v5 else mqtt.MQTTv311,
            clean_session=None if broker.v5 else clean,
        )
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(list(topics)) if topics else self.ready.set()
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = lambda c, u, m: self.messages.append(m)
        self.client.on_publish = lambda c, u, mid, rc, p: self.acks.__setitem__(mid, rc.value)
        properties = None
        if broker.v5 and not clean:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = 3600
        clean_start = clean if broker.v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY
        self.client.connect("127.0.0.1", broker.port, keepalive=10, clean_start=clean_start, properties=properties)
        self.client.loop_start()
        if not self.ready.wait(15):
            raise TimeoutError("no CONNACK/SUBACK")

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        self.granted = [rc.value for rc in reason_codes]
        self.ready.set()

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> int | None:
        """Publish with QoS 1; the PUBACK's reason code, or None if none came in 10 s."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        deadline = time.monotonic() + 10
        while info.mid not in self.acks and time.monotonic() < deadline and self.client.is_connected():
            time.sleep(0.02)
        return self.acks.get(info.mid)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def settle(seconds: float = 0.5) -> None:
    time.sleep(seconds)  # let late deliveries arrive before counting (counts, not timing, are asserted)


def probe(broker: Broker) -> dict:
    found: dict = {}
    topic = f"probe/{uuid.uuid4().hex[:6]}"
    pub = Client(broker)
    try:
        # Shared subscriptions.
        try:
            subs = [Client(broker, (f"$share/g/{topic}/shared", 1)) for _ in range(2)]
        except (TimeoutError, OSError):
            found["shared"], found["shared_granted"] = 0, None
        else:
            for n in range(10):
                pub.publish(f"{topic}/shared", b"%d" % n)
            settle()
            found["shared"] = sum(len(s.messages) for s in subs)
            found["shared_granted"] = subs[0].granted[0]
            for s in subs:
                s.stop()
        # QoS 2 asked, granted?
        q2 = Client(broker, (f"{topic}/q2", 2))
        found["qos2"] = q2.granted[0]
        q2.stop()
        # An empty retained message clears the retained one.
        pub.publish(f"{topic}/retained", b"x", retain=True)
        pub.publish(f"{topic}/retained", b"", retain=True)
        settle(0.3)
        late = Client(broker, (f"{topic}/retained", 1))
        settle()
        found["retained_cleared"] = not [m for m in late.messages if m.payload]
        late.stop()
        # The PUBACK for a message nobody subscribed to.
        reason = pub.publish(f"{topic}/nobody", b"x")
        found["no_subscriber_reason"] = reason if broker.v5 else None
        # QoS 1 messages kept for a persistent session while its client is away.
        client_id = f"away-{uuid.uuid4().hex[:6]}"
        away = Client(broker, (f"{topic}/away", 1), client_id=client_id, clean=False)
        away.stop()
        for n in range(5):
            pub.publish(f"{topic}/away", b"%d" % n)
        back = Client(broker, (f"{topic}/away", 1), client_id=client_id, clean=False)
        settle()
        found["offline_queued"] = len({m.payload for m in back.messages})
        back.stop()
        # A 2 MiB message (a whole manifest command is at most 1 MiB).
        big_sub = Client(broker, (f"{topic}/big", 1))
        acked = pub.publish(f"{topic}/big", b"b" * BIG)
        settle()
        found["big_payload"] = (
            acked is not None and acked < 0x80 and any(len(m.payload) == BIG for m in big_sub.messages)
        )
        big_sub.stop()
    finally:
        pub.stop()
    found["dot_in_topic"] = dot_in_topic(broker, topic)
    found["v5_connect"] = v5_connect(broker.port)
    return found


def dot_in_topic(broker: Broker, topic: str) -> str:
    """What a ``.`` in a topic level does: ``as-is``, ``dot-becomes-slash`` or ``publisher-dropped``."""
    sub = Client(broker, (f"{topic}/#", 1))
    pub = Client(broker)
    try:
        pub.publish(f"{topic}/a.b/c", b"x")
        settle()
        if not pub.client.is_connected():
            return "publisher-dropped"
        topics = [m.topic for m in sub.messages]
        return (
            "as-is"
            if topics == [f"{topic}/a.b/c"]
            else "dot-becomes-slash"
            if topics == [f"{topic}/a/b/c"]
            else str(topics)
        )
    finally:
        pub.stop()
        sub.stop()


def v5_connect(port: int) -> str:
    """An MQTT 5 CONNECT: ``accepted``, the CONNACK's refusal, or ``closed`` (no CONNACK)."""
    answers: list[str] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"v5-{uuid.uuid4().hex[:6]}", protocol=mqtt.MQTTv5)
    client.on_connect = lambda c, u, f, rc, p: answers.append("accepted" if not rc.is_failure else str(rc))
    client.connect("127.0.0.1", port, keepalive=10)
    deadline = time.monotonic() + 5
    while not answers and time.monotonic() < deadline and client.loop(0.1) == mqtt.MQTT_ERR_SUCCESS:
        pass
    client.disconnect()
    return answers[0] if answers else "closed"


@pytest.mark.parametrize("kind", BROKERS)
def test_broker_behaviour_is_as_docs_brokers_md_says(tmp_path, kind):
    broker = Broker(kind, tmp_path)
    try:
        found = probe(broker)
    finally:
        broker.stop()
    print(kind, found)
    assert found == EXPECTED[kind]
