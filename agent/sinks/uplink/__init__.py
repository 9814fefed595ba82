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
import queue
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
from agent.domain import VERDICTS, Decision, check_movement
from agent.events import encode, event_from_row
from agent.ledger.outbox import Outbox

log = logging.getLogger(__name__)

#: A v5 session outlives a disconnection by this long, so commands sent meanwhile wait.
SESSION_EXPIRY_S = 24 * 3600
#: Commands bigger than this are refused unread.
MAX_COMMAND_BYTES = 4096
#: Operator and bill ids longer than this are refused.
MAX_FIELD_CHARS = 64
#: First reconnect delay; doubles up to ``backoff_max_s``.
BACKOFF_MIN_S = 0.5
#: Backlog rows read from the ledger at a time.
READ_AHEAD = 500
#: uplink-record gathers PUBACKs this long before committing them.
RECORD_GATHER_S = 0.02
#: uplink-net looks for new events to send at least this often.
PUMP_S = 0.05
#: ... and this often while it has room in the window but the uplink thread is
#: still reading the backlog: paho has no public way to wake its loop short of
#: sending something, so the uplink thread cannot say "rows ready".
STARVED_PUMP_S = 0.002
#: A connection that lasted this long resets the backoff.
STABLE_S = 10.0
#: Even with nothing to retry, walk the whole outbox this often (a safety net).
RESCAN_S = 60.0
STATES_EVERY_S = 2.0  # how often broker_offline / backlog are reported to the feedback
COMMANDS = ("set", "health", "reload", "resend")
#: At most this many events per ``resend`` command.
MAX_RESEND = 10_000


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


