"""The MQTT connection: the paho client and ``uplink-net``, the one thread that drives it.

uplink-net connects, reconnects with exponential backoff and jitter (to the
next of ``[mqtt] hosts`` after each failure, when there are several), reads and
writes the socket, keeps the connection alive, and fills the window with ready
events. paho's callbacks all run on it.

It drives paho through paho's API for an outside event loop (``socket()``,
``loop_read()``, ``loop_write()``, ``loop_misc()``) rather than ``loop()``,
so that it can also wait on a wake-up socket of its own: with nothing to send
it sleeps until a new event is ready (:meth:`Connection.wake`) or the
keepalive needs it, instead of polling.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import logging
import random
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.config import MqttConfig

from .health import Counters
from .topics import Topics
from .window import Window

log = logging.getLogger(__name__)

#: A v5 session outlives a disconnection by this long, so commands sent meanwhile wait.
SESSION_EXPIRY_S = 24 * 3600
#: First reconnect delay; doubles up to ``backoff_max_s``.
BACKOFF_MIN_S = 0.5
#: A connection that lasted this long resets the backoff.
STABLE_S = 10.0
#: While events are in flight or ready, uplink-net looks for more to send at
#: least this often (a safety net: whoever makes events ready wakes it).
PUMP_S = 0.05
#: ... and this often while it has room in the window but the uplink thread is
#: still reading the backlog, rather than waking for every batch it reads.
STARVED_PUMP_S = 0.002
#: A subscription the broker refused (NATS under load answers 0x80) is asked for again after this.
RESUBSCRIBE_S = 5.0
#: :meth:`Connection.send_tracked` messages awaiting a PUBACK kept at most (the oldest forgotten).
MAX_TRACKED = 10_000
#: With nothing in flight or ready, uplink-net sleeps this long unless woken:
#: paho's keepalive needs it (``loop_misc()`` pings a quiet broker and notices
#: a silent one). paho's own ``loop_forever()`` wakes as often.
IDLE_S = 1.0


class _PahoLog(logging.LoggerAdapter):
    """paho's log, under ``agent.sinks.uplink.paho``; its errors go to ``on_error`` instead.

    Given to paho instead of an ``on_log`` callback: paho formats every line
    for ``on_log``, two per event, while a logger formats only what it emits.
    paho logs on whichever thread calls it, so ``on_error`` may run on any.
    """

    def __init__(self, on_error: Callable[[str], None]) -> None:
        super().__init__(logging.getLogger(f"{__package__}.paho"))
        self.on_error = on_error

    def log(self, level: int, msg: object, *args, **kwargs) -> None:
        # paho guards an on_log callback but not a logger: nothing may escape into its loop.
        try:
            if level >= logging.ERROR:
                self.on_error(str(msg) % args if args else str(msg))
            else:
                super().log(level, msg, *args, **kwargs)
        except Exception:
            log.exception("could not log a paho message %r", msg)


class Connection:
    """The paho client, and the body of uplink-net that drives it.

    Threads: :meth:`run` is uplink-net, and paho calls its callbacks there,
    which call ``on_ready()`` (connected and subscribed), ``on_command(message)``,
    ``on_receipt(message)`` (a message on ``{p}/receipt``, subscribed only when
    ``on_receipt`` is given) and the window's uplink-net methods. :meth:`wake`, :meth:`send`,
    :meth:`send_tracked`, :meth:`say_offline`, :meth:`stop` and :attr:`connected` may be used from
    any thread: paho queues what they publish, and uplink-net writes it.

        connection = Connection(config, client_id="kiosk-7", topics=topics, window=window)
        threading.Thread(target=connection.run, name="uplink-net").start()
        ...
        connection.stop()
    """

    #: ``on_peer_event(message)``: the site's stations' events, document events and status
    #: (``{prefix}/{site}/+/events``, ``+/documents``, ``+/status``, subscribed only when this
    #: is set before :meth:`run`: ``[site] peers``); uplink-net.
    on_peer_event: Callable[[mqtt.MQTTMessage], None] | None = None
    #: ``on_tracked_ack(token, reason_code)``: the PUBACK of a :meth:`send_tracked` message; uplink-net.
    on_tracked_ack: Callable[[object, mqtt.ReasonCode], None] | None = None

    def __init__(
        self,
        config: MqttConfig,
        *,
        client_id: str,
        topics: Topics,
        window: Window,
        counters: Counters | None = None,
        on_ready: Callable[[], None] = lambda: None,
        on_command: Callable[[mqtt.MQTTMessage], None] = lambda message: None,
        on_receipt: Callable[[mqtt.MQTTMessage], None] | None = None,
    ) -> None:
        self.config = config
        self.client_id = client_id
        self.topics = topics
        self.window = window
        self.counters = counters or Counters()
        self.on_ready = on_ready
        self.on_command = on_command
        self.on_receipt = on_receipt
        self.v5 = config.protocol == "5"
        self._connected = threading.Event()  # connected and subscribed
        self._stopping = threading.Event()
        self._backoff = BACKOFF_MIN_S
        self._connected_at = 0.0
        # [mqtt] hosts (or host/port alone): tried in turn, one step on after each failure.
        self._hosts = config.endpoints()
        self._host_index = 0
        self._thread: int | None = None  # uplink-net's ident, once it runs
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        # send_tracked(): queued by any thread, published by uplink-net, which alone keeps
        # the mids, so a PUBACK (handled on uplink-net too) never comes before its mid is known.
        self._tracked_out: collections.deque[tuple[str, bytes, object]] = collections.deque()
        self._tracked: collections.OrderedDict[int, object] = collections.OrderedDict()
        # uplink-net only: the subscriptions asked for at connect, and any refused ones to ask again.
        self._subscribed: list[tuple[str, int]] = []
        self._connect_mid: int | None = None
        self._refused: list[tuple[str, int]] = []
        self._resubscribe_at: float | None = None
        self.client = self._make_client()
        # The window picks each event's topic: {p}/events or {p}/documents.
        self._publish_event = functools.partial(self.client.publish, qos=1)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def broker(self) -> str:
        """The broker uplink-net is connected to, or trying next, as ``host:port``."""
        return _host_port(*self._hosts[self._host_index])

    # -- any thread ------------------------------------------------------------------

    def wake(self) -> None:
        """Make uplink-net look at once for events to send and packets to write."""
        wake_w = self._wake_w
        if wake_w is not None:
            with contextlib.suppress(OSError):  # full (a wake-up is pending anyway) or closed
                wake_w.send(b"\0")

    def send(self, topic: str, body: dict, properties: Properties | None = None) -> None:
        """Publish ``body`` as JSON with QoS 1 (health, replies)."""
        payload = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
        self.client.publish(topic, payload, qos=1, properties=properties)

    def send_tracked(self, topic: str, payload: bytes, token: object) -> None:
        """Publish ``payload`` with QoS 1 once connected, and tell ``on_tracked_ack(token, reason)``
        its PUBACK (alarms). Nothing is promised on a connection lost: the caller sends again."""
        self._tracked_out.append((topic, payload, token))
        self.wake()

    def say_offline(self, timeout: float) -> None:
        """Publish the retained ``offline`` status and wait up to ``timeout`` for its PUBACK."""
        info = self.client.publish(self.topics.status, "offline", qos=1, retain=True)
        with contextlib.suppress(RuntimeError, ValueError):
            info.wait_for_publish(timeout)

    def stop(self) -> None:
        """Disconnect and end :meth:`run`; no reconnecting after this."""
        self._stopping.set()
        self.client.disconnect()
        self.wake()

    # -- uplink-net ------------------------------------------------------------------

    def run(self) -> None:
        """Connect, serve, and reconnect with backoff, until :meth:`stop`."""
        self._thread = threading.get_ident()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        try:
            self._connect_until_stopped()
        finally:
            wake_r, wake_w = self._wake_r, self._wake_w
            self._wake_r = self._wake_w = None
            wake_r.close()
            wake_w.close()

    def _make_client(self) -> mqtt.Client:
        cfg = self.config
        protocol = mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=protocol,
            clean_session=None if self.v5 else False,
        )
        # Our window is the limit; paho never needs to queue behind it.
        client.max_inflight_messages_set(cfg.max_inflight)
        client.will_set(self.topics.status, "offline", qos=1, retain=True)
        if cfg.tls:
            client.tls_set(
                ca_certs=cfg.ca_file or None,
                certfile=cfg.cert_file or None,
                keyfile=cfg.key_file or None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        if cfg.username:
            client.username_pw_set(cfg.username, cfg.password())
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        # With this set, paho leaves every write to uplink-net: a publish from
        # another thread only queues the packet and calls it.
        client.on_socket_register_write = self._on_write_wanted
        client.enable_logger(_PahoLog(self._paho_error))
        return client

    def _connect_until_stopped(self) -> None:
        cfg = self.config
        properties = None
        if self.v5:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = SESSION_EXPIRY_S
        while not self._stopping.is_set():
            host, port = self._hosts[self._host_index]
            try:
                self.client.connect(
                    host,
                    port,
                    keepalive=cfg.keepalive_s,
                    clean_start=False if self.v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
                    properties=properties,
                )
            except (OSError, ssl.SSLError, ValueError) as problem:
                self.counters.connection_errors += 1
                log.warning("MQTT broker %s unreachable: %s", _host_port(host, port), problem)
            else:
                self._serve()
            if not self._stopping.is_set() and len(self._hosts) > 1:
                # Failover: the next host, after the same backoff. The new node may not
                # have our session: _on_connect subscribes again, paho sends again what
                # it had in flight, and the window walks the outbox from the oldest, so
                # every unacknowledged event goes out again (consumers drop duplicates
                # by event_id).
                self._host_index = (self._host_index + 1) % len(self._hosts)
                log.info("MQTT: trying %s next", self.broker)
            if self._connected_at and time.monotonic() - self._connected_at >= STABLE_S:
                # Only a connection that held resets the backoff: a broker that
                # accepts and then drops us at once (e.g. on an ACL denial) must
                # not be hammered.
                self._backoff = BACKOFF_MIN_S
            self._connected_at = 0.0
            self._connected.clear()
            if self._stopping.is_set():
                return
            # Full jitter over the upper half, so a region's kiosks do not reconnect in step.
            delay = random.uniform(self._backoff / 2, self._backoff)
            self._backoff = min(self._backoff * 2, cfg.backoff_max_s)
            self._stopping.wait(delay)

    def _serve(self) -> None:
        """Fill the window and drive paho until the connection drops or stop() is called."""
        while not self._stopping.is_set():
            starved = False
            if self._connected.is_set():
                if self._tracked_out:
                    self._publish_tracked()
                if self._resubscribe_at is not None and time.monotonic() >= self._resubscribe_at:
                    self._resubscribe()
                starved = self.window.fill(self._publish_event)
            if starved:
                timeout = STARVED_PUMP_S
            elif self.window.sending:
                timeout = PUMP_S
            else:
                timeout = IDLE_S
            if self._resubscribe_at is not None:
                timeout = max(0.0, min(timeout, self._resubscribe_at - time.monotonic()))
            if self._turn(timeout) != mqtt.MQTT_ERR_SUCCESS:
                break

    def _publish_tracked(self) -> None:
        while self._tracked_out:
            topic, payload, token = self._tracked_out.popleft()
            info = self.client.publish(topic, payload, qos=1)
            if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
                continue  # the caller sends it again when no PUBACK comes
            self._tracked[info.mid] = token
            while len(self._tracked) > MAX_TRACKED:
                self._tracked.popitem(last=False)  # long unanswered: sent again by the caller anyway

    def _turn(self, timeout: float) -> mqtt.MQTTErrorCode:
        """One turn of paho's own ``loop()``, with our wake-up socket beside paho's."""
        client = self.client
        sock = client.socket()
        if sock is None:
            return mqtt.MQTT_ERR_NO_CONN
        # TLS may hold bytes already decrypted, which select() cannot see.
        pending = sock.pending() if hasattr(sock, "pending") else 0
        wlist = [sock] if client.want_write() else []
        try:
            readable, _, _ = select.select([sock, self._wake_r], wlist, [], 0.0 if pending else timeout)
        except (TypeError, ValueError, OSError):
            return mqtt.MQTT_ERR_CONN_LOST  # the socket was closed under us
        if self._wake_r in readable:
            with contextlib.suppress(BlockingIOError):
                self._wake_r.recv(4096)
        if sock in readable or pending:
            rc = client.loop_read()
            if rc or client.socket() is None:
                return rc
        if client.want_write():
            # Written whether or not select() said so: a packet queued while it
            # waited is not in wlist; a socket that cannot take it says so.
            rc = client.loop_write()
            if rc or client.socket() is None:
                return rc
        return client.loop_misc()

    def _on_write_wanted(self, client, userdata, sock) -> None:
        if threading.get_ident() != self._thread:  # uplink-net writes at the end of its turn anyway
            self.wake()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("MQTT broker refused the connection: %s", reason_code)
            return
        log.info("MQTT connected to %s as %s", self.broker, self.client_id)
        self.counters.broker = self.broker
        self._connected_at = time.monotonic()
        # Subscribe first: the broker handles one client's packets in order, so
        # whoever sees "online" can already send commands.
        topics = [(self.topics.commands, 1)]
        if self.on_receipt is not None:
            topics.append((self.topics.receipt, 1))
        if self.on_peer_event is not None:
            # Documents too: their seqs count, or every document would look like a gap.
            # Status: a peer's ``online`` is when to ask it for what this station missed; a
            # hint (retained, and the asks back it up), so QoS 0: on NATS each QoS 1
            # subscription is a JetStream consumer, the broker's dearest part.
            topics += [(self.topics.site_events, 1), (self.topics.site_documents, 1), (self.topics.site_status, 0)]
        self._subscribed, self._refused, self._resubscribe_at = topics, [], None
        self._connect_mid = client.subscribe(topics)[1]
        client.publish(self.topics.status, "online", qos=1, retain=True)
        self.window.restart()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        # Drain only once the broker has answered status and subscription: a
        # broker that drops us on a refused publish then still sends its
        # refusal (mosquitto 2.0 discards replies it had queued when it does).
        first = mid == self._connect_mid
        asked = self._subscribed if first else self._refused
        refused = [topic for topic, reason in zip(asked, reason_codes, strict=False) if reason.is_failure]
        for name, _ in refused:
            log.error("broker refused the subscription %s; asking again in %.0f s", name, RESUBSCRIBE_S)
        self._refused = refused
        self._resubscribe_at = time.monotonic() + RESUBSCRIBE_S if refused else None
        if first:
            self._connected.set()
            self.on_ready()

    def _resubscribe(self) -> None:
        """Ask again for the subscriptions the broker refused (uplink-net)."""
        self._resubscribe_at = None
        if self._refused:
            self.client.subscribe(self._refused)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self._connected.is_set() and not self._stopping.is_set():
            log.warning("MQTT disconnected: %s; events stay in the outbox", reason_code)
        self._connected.clear()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        if self.window.acknowledged(mid, reason_code):
            return
        token = self._tracked.pop(mid, None)
        if token is not None and self.on_tracked_ack is not None:
            self.on_tracked_ack(token, reason_code)
        elif reason_code.is_failure:
            # A status, health or reply message refused by the broker's ACL, say:
            # surfaced like a refused event.
            self.counters.refused_publishes += 1
            log.warning("broker refused a status/health/reply publish: %s (0x%02x)", reason_code, reason_code.value)

    def _on_message(self, client, userdata, message) -> None:
        if message.topic == self.topics.receipt:
            if self.on_receipt is not None:
                self.on_receipt(message)
        elif self.on_peer_event is not None and not message.topic.startswith(self.topics.base + "/cmd/"):
            self.on_peer_event(message)
        else:
            self.on_command(message)

    def _paho_error(self, message: str) -> None:
        # With TLS 1.3 a broker refuses a certificate (expired, unknown CA) after
        # the handshake, on the first read; paho reports that only in its log.
        self.counters.connection_errors += 1
        log.warning("MQTT connection to %s failed: %s", self.broker, message)


def _host_port(host: str, port: int) -> str:
    """``host:port``, an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
