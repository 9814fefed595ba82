"""The uplink: drains the ledger's outbox to the regional MQTT broker, and takes commands.

The outbox in SQLite is the source of truth; paho's own queue is only a window
onto it. An event counts as delivered only when its PUBACK arrives with a
success reason code; then, and only then, a row goes into ``deliveries``. A
failure code (MQTT v5 "not authorized", "quota exceeded", ...) is logged,
counted and retried later. Restarting resumes from the outbox, so nothing is
lost; a resent event keeps its ``event_id``, so duplicates can be dropped.

Two threads, neither of them the pipeline's: ``uplink-net`` owns the paho
connection (connect, reconnect with exponential backoff and jitter), and
``uplink`` owns the uplink's own ledger connection (reads the outbox, records
deliveries, answers commands, sends health). As a pipeline sink,
:meth:`Uplink.decided` only notes the new event and wakes the ``uplink``
thread, so a dead broker never slows a scan.

Topics, with ``{p}`` = ``{topic_prefix}/{site}/{device}``: ``{p}/events``,
``{p}/status`` (retained ``online``/``offline``, ``offline`` as the Will),
``{p}/health``, ``{p}/cmd/#`` (in) and ``{p}/reply`` (out).

>>> Topics("trace/v1", "site-01", "kiosk-7").events
'trace/v1/site-01/kiosk-7/events'
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import random
import sqlite3
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.clock import iso
from agent.config import MqttConfig
from agent.events import encode, event_from_row
from agent.ledger import MOVEMENTS, VERDICTS, Decision
from agent.outbox import Outbox

log = logging.getLogger(__name__)

#: A v5 session outlives a disconnection by this long, so commands sent meanwhile wait.
SESSION_EXPIRY_S = 24 * 3600
#: Commands bigger than this are refused unread.
MAX_COMMAND_BYTES = 4096
#: Operator and bill ids longer than this are refused.
MAX_FIELD_CHARS = 64
#: First reconnect delay; doubles up to ``backoff_max_s``.
BACKOFF_MIN_S = 0.5
#: A connection that lasted this long resets the backoff.
STABLE_S = 10.0
#: Even with nothing to retry, walk the whole outbox this often (a safety net).
RESCAN_S = 60.0
COMMANDS = ("set", "health", "reload")


@dataclass(frozen=True)
class Topics:
    """The device's topics under ``{prefix}/{site}/{device}``."""

    prefix: str
    site: str
    device: str

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.site}/{self.device}"

    @property
    def events(self) -> str:
        return f"{self.base}/events"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def health(self) -> str:
        return f"{self.base}/health"

    @property
    def commands(self) -> str:
        return f"{self.base}/cmd/#"

    @property
    def reply(self) -> str:
        return f"{self.base}/reply"


class CommandError(Exception):
    """A command that is refused; the message goes back in the error reply."""


