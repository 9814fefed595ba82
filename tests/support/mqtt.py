"""A real MQTT client for the tests: collects what the agent publishes, sends commands.

sub = Subscriber(broker.port, "trace/v1/#")
sub.start()
wait_until(lambda: len(sub.events()) >= 10)
sub.stop()
"""

from __future__ import annotations

import json
import ssl
import threading
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.support.net import wait_until


class Subscriber:
    """A QoS 1 subscriber with a persistent session (it survives a broker restart)."""

    def __init__(
        self,
        port: int,
        *topics: str,
        client_id: str | None = None,
        tls: dict | None = None,
        persistent: bool = True,
        v5: bool = False,
    ) -> None:
        self.port = port
        self.topics = topics
        self.messages: list[mqtt.MQTTMessage] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id or f"test-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else not persistent,
        )
        if tls:
            self.client.tls_set(cert_reqs=ssl.CERT_REQUIRED, **tls)
        self.client.reconnect_delay_set(0.1, 1)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = self._on_message

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if not reason_code.is_failure:
            client.subscribe([(t, 1) for t in self.topics])

    def _on_message(self, client, userdata, message) -> None:
        with self.lock:
            self.messages.append(message)

    def start(self, timeout: float = 10) -> Subscriber:
        self.client.connect("127.0.0.1", self.port, keepalive=10)
        self.client.loop_start()
        if not self.subscribed.wait(timeout):
            raise TimeoutError("subscriber did not get its SUBACK")
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def on(self, suffix: str) -> list[mqtt.MQTTMessage]:
        """Messages whose topic ends with ``suffix``, in arrival order."""
        with self.lock:
            return [m for m in self.messages if m.topic.endswith(suffix)]

    def events(self) -> list[dict]:
        return [json.loads(m.payload) for m in self.on("/events")]

    def event_ids(self) -> set[str]:
        return {e["event_id"] for e in self.events()}


class Commander:
    """Sends commands to a device and waits for its reply (MQTT v5 or 3.1.1)."""

    def __init__(self, port: int, base: str, *, v5: bool = True) -> None:
        self.base = base
        self.v5 = v5
        self.replies = Subscriber(port, f"{base}/reply", persistent=False, v5=v5)
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"cmd-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        )

    def start(self) -> Commander:
        self.replies.start()
        self.client.connect("127.0.0.1", self.replies.port)
        self.client.loop_start()
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self.replies.stop()

    def send(self, name: str, payload: bytes | str | dict = b"", *, retain: bool = False, timeout: float = 10) -> dict:
        """Publish ``cmd/<name>`` with a fresh correlation id; return the matching reply."""
        correlation = uuid.uuid4().hex
        properties = None
        if isinstance(payload, dict):
            payload = dict(payload)
            if not self.v5:
                payload["correlation"] = correlation
            payload = json.dumps(payload)
        if self.v5:
            properties = Properties(PacketTypes.PUBLISH)
            properties.CorrelationData = correlation.encode()
        self.client.publish(f"{self.base}/cmd/{name}", payload, qos=1, retain=retain, properties=properties)
        return wait_until(lambda: self._reply(correlation), timeout=timeout, what=f"reply to {name}")

    def _reply(self, correlation: str) -> dict | None:
        for message in self.replies.on("/reply"):
            body = json.loads(message.payload)
            data = getattr(message.properties, "CorrelationData", None) if message.properties else None
            if body.get("correlation") == correlation or data == correlation.encode():
                return body
        return None
