"""The uplink: drains the ledger's outbox to the regional MQTT broker, and takes commands.

The outbox in SQLite is the source of truth; paho's own queue is only a window
onto it. An event counts as delivered only when its PUBACK arrives with a
success reason code; then, and only then, a row goes into ``deliveries``. A
failure code (MQTT v5 "not authorized", "quota exceeded", ...) is logged,
counted and retried later. Restarting resumes from the outbox, so nothing is
lost; a resent event keeps its ``event_id``, so duplicates can be dropped.

Three threads, none of them the pipeline's, each with its own module:

- ``uplink-net`` (:mod:`.connection`) owns the paho connection: connect,
  reconnect with exponential backoff and jitter, send what the window holds;
- ``uplink`` (this module) owns the uplink's own ledger connection: it makes
  events ready (:mod:`.window`), answers commands (:mod:`.commands`), sends
  health (:mod:`.health`), publishes alarms until acknowledged (:mod:`.alarms`)
  and, with ``[mqtt] receipts = true``, records the back
  end's receipts and sends unconfirmed events again (:mod:`.receipts`);
- ``uplink-record`` (:mod:`.recorder`) records deliveries on a connection of its own;
- ``uplink-peers`` (:mod:`.peers`), with ``[site] peers = true``, stores the site's
  other stations' events on a connection of its own, raises conflicts, and asks a
  peer to send again the events it missed (:mod:`.catchup`).

As a pipeline sink, :meth:`Uplink.decided` only notes the new event and wakes
the ``uplink`` thread, so a dead broker never slows a scan. Topics are in
:mod:`.topics`.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties

from agent.config import MqttConfig
from agent.domain import Decision
from agent.ledger.outbox import Outbox

from .alarms import AlarmSender
from .commands import CommandError, Commands
from .connection import Connection
from .health import Counters, Health
from .peers import PeerIntake
from .receipts import Receipts
from .recorder import Recorder
from .topics import Topics
from .window import Window

if TYPE_CHECKING:
    from agent.station import Station

__all__ = ["CommandError", "Topics", "Uplink"]

log = logging.getLogger(__name__)

#: How often broker_offline / backlog are reported to the feedback.
STATES_EVERY_S = 2.0


class Uplink:
    """Publishes the outbox, status and health; answers commands.

    ``set_context`` is :meth:`agent.pipeline.Pipeline.set_context`; ``reload``
    re-reads the config and returns what it applied and what needs a restart
    (raising :class:`ValueError` for a bad config); ``scanners`` returns
    ``{name: connected}`` for the health report; ``on_state(name, on)`` is
    told ``broker_offline`` and ``backlog`` (an event undelivered, or delivered
    and unconfirmed, older than ``backlog_alert_s``).

        uplink = Uplink(cfg.mqtt, db_path=..., device_id="kiosk-7", site_id="site-01")
        pipeline.sinks.append(uplink)
        uplink.start()
        ...
        uplink.stop()

    Threads: :meth:`decided` is called on the pipeline thread and returns at
    once; :meth:`start`, :meth:`stop` on the thread that owns the uplink;
    :meth:`health` and the counters on any thread.
    """

    def __init__(
        self,
        config: MqttConfig,
        *,
        db_path: str | Path,
        device_id: str,
        site_id: str,
        set_context: Callable[..., None] | None = None,
        station: Station | None = None,
        reload: Callable[[], dict] | None = None,
        scanners: Callable[[], dict[str, bool]] | None = None,
        on_state: Callable[[str, bool], None] | None = None,
        backlog_alert_s: float | None = None,
        peers: bool = False,
        split_packs: dict[str, int] | None = None,
        on_conflict: Callable | None = None,
    ) -> None:
        self.config = config
        self.db_path = Path(db_path)
        self.device_id = device_id
        self.site_id = site_id
        self.topics = Topics(config.topic_prefix, site_id, device_id)
        self.counters = Counters()
        self._wake = threading.Event()  # the uplink thread has something to do
        self._closing = threading.Event()  # the uplink thread: stop
        self.recorder = Recorder(self.counters)
        self.window = Window(
            config.max_inflight,
            topics=self.topics,
            retry_s=min(30.0, config.backoff_max_s),
            record=self.recorder.put,
            wake_worker=self._wake.set,
            counters=self.counters,
        )
        self.receipts = (
            Receipts(config.receipt_timeout_s, device_id=device_id, wake=self._wake.set) if config.receipts else None
        )
        self.commands = Commands(
            self.topics,
            send=self._send,
            health=self.health,
            resend=self._resend,
            set_context=set_context,
            station=station,
            reload=reload,
            wake=self._wake.set,
            v5=config.protocol == "5",
        )
        self.connection = Connection(
            config,
            client_id=device_id,
            topics=self.topics,
            window=self.window,
            counters=self.counters,
            on_ready=self._on_ready,
            on_command=self.commands.received,
            on_receipt=None if self.receipts is None else self.receipts.received,
        )
        #: Alarms out on {p}/alarms, from the ledger, until acknowledged.
        self.alarms = AlarmSender(
            self.topics,
            device_id=device_id,
            site_id=site_id,
            send=self.connection.send_tracked,
            wake=self._wake.set,
        )
        self.connection.on_tracked_ack = self.alarms.acknowledged
        #: The site's other stations' events (``[site] peers``), or None.
        self.peers = None
        if peers:
            self.peers = PeerIntake(
                self.db_path,
                topics=self.topics,
                site_id=site_id,
                publish=self._send,
                split_packs=split_packs,
                on_conflict=on_conflict,
                on_alarm=self.alarms.poke,
                connected_now=lambda: self.connection.connected,
            )
            self.connection.on_peer_event = self.peers.received
        self.reporter = Health(
            self.counters,
            device_id=device_id,
            site_id=site_id,
            connected=lambda: self.connection.connected,
            scanners=scanners,
            on_state=on_state,
            backlog_alert_s=backlog_alert_s,
            receipts=self.receipts,
        )
        self._outbox: Outbox | None = None  # the uplink thread's connection
        self._threads: dict[str, threading.Thread] = {}

    # -- the pipeline's side: must return at once ----------------------------

    def decided(self, decision: Decision) -> None:
        """Sink: count the verdict; if it made an event, wake the sender."""
        self.counters.count_verdict(decision.verdict)
        if decision.scan_id is not None and decision.seq is not None:
            self.window.note_live(decision.scan_id)
            self._wake.set()

    @property
    def connected(self) -> bool:
        return self.connection.connected

    @property
    def client(self) -> mqtt.Client:
        """The paho client (uplink-net drives it)."""
        return self.connection.client

    # Counters since start, for tests, benchmarks and the health report.
    verdicts = property(lambda self: self.counters.verdicts)
    published = property(lambda self: self.counters.published)
    delivered = property(lambda self: self.counters.delivered)
    failures = property(lambda self: self.counters.failures)
    connection_errors = property(lambda self: self.counters.connection_errors)
    refused_publishes = property(lambda self: self.counters.refused_publishes)
    last_puback = property(lambda self: self.counters.last_puback)

    def health(self) -> dict:
        """The heartbeat published on ``{p}/health`` (and in reply to ``cmd/health``)."""
        report = self.reporter.report(self._outbox)
        if self.peers is not None:
            report["peers"] = self.peers.stats()
        return report

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        """Start connecting and draining in the background; returns at once."""
        self._outbox = Outbox.open(self.db_path)
        if self.receipts is not None:
            self.receipts.load(self._outbox)
        recorder = Outbox.open(self.db_path)
        if self.peers is not None:
            self.peers.start()
        for name, target, args in (
            ("uplink-net", self.connection.run, ()),
            ("uplink", self._work, ()),
            ("uplink-record", self.recorder.run, (recorder, self.window.recorded)),
        ):
            thread = threading.Thread(target=target, args=args, name=name, daemon=True)
            thread.start()
            self._threads[name] = thread

    def stop(self, grace_s: float = 2.0) -> None:
        """Wait up to ``grace_s`` for PUBACKs in flight, say ``offline``, disconnect."""
        deadline = time.monotonic() + grace_s
        while self.window.in_flight and self.connected and time.monotonic() < deadline:
            time.sleep(0.02)
        self.window.close()
        self._closing.set()
        self._wake.set()
        if self._threads:
            self._threads["uplink"].join(grace_s + 5)
            self.recorder.stop()  # record what was acknowledged, then stop
            self._threads["uplink-record"].join(10)
        if self.connected:
            self.connection.say_offline(max(0.1, deadline - time.monotonic()))
        self.connection.stop()
        if self._threads:
            self._threads["uplink-net"].join(5)
        if self.peers is not None:
            self.peers.stop()
        if self._outbox is not None:
            if self.receipts is not None:
                with contextlib.suppress(sqlite3.Error):  # the next start reads the retained receipt again
                    self.receipts.flush(self._outbox)
            self._outbox.close()

    # -- the uplink thread -----------------------------------------------------

    def _work(self) -> None:
        outbox = self._outbox
        next_health = time.monotonic() + self.config.health_interval_s
        next_states = time.monotonic()
        while True:
            # Asleep until there is something to do: an event, a command, a
            # refusal, a connection, room in the window; or one of its timers.
            due = [next_states] if self.reporter.on_state is not None else []
            if self.connected:
                due += [next_health, self.window.next_due(), self.alarms.next_due()]
                if self.receipts is not None:
                    due.append(self.receipts.next_due())
            self._wake.wait(max(0.0, min(due) - time.monotonic()) if due else None)
            self._wake.clear()
            try:
                self.window.settle_refusals()
                if self._closing.is_set():
                    return
                if self.reporter.on_state is not None and time.monotonic() >= next_states:
                    next_states = time.monotonic() + STATES_EVERY_S
                    self.reporter.report_states(outbox)
                self.commands.answer_waiting()
                if self.receipts is not None:
                    self.receipts.settle(outbox)
                self.alarms.settle(outbox)
                if self.connected:
                    self.alarms.send_due(outbox)
                    if self.window.prepare(outbox):
                        self.connection.wake()
                    if self.receipts is not None and time.monotonic() >= self.receipts.next_due():
                        self._resend_unconfirmed(outbox)
                    if time.monotonic() >= next_health:
                        next_health = time.monotonic() + self.config.health_interval_s
                        self._send(self.topics.health, self.health())
            except sqlite3.Error as problem:
                log.error("uplink cannot use the ledger: %s; retrying", problem)
                self._closing.wait(1.0)
                self._wake.set()
            except Exception:
                log.exception("uplink error; carrying on")
                self._closing.wait(1.0)
                self._wake.set()

    def _on_ready(self) -> None:
        """Connected and subscribed (uplink-net)."""
        if self.receipts is not None:
            self.receipts.connected()
        if self.peers is not None:
            self.peers.connected()
        self.alarms.poke()

    def _resend_unconfirmed(self, outbox: Outbox) -> None:
        """Send a round of unconfirmed events again, if one is due (uplink thread)."""
        rows = self.receipts.due(outbox)
        if rows and self.window.queue_again(rows):
            self.connection.wake()

    def _send(self, topic: str, body: dict, properties: Properties | None = None) -> None:
        self.connection.send(topic, body, properties)

    def _resend(self, first: int, last: int) -> dict:
        rows = self._outbox.by_seq(self.device_id, first, last)
        queued = self.window.queue_again(rows)
        if queued:
            self.connection.wake()
        return {"found": len(rows), "queued": queued}