class _PahoLog(logging.LoggerAdapter):
    """paho's log, under ``agent.sinks.uplink.paho``; its errors are counted as connection errors.

    Given to paho instead of an ``on_log`` callback: paho formats every line
    for ``on_log``, two per event, while a logger formats only what it emits.
    """

    def __init__(self, uplink: Uplink) -> None:
        super().__init__(log.getChild("paho"))
        self.uplink = uplink

    def log(self, level: int, msg: object, *args, **kwargs) -> None:
        # paho guards an on_log callback but not a logger: nothing may escape into its loop.
        try:
            if level >= logging.ERROR:
                self.uplink._paho_error(str(msg) % args if args else str(msg))
            else:
                super().log(level, msg, *args, **kwargs)
        except Exception:
            log.exception("could not log a paho message %r", msg)


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
        on_state: Callable[[str, bool], None] | None = None,
        backlog_alert_s: float | None = None,
    ) -> None:
        self.config = config
        self.db_path = Path(db_path)
        self.device_id = device_id
        self.site_id = site_id
        self.topics = Topics(config.topic_prefix, site_id, device_id)
        self.set_context = set_context
        self.reload = reload
        self.scanners = scanners or (lambda: {})
        self.on_state = on_state
        self.backlog_alert_s = backlog_alert_s
        self.v5 = config.protocol == "5"
        self.client = self._make_client()

        # Counters since start (read by health; written by one thread each).
        self.started = time.monotonic()
        self.verdicts: dict[str, int] = dict.fromkeys((*VERDICTS, "fault"), 0)
        self.published = 0
        self.delivered = 0
        self.failures = 0
        self.connection_errors = 0
        self.refused_publishes = 0
        self.last_puback: str | None = None

        self._connected = threading.Event()
        self._stopping = threading.Event()  # the network thread: stop reconnecting
        self._closing = threading.Event()  # the uplink thread: stop
        self._wake = threading.Event()
        self._live: collections.deque[int] = collections.deque(maxlen=10_000)
        self._refusals: collections.deque[tuple[int, mqtt.ReasonCode]] = collections.deque()
        self._commands: collections.deque[mqtt.MQTTMessage] = collections.deque()
        self._inflight: dict[int, int] = {}  # paho mid -> scan id: the window (uplink-net only)
        # Rows ready to send (encoded by uplink-net at send time); live ones go first.
        self._ready_live: collections.deque[sqlite3.Row] = collections.deque()
        self._ready: collections.deque[sqlite3.Row] = collections.deque()
        # Scan ids ready, in flight, or acknowledged but not yet recorded: never sent twice at once.
        self._busy: set[int] = set()
        self._held: dict[int, float] = {}  # scan id refused by the broker -> monotonic retry time
        self._ahead: collections.deque[sqlite3.Row] = collections.deque()  # backlog rows read ahead
        self._cursor = 0  # the backlog has been read up to this scan id
        self._caught_up = False
        self._rescan_at = 0.0
        self._to_record: queue.SimpleQueue[tuple[int, int] | None] = queue.SimpleQueue()
        self._backoff = BACKOFF_MIN_S
        self._connected_at = 0.0
        self._probing = True
        self._last_failure_log = float("-inf")
        self._outbox: Outbox | None = None  # the uplink thread's connection
        self._threads: dict[str, threading.Thread] = {}

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
        recorder = Outbox.open(self.db_path)
        for name, target, args in (
            ("uplink-net", self._network, ()),
            ("uplink", self._work, ()),
            ("uplink-record", self._record, (recorder,)),
        ):
            thread = threading.Thread(target=target, args=args, name=name, daemon=True)
            thread.start()
            self._threads[name] = thread

    def stop(self, grace_s: float = 2.0) -> None:
        """Wait up to ``grace_s`` for PUBACKs in flight, say ``offline``, disconnect."""
        deadline = time.monotonic() + grace_s
        while self._inflight and self.connected and time.monotonic() < deadline:
            time.sleep(0.02)
        self._closing.set()
        self._wake.set()
        if self._threads:
            self._threads["uplink"].join(grace_s + 5)
            self._to_record.put(None)  # record what was acknowledged, then stop
            self._threads["uplink-record"].join(10)
        if self.connected:
            info = self.client.publish(self.topics.status, "offline", qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(max(0.1, deadline - time.monotonic()))
        self._stopping.set()
        self.client.disconnect()
        if self._threads:
            self._threads["uplink-net"].join(5)
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
            client.username_pw_set(cfg.username, cfg.password())
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.enable_logger(_PahoLog(self))
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
                    starved = False
                    if self._connected.is_set() and not self._closing.is_set():
                        starved = self._pump()
                    # Short timeout: new live events wait at most this long.
                    if self.client.loop(timeout=STARVED_PUMP_S if starved else PUMP_S) != mqtt.MQTT_ERR_SUCCESS:
                        break
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

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("MQTT broker refused the connection: %s", reason_code)
            return
        log.info("MQTT connected to %s:%d as %s", self.config.host, self.config.port, self.device_id)
        self._connected_at = time.monotonic()
        # Subscribe first: the broker handles one client's packets in order, so
        # whoever sees "online" can already send commands.
        client.subscribe(self.topics.commands, qos=1)
        client.publish(self.topics.status, "online", qos=1, retain=True)
        self._rescan_at = 0.0  # walk the outbox again from the oldest (paho resends its own window)
        self._probing = True

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

    def _pump(self) -> bool:
        """Fill the window from the ready events (on uplink-net, so paho is used from one thread).

        Returns whether the window still has room while the backlog is not all read.
        """
        # One event first on each connection: a broker that refuses it and then
        # drops us (mosquitto on an ACL denial) still gets its refusal out.
        room = (1 if self._probing else self.config.max_inflight) - len(self._inflight)
        now = datetime.now(UTC)
        while room > 0:
            if self._ready_live:
                row = self._ready_live.popleft()
            elif self._ready:
                row = self._ready.popleft()
            else:
                break
            scan_id = row["id"]
            # Encoded here, on the thread that sends, so that the send path never
            # waits for another thread to hand back the GIL.
            info = self.client.publish(self.topics.events, encode(event_from_row(row, now)), qos=1)
            if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
                log.warning("paho refused event (scan id %d): %s", scan_id, mqtt.error_string(info.rc))
                self._busy.discard(scan_id)  # sent again on the next walk of the outbox
                continue
            # Any other result (success, no connection, connection lost): paho
            # holds the message and sends it again after reconnecting.
            self._inflight[info.mid] = scan_id
            self.published += 1
            room -= 1
        if len(self._ready) < self.config.max_inflight:
            self._wake.set()  # the uplink thread prepares more
        return room > 0 and (not self._caught_up or bool(self._ahead))

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        scan_id = self._inflight.pop(mid, None)
        if scan_id is None:  # a status, health or reply message
            if reason_code.is_failure:
                # Refused by the broker's ACL, say: surfaced like a refused event.
                self.refused_publishes += 1
                log.warning("broker refused a status/health/reply publish: %s (0x%02x)", reason_code, reason_code.value)
            return
        self._probing = False
        if reason_code.is_failure:
            self._refusals.append((scan_id, reason_code))
            self._wake.set()
        else:
            self._to_record.put((scan_id, reason_code.value))  # stays busy until recorded

    def _paho_error(self, message: str) -> None:
        # With TLS 1.3 a broker refuses a certificate (expired, unknown CA) after
        # the handshake, on the first read; paho reports that only in its log.
        self.connection_errors += 1
        log.warning("MQTT connection to %s:%d failed: %s", self.config.host, self.config.port, message)

    def _on_message(self, client, userdata, message) -> None:
        self._commands.append(message)
        self._wake.set()

    # -- draining (thread uplink) --------------------------------------------

    def _work(self) -> None:
        next_health = time.monotonic() + self.config.health_interval_s
        next_states = time.monotonic()
        while True:
            self._wake.wait(0.5)
            self._wake.clear()
            try:
                self._settle_refusals()
                if self._closing.is_set():
                    return
                if self.on_state is not None and time.monotonic() >= next_states:
                    next_states = time.monotonic() + STATES_EVERY_S
                    self._report_states()
                self._run_commands()
                if self.connected:
                    self._prepare()
                    if time.monotonic() >= next_health:
                        next_health = time.monotonic() + self.config.health_interval_s
                        self._send(self.topics.health, self.health())
            except sqlite3.Error as problem:
                log.error("uplink cannot use the ledger: %s; retrying", problem)
                self._closing.wait(1.0)
            except Exception:
                log.exception("uplink error; carrying on")
                self._closing.wait(1.0)

    def _settle_refusals(self) -> None:
        while self._refusals:
            scan_id, reason = self._refusals.popleft()
            self._refused(scan_id, reason)
            self._busy.discard(scan_id)

    def _record(self, outbox: Outbox) -> None:
        """Thread uplink-record: write deliveries in batches (group commit), off the send path."""
        stop = False
        while not stop:
            batch = [self._to_record.get()]
            # Gather for a moment: one fsync'd commit per batch, not per PUBACK.
            # The rows stay busy meanwhile, so nothing is sent twice.
            self._closing.wait(RECORD_GATHER_S)
            while True:
                try:
                    batch.append(self._to_record.get_nowait())
                except queue.Empty:
                    break
            stop = None in batch
            done = [item for item in batch if item is not None]
            by_code: dict[int, list[int]] = {}
            for scan_id, code in done:
                by_code.setdefault(code, []).append(scan_id)
            try:
                for code, scan_ids in by_code.items():
                    outbox.mark_delivered(scan_ids, code)
            except sqlite3.Error as problem:
                # Not recorded, so not delivered: the rows are sent again later.
                log.error("could not record %d deliveries: %s; they will be sent again", len(done), problem)
            else:
                self.delivered += len(done)
                if done:
                    self.last_puback = iso(datetime.now(UTC))
            for scan_id, _ in done:
                self._busy.discard(scan_id)
        outbox.close()

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

    def _prepare(self) -> None:
        """Encode the next events for uplink-net: live ones first, then the backlog oldest first."""
        live: list[int] = []
        while self._live:
            scan_id = self._live.popleft()
            if scan_id not in self._busy and scan_id not in self._held:
                live.append(scan_id)
        for row in self._outbox.rows(live):
            self._make_ready(row, self._ready_live)
        now = time.monotonic()
        due = [scan_id for scan_id, at in self._held.items() if at <= now]
        if due or now >= self._rescan_at:
            # Walk the outbox from the oldest again: refused rows now due, and
            # anything else not delivered (a safety net; rows busy are skipped).
            for scan_id in due:
                del self._held[scan_id]
            self._cursor, self._caught_up = 0, False
            self._ahead.clear()
            self._rescan_at = now + RESCAN_S
        while len(self._ready) < 2 * self.config.max_inflight:
            if not self._ahead:
                if self._caught_up:
                    return  # new events arrive through decided()
                self._read_ahead()
                if not self._ahead:
                    return
            row = self._ahead.popleft()
            if row["id"] not in self._busy and row["id"] not in self._held:
                self._make_ready(row, self._ready)

    def _make_ready(self, row: sqlite3.Row, ready: collections.deque) -> None:
        self._busy.add(row["id"])
        ready.append(row)

    def _read_ahead(self) -> None:
        top = self._outbox.conn.execute("SELECT MAX(scan_id) FROM outbox").fetchone()[0] or 0
        rows = self._outbox.pending(self._cursor, READ_AHEAD)
        self._ahead.extend(rows)
        if rows:
            self._cursor = rows[-1]["id"]
        if len(rows) < READ_AHEAD:
            # Caught up: every event recorded after ``top`` comes through decided().
            self._cursor, self._caught_up = max(self._cursor, top), True

    def _send(self, topic: str, body: dict, properties: Properties | None = None) -> None:
        payload = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
        self.client.publish(topic, payload, qos=1, properties=properties)

    # -- health ----------------------------------------------------------------

    def _report_states(self) -> None:
        """Tell the feedback whether the broker is reachable and the backlog is too old."""
        self.on_state("broker_offline", not self.connected)
        if self.backlog_alert_s is not None:
            age = self._oldest_age_s()
            self.on_state("backlog", age is not None and age > self.backlog_alert_s)

    def _oldest_age_s(self) -> float | None:
        oldest = self._outbox.oldest_pending_ts()
        if oldest is None:
            return None
        recorded = datetime.fromisoformat(oldest.replace("Z", "+00:00"))
        return (datetime.now(UTC) - recorded).total_seconds()

    def health(self) -> dict:
        """The heartbeat published on ``{p}/health`` (and in reply to ``cmd/health``)."""
        age = self._oldest_age_s()
        age = None if age is None else round(age, 3)
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
            "refused_publishes": self.refused_publishes,
            "db_bytes": self._outbox.db_bytes(),
            # Alarms are append-only: the back end keeps them by id and acts on new ones.
            "alarms": self._outbox.alarms(),
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
            if key == "movement":
                try:
                    check_movement(value)
                except ValueError as problem:
                    raise CommandError(f"movement {problem}") from None
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

    def _cmd_resend(self, body: dict) -> dict:
        """Send events ``from_seq``..``to_seq`` again, delivered or not: how the back end
        recovers events a broker acknowledged and then lost (it sees the gap in ``seq``)."""
        first, last = body.get("from_seq"), body.get("to_seq", body.get("from_seq"))
        if set(body) - {"from_seq", "to_seq"} or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in (first, last)
        ):
            raise CommandError("resend takes from_seq and optionally to_seq, whole numbers >= 1")
        if last < first or last - first + 1 > MAX_RESEND:
            raise CommandError(f"resend: to_seq must be from from_seq to from_seq + {MAX_RESEND - 1}")
        rows = self._outbox.by_seq(self.device_id, first, last)
        queued = 0
        for row in rows:
            if row["id"] not in self._busy:
                self._make_ready(row, self._ready_live)
                queued += 1
        return {"from_seq": first, "to_seq": last, "found": len(rows), "queued": queued}
