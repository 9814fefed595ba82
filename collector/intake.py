"""The collector's MQTT client: subscribe, hand messages to the writer, acknowledge after the commit.

Messages are acknowledged by hand (paho's ``manual_ack``), and only once the batch
that holds them is committed: a collector killed before its commit has acknowledged
nothing, so the broker sends those messages again (its session outlives the
connection by :data:`SESSION_EXPIRY_S`).

Shared subscriptions (``$share/<group>/...``: collectors of one group split the messages
between them) only where the broker is known to have them: connected with MQTT v5, and
the CONNACK's "Shared Subscription Available" does not say 0. NATS 2.9 and RabbitMQ 3.10
speak MQTT 3.1.1 only, and grant a ``$share`` subscription and then deliver nothing on
it (docs/brokers.md): there the collector subscribes plainly, alone. ``shared="always"``
or ``"never"`` overrides the choice (mosquitto also shares under 3.1.1); the log says
which was made (:func:`choose_share`).

    intake = Intake(Broker("127.0.0.1", 1883), client_id="collector-1")
    intake.start()
    batch = intake.take(2000, timeout=0.2)   # writer thread
    intake.ack(batch)                         # after the commit
"""

from __future__ import annotations

import logging
import queue
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .topics import subscriptions

log = logging.getLogger(__name__)

#: The broker keeps the collector's session (subscriptions, unacknowledged messages) this long.
SESSION_EXPIRY_S = 24 * 3600
#: Messages the broker may have sent and not had acknowledged (MQTT v5 Receive Maximum):
#: what one collector may hold between receiving and committing.
RECEIVE_MAXIMUM = 20_000
#: How a collector subscribes: shared where the broker says it can ("auto"), or as told.
SHARED_MODES = ("auto", "always", "never")


def choose_share(mode: str, group: str | None, *, v5: bool, available: int | None) -> tuple[str | None, str]:
    """The shared-subscription group to subscribe in (None: plainly), and why, for the log.

    ``available``: the CONNACK's Shared Subscription Available (None: not sent, which
    in MQTT v5 means available).

    >>> choose_share("auto", "collectors", v5=True, available=None)
    ('collectors', 'MQTT 5 and the broker did not say it has no shared subscriptions')
    >>> choose_share("auto", "collectors", v5=True, available=0)
    (None, 'the broker says Shared Subscription Available = 0')
    >>> choose_share("auto", "collectors", v5=False, available=None)[0] is None
    True
    >>> choose_share("always", "collectors", v5=False, available=None)
    ('collectors', 'shared subscriptions forced (--shared always)')
    """
    if mode not in SHARED_MODES:
        raise ValueError(f"shared must be one of {', '.join(SHARED_MODES)}, not {mode!r}")
    if not group or mode == "never":
        return None, "shared subscriptions turned off"
    if mode == "always":
        return group, "shared subscriptions forced (--shared always)"
    if not v5:
        return (
            None,
            "MQTT 3.1.1: no way to know the broker shares (NATS and RabbitMQ grant $share, then deliver nothing)",
        )
    if available == 0:
        return None, "the broker says Shared Subscription Available = 0"
    return group, "MQTT 5 and the broker did not say it has no shared subscriptions"


@dataclass(frozen=True)
class Broker:
    """Where and how to connect, as the agent's ``[mqtt]`` says it."""

    host: str = "127.0.0.1"
    port: int = 1883
    tls: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    username: str = ""
    password: str | None = None
    keepalive_s: int = 30
    v5: bool = True