class Uplink:
    """Publishes the outbox, status and health; answers commands.

    ``set_context`` is :meth:`agent.pipeline.Pipeline.set_context`; ``reload``
    re-reads the config and returns what it applied and what needs a restart
    (raising :class:`ValueError` for a bad config); ``scanners`` returns
    ``{name: connected}`` for the health report.

        uplink = Uplink(cfg.mqtt, db_path=..., device_id="kiosk-7", site_id="site-01")
        pipeline.sinks.append(uplink)
        uplink.start()
        ...
        uplink.stop()
    """

    def __init__(
        self,
        config: MqttConfig,
        *,
        db_path: str | Path,
        device_id: str,
        site_id: str,
        set_context: Callable[..., None] | None = None,
        reload: Callable[[], dict] | None = None,
        scanners: Callable[[], dict[str, bool]] | None = None,
    ) -> None:
        self.config = config
        self.db_path = Path(db_path)
        self.device_id = device_id
        self.site_id = site_id
        self.topics = Topics(config.topic_prefix, site_id, device_id)
        self.set_context = set_context
        self.reload = reload
        self.scanners = scanners or (lambda: {})
        self.v5 = config.protocol == "5"
        self.client = self._make_client()

        # Counters since start (read by health; written by one thread each).
        self.started = time.monotonic()
        self.verdicts: dict[str, int] = dict.fromkeys((*VERDICTS, "fault"), 0)
        self.published = 0
        self.delivered = 0
        self.failures = 0
        self.connection_errors = 0
        self.last_puback: str | None = None

        self._connected = threading.Event()
        self._stopping = threading.Event()  # the network thread: stop reconnecting
        self._closing = threading.Event()  # the uplink thread: stop
        self._wake = threading.Event()
        self._live: collections.deque[int] = collections.deque(maxlen=10_000)
        self._acks: collections.deque[tuple[int, mqtt.ReasonCode]] = collections.deque()
        self._commands: collections.deque[mqtt.MQTTMessage] = collections.deque()
        self._inflight: dict[int, int] = {}  # paho mid -> scan id
        self._inflight_ids: set[int] = set()
        self._held: dict[int, float] = {}  # scan id refused by the broker -> monotonic retry time
        self._cursor = 0
        self._rescan_at = 0.0
        self._backoff = BACKOFF_MIN_S
        self._connected_at = 0.0
        self._last_failure_log = float("-inf")
        self._outbox: Outbox | None = None
        self._threads: list[threading.Thread] = []

    # -- the pipeline's side: must return at once ----------------------------

    def decided(self, decision: Decision) -> None:
        """Sink: count the verdict; if it made an event, wake the sender."""
        self.verdicts[decision.verdict] = self.verdicts.get(decision.verdict, 0) + 1
        if decision.scan_id is not None and decision.seq is not None:
            self._live.append(decision.scan_id)
            self._wake.set()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        """Start connecting and draining in the background; returns at once."""
        self._outbox = Outbox.open(self.db_path)
        for name, target in (("uplink-net", self._network), ("uplink", self._work)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, grace_s: float = 2.0) -> None:
        """Wait up to ``grace_s`` for PUBACKs in flight, say ``offline``, disconnect."""
        deadline = time.monotonic() + grace_s
        while self._inflight and self.connected and time.monotonic() < deadline:
            time.sleep(0.02)
        self._closing.set()
        self._wake.set()
        if self._threads:
            self._threads[1].join(grace_s + 5)
        if self.connected:
            info = self.client.publish(self.topics.status, "offline", qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(max(0.1, deadline - time.monotonic()))
        self._stopping.set()
        self.client.disconnect()
        if self._threads:
            self._threads[0].join(5)
        if self._outbox is not None:
            self._outbox.close()

    # -- connection (thread uplink-net) -----------------------------------------

    def _make_client(self) -> mqtt.Client:
        cfg = self.config
        protocol = mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.device_id,
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
            password = None
            if cfg.password_file:
                password = Path(cfg.password_file).read_text(encoding="utf-8").rstrip("\r\n")
            client.username_pw_set(cfg.username, password)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_log = self._on_log
        return client

    def _network(self) -> None:
        cfg = self.config
        properties = None
        if self.v5:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = SESSION_EXPIRY_S
        while not self._stopping.is_set():
            try:
                self.client.connect(
                    cfg.host,
                    cfg.port,
                    keepalive=cfg.keepalive_s,
                    clean_start=False if self.v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
                    properties=properties,
                )
            except (OSError, ssl.SSLError, ValueError) as problem:
                self.connection_errors += 1
                log.warning("MQTT broker %s:%d unreachable: %s", cfg.host, cfg.port, problem)
            else:
                while not self._stopping.is_set():
                    if self.client.loop(timeout=0.5) != mqtt.MQTT_ERR_SUCCESS:
                        break
            if self._connected.is_set() and time.monotonic() - self._connected_at >= STABLE_S:
                # Only a connection that held resets the backoff: a broker that
                # accepts and then drops us at once (e.g. on an ACL denial) must
                # not be hammered.
                self._backoff = BACKOFF_MIN_S
            self._connected.clear()
            if self._stopping.is_set():
                return
            # Full jitter over the upper half, so a region's kiosks do not reconnect in step.
            delay = random.uniform(self._backoff / 2, self._backoff)
            self._backoff = min(self._backoff * 2, cfg.backoff_max_s)
            self._stopping.wait(delay)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("MQTT broker refused the connection: %s", reason_code)
            return
        log.info("MQTT connected to %s:%d as %s", self.config.host, self.config.port, self.device_id)
        self._connected_at = time.monotonic()
        client.publish(self.topics.status, "online", qos=1, retain=True)
        client.subscribe(self.topics.commands, qos=1)
        self._rescan_at = 0.0  # walk the outbox again from the oldest

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        # Drain only once the broker has answered status and subscription: a
        # broker that drops us on a refused publish then still sends its
        # refusal (mosquitto 2.0 discards replies it had queued when it does).
        for reason in reason_codes:
            if reason.is_failure:
                log.error("broker refused the command subscription %s: %s", self.topics.commands, reason)
        self._connected.set()
        self._wake.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self._connected.is_set() and not self._stopping.is_set():
            log.warning("MQTT disconnected: %s; events stay in the outbox", reason_code)
        self._connected.clear()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        self._acks.append((mid, reason_code))
        self._wake.set()

    def _on_log(self, client, userdata, level, message) -> None:
        # With TLS 1.3 a broker refuses a certificate (expired, unknown CA) after
        # the handshake, on the first read; paho reports that only here.
        if level == mqtt.MQTT_LOG_ERR:
            self.connection_errors += 1
            log.warning("MQTT connection to %s:%d failed: %s", self.config.host, self.config.port, message)

    def _on_message(self, client, userdata, message) -> None:
        self._commands.append(message)
        self._wake.set()

    # -- draining (thread uplink) --------------------------------------------

    def _work(self) -> None:
        next_health = time.monotonic() + self.config.health_interval_s
        while True:
            self._wake.wait(0.5)
            self._wake.clear()
            try:
                self._settle_acks()
                if self._closing.is_set():
                    return
                self._run_commands()
                if self.connected:
                    self._fill_window()
                    if time.monotonic() >= next_health:
                        next_health = time.monotonic() + self.config.health_interval_s
                        self._send(self.topics.health, self.health())
            except sqlite3.Error as problem:
                log.error("uplink cannot use the ledger: %s; retrying", problem)
                self._closing.wait(1.0)
            except Exception:
                log.exception("uplink error; carrying on")
                self._closing.wait(1.0)

    def _settle_acks(self) -> None:
        """Turn PUBACKs into delivery records (one transaction per batch)."""
        delivered: dict[int, list[int]] = {}
        while self._acks:
            mid, reason = self._acks.popleft()
            scan_id = self._inflight.pop(mid, None)
            if scan_id is None:  # a status, health or reply message
                if reason.is_failure:
                    # Refused by the broker's ACL, say: as much a failure as a refused event.
                    self.failures += 1
                    log.warning("broker refused a status/health/reply publish: %s (0x%02x)", reason, reason.value)
                continue
            self._inflight_ids.discard(scan_id)
            if reason.is_failure:
                self._refused(scan_id, reason)
            else:
                delivered.setdefault(reason.value, []).append(scan_id)
        for code, scan_ids in delivered.items():
            self._outbox.mark_delivered(scan_ids, code)
            self.delivered += len(scan_ids)
        if delivered:
            self.last_puback = iso(datetime.now(UTC))

    def _refused(self, scan_id: int, reason: mqtt.ReasonCode) -> None:
        self.failures += 1
        retry_s = min(30.0, self.config.backoff_max_s)
        self._held[scan_id] = time.monotonic() + retry_s
        now = time.monotonic()
        if now - self._last_failure_log >= 10.0:
            self._last_failure_log = now
            log.warning(
                "broker refused event (scan id %d): %s (reason code 0x%02x); NOT delivered, retrying in %.0f s"
                " (%d refusals since start)",
                scan_id,
                reason,
                reason.value,
                retry_s,
                self.failures,
            )

    def _fill_window(self) -> None:
        """Publish live events first, then the backlog oldest first, up to ``max_inflight``."""
        free = self.config.max_inflight - len(self._inflight)
        live: list[int] = []
        while self._live and len(live) < free:
            scan_id = self._live.popleft()
            if scan_id not in self._inflight_ids and scan_id not in self._held:
                live.append(scan_id)
        for row in self._outbox.rows(live):
            free -= self._publish(row)
        now = time.monotonic()
        due = [scan_id for scan_id, at in self._held.items() if at <= now]
        if due or now >= self._rescan_at:
            for scan_id in due:
                del self._held[scan_id]
            self._cursor = 0
            self._rescan_at = now + RESCAN_S
        while free > 0:
            top = self._outbox.conn.execute("SELECT MAX(scan_id) FROM outbox").fetchone()[0] or 0
            limit = min(free + len(self._inflight_ids) + len(self._held), 2000)
            rows = self._outbox.pending(self._cursor, limit)
            for row in rows:
                self._cursor = row["id"]
                if row["id"] in self._inflight_ids or row["id"] in self._held:
                    continue
                free -= self._publish(row)
                if free <= 0:
                    return
            if len(rows) < limit:
                # Caught up: nothing undelivered beyond here except what is in flight.
                self._cursor = max(self._cursor, top)
                return

    def _publish(self, row: sqlite3.Row) -> int:
        info = self.client.publish(self.topics.events, encode(event_from_row(row)), qos=1)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            log.warning("could not queue event (scan id %d): %s", row["id"], mqtt.error_string(info.rc))
            return 0
        # NO_CONN: paho keeps the message and sends it after reconnecting.
        self._inflight[info.mid] = row["id"]
        self._inflight_ids.add(row["id"])
        self.published += 1
        return 1

    def _send(self, topic: str, body: dict, properties: Properties | None = None) -> None:
        payload = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
        self.client.publish(topic, payload, qos=1, properties=properties)

    # -- health ----------------------------------------------------------------

    def health(self) -> dict:
        """The heartbeat published on ``{p}/health`` (and in reply to ``cmd/health``)."""
        oldest = self._outbox.oldest_pending_ts()
        age = None
        if oldest is not None:
            recorded = datetime.fromisoformat(oldest.replace("Z", "+00:00"))
            age = round((datetime.now(UTC) - recorded).total_seconds(), 3)
        scanners = dict(self.scanners())
        return {
            "ts": iso(datetime.now(UTC)),
            "device_id": self.device_id,
            "site_id": self.site_id,
            "uptime_s": round(time.monotonic() - self.started, 3),
            "outbox_depth": self._outbox.depth(),
            "oldest_undelivered_age_s": age,
            "verdicts": dict(self.verdicts),
            "scanners": scanners,
            "scanners_connected": sum(1 for up in scanners.values() if up),
            "last_puback": self.last_puback,
            "published": self.published,
            "delivered": self.delivered,
            "delivery_failures": self.failures,
            "connection_errors": self.connection_errors,
            "db_bytes": self._outbox.db_bytes(),
        }

    # -- commands ----------------------------------------------------------------

    def _run_commands(self) -> None:
        while self._commands:
            self._answer(self._commands.popleft())

    def _answer(self, message: mqtt.MQTTMessage) -> None:
        name = message.topic.removeprefix(self.topics.base + "/cmd/")
        correlation_data = getattr(message.properties, "CorrelationData", None) if message.properties else None
        correlation = None
        try:
            if len(message.payload) > MAX_COMMAND_BYTES:
                raise CommandError(f"command is {len(message.payload)} bytes; at most {MAX_COMMAND_BYTES} allowed")
            try:
                body = json.loads(message.payload or b"{}")
            except (ValueError, UnicodeDecodeError) as problem:
                raise CommandError(f"payload is not JSON: {problem}") from None
            if not isinstance(body, dict):
                raise CommandError("payload must be a JSON object")
            correlation = body.pop("correlation", None)
            if message.retain:
                raise CommandError("retained command refused: commands must be sent live, not retained")
            if name not in COMMANDS:
                raise CommandError(f"unknown command {name!r}; known: {', '.join(COMMANDS)}")
            result = getattr(self, f"_cmd_{name}")(body)
        except CommandError as problem:
            log.warning("command %s refused: %s", name, problem)
            reply = {"command": name, "ok": False, "error": str(problem)}
        else:
            log.info("command %s done", name)
            reply = {"command": name, "ok": True, "result": result}
        reply["correlation"] = correlation
        properties = None
        if self.v5 and correlation_data is not None:
            properties = Properties(PacketTypes.PUBLISH)
            properties.CorrelationData = correlation_data
        self._send(self.topics.reply, reply, properties)

    def _cmd_set(self, body: dict) -> dict:
        allowed = ("movement", "operator", "bill")
        unknown = sorted(set(body) - set(allowed))
        if unknown or not body:
            raise CommandError(f"set takes one or more of {', '.join(allowed)}; got {', '.join(unknown) or 'none'}")
        for key, value in body.items():
            if not isinstance(value, str):
                raise CommandError(f"{key} must be a string")
            if key == "movement" and value not in MOVEMENTS:
                raise CommandError(f"movement {value!r} is not allowed; allowed: {', '.join(MOVEMENTS)}")
            if len(value) > MAX_FIELD_CHARS or not value.isprintable():
                raise CommandError(f"{key} must be printable and at most {MAX_FIELD_CHARS} characters")
        if self.set_context is None:
            raise CommandError("this agent takes no context changes")
        self.set_context(**body)
        return {"queued": body, "applies": "to scans read after this command"}

    def _cmd_health(self, body: dict) -> dict:
        if body:
            raise CommandError(f"health takes no arguments; got {', '.join(sorted(body))}")
        return self.health()

    def _cmd_reload(self, body: dict) -> dict:
        if body:
            raise CommandError(f"reload takes no arguments; got {', '.join(sorted(body))}")
        if self.reload is None:
            raise CommandError("this agent has no config file to reload")
        try:
            return self.reload()
        except ValueError as problem:
            raise CommandError(f"config not reloaded: {problem}") from None