@dataclass(frozen=True)
class Message:
    """One message received: what the writer needs, and what its acknowledgement needs."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    connection: int  # which connection it came on: a mid means nothing on another one
    verdict: object = None  # what ``check(topic, payload)`` said of it, on paho's thread


class Intake:
    """The paho client and the queue between its thread and the writer.

    Threads: paho's network thread runs the callbacks, runs ``check(topic, payload)``
    on each message (JSON and hash: this way it runs while the writer waits on
    PostgreSQL, not in series with it) and puts messages on the queue. :meth:`take`
    and :meth:`ack` are for the writer thread; :meth:`publish`
    for any thread. ``on_connect()`` runs on paho's thread after each (re)connection.
    """

    def __init__(
        self,
        broker: Broker,
        *,
        client_id: str,
        prefix: str = "trace/v1",
        share: str | None = "collectors",
        shared: str = "auto",
        receive_maximum: int = RECEIVE_MAXIMUM,
        on_connect: Callable[[], None] = lambda: None,
        check: Callable[[str, bytes], object] = lambda topic, payload: None,
    ) -> None:
        self.broker = broker
        self.client_id = client_id
        self.prefix = prefix
        choose_share(shared, share, v5=broker.v5, available=None)  # a bad mode fails here, not on paho's thread
        self.share = share
        self.shared = shared
        #: The group subscribed in at the last connection (None: plainly); set on paho's thread.
        self.group: str | None = None
        self.on_connect = on_connect
        self.check = check
        self.receive_maximum = receive_maximum
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self._queue: queue.SimpleQueue[Message] = queue.SimpleQueue()
        self._connection = 0
        self._lock = threading.Lock()  # _connection, between paho's thread and ack()
        self.client = self._make_client()

    def _make_client(self) -> mqtt.Client:
        b = self.broker
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5 if b.v5 else mqtt.MQTTv311,
            clean_session=None if b.v5 else False,
            manual_ack=True,
        )
        if b.tls:
            client.tls_set(
                ca_certs=b.ca_file or None,
                certfile=b.cert_file or None,
                keyfile=b.key_file or None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        if b.username:
            client.username_pw_set(b.username, b.password)
        client.max_queued_messages_set(0)
        client.max_inflight_messages_set(100)
        client.reconnect_delay_set(0.2, 5)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    def start(self) -> None:
        """Connect (in the background: paho reconnects by itself from then on)."""
        properties = None
        if self.broker.v5:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = SESSION_EXPIRY_S
            properties.ReceiveMaximum = self.receive_maximum
        self.client.connect_async(
            self.broker.host,
            self.broker.port,
            keepalive=self.broker.keepalive_s,
            clean_start=False if self.broker.v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            properties=properties,
        )
        self.client.loop_start()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            hint = ""
            if self.broker.v5 and "protocol version" in str(reason_code).lower():
                hint = " (NATS and RabbitMQ speak MQTT 3.1.1 only: run with --mqtt311)"
            log.warning(
                "MQTT broker %s:%d refused the connection: %s%s", self.broker.host, self.broker.port, reason_code, hint
            )
            return
        with self._lock:
            self._connection += 1
        available = getattr(properties, "SharedSubscriptionAvailable", None) if self.broker.v5 else None
        self.group, why = choose_share(self.shared, self.share, v5=self.broker.v5, available=available)
        if self.group:
            log.info("subscribing shared, in group %r: %s", self.group, why)
        else:
            log.info("subscribing plainly, alone: %s", why)
        client.subscribe([(t, 1) for t in subscriptions(self.prefix, self.group)])
        log.info("connected to %s:%d (session present: %s)", self.broker.host, self.broker.port, flags.session_present)
        self.connected.set()
        self.on_connect()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        self.subscribed.clear()
        log.warning("disconnected from %s:%d: %s", self.broker.host, self.broker.port, reason_code)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        refused = [rc for rc in reason_codes if rc.is_failure]
        if refused:
            log.error("subscriptions refused: %s", refused)
        else:
            log.info("subscribed")
        self.subscribed.set()

    def _on_message(self, client, userdata, message: mqtt.MQTTMessage) -> None:
        topic, payload = message.topic, message.payload
        verdict = self.check(topic, payload)
        self._queue.put(Message(topic, payload, message.mid, message.qos, self._connection, verdict))

    def take(self, most: int, timeout: float) -> list[Message]:
        """Up to ``most`` messages: waits ``timeout`` for the first, then takes what is already there."""
        try:
            batch = [self._queue.get(timeout=timeout)]
        except queue.Empty:
            return []
        while len(batch) < most:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def ack(self, messages: list[Message]) -> None:
        """Acknowledge messages now committed. Those that came on an earlier connection are left:
        the broker sends them again (and the store takes them as copies)."""
        with self._lock:
            current = self._connection
        for m in messages:
            if m.qos > 0 and m.connection == current:
                self.client.ack(m.mid, m.qos)

    def publish(self, topic: str, body: dict, *, retain: bool = False) -> None:
        """Publish ``body`` as JSON with QoS 1 (paho queues it while disconnected)."""
        self.client.publish(topic, orjson.dumps(body), qos=1, retain=retain)
