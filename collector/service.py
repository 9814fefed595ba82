"""A running collector: the threads that join intake, store, receipts and gaps.

- **writer** (the thread that calls :meth:`Collector.run`): takes what the intake
  received, checks it (:func:`collector.check.check`), stores it in one
  transaction, then acknowledges the messages and offers receipts. If PostgreSQL
  is away it keeps the batch and tries again: nothing is acknowledged until it is
  committed, so nothing is lost and the broker holds the rest.
- **leader**: one collector of those sharing a database holds an advisory lock
  and, while it does, closes gaps (:class:`collector.gaps.GapCloser`) and
  publishes the receipts of what the others stored (it reads ``devices``).
  Receipts come from one process so that N never goes back on the broker.
- paho's network thread (:mod:`collector.intake`).

    collector = Collector(Settings(dsn="postgresql://...", broker=Broker("127.0.0.1", 1883)))
    collector.run(stop_event)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import psycopg

from .check import MAX_PAYLOAD_BYTES, Event, Rejected, Report, check
from .gaps import GapCloser
from .intake import Broker, Intake
from .receipts import Receipts
from .schema import migrate
from .store import Store, Stored

log = logging.getLogger(__name__)

#: The advisory lock the leader holds (any fixed number, the same in every collector).
LEADER_LOCK = 0x5CA1_0002
#: How often the leader reads devices' progress for receipts, and looks for gaps.
RECEIPT_POLL_S = 0.2
GAP_ROUND_S = 1.0
#: A lost database is tried again after this long, doubling up to the max.
RETRY_MIN_S, RETRY_MAX_S = 0.2, 5.0


@dataclass(frozen=True)
class Settings:
    dsn: str
    broker: Broker = field(default_factory=Broker)
    prefix: str = "trace/v1"
    share: str | None = "collectors"
    shared: str = "auto"  # collector.intake.SHARED_MODES
    client_id: str = field(default_factory=lambda: f"collector-{socket.gethostname()}-{os.getpid()}")
    batch_max: int = 5000
    max_payload_bytes: int = MAX_PAYLOAD_BYTES
    gap_grace_s: float = 5.0
    gap_retry_s: float = 5.0
    gap_retry_max_s: float = 300.0
    gap_give_up_after: int = 6
    lead: bool = True  # may this collector be the leader


class Collector:
    """One collector process. Threads: :meth:`run` on the writer thread; :attr:`counts`
    (messages by outcome) is written by the writer only, read by anyone."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.counts: Counter[str] = Counter()
        self.receipts = Receipts(self._publish_receipt, prefix=settings.prefix)
        self.intake = Intake(
            settings.broker,
            client_id=settings.client_id,
            prefix=settings.prefix,
            share=settings.share,
            shared=settings.shared,
            on_connect=self._on_connect,
            check=self._check,
        )
        self.leading = threading.Event()
        self._full_poll = threading.Event()
        self._full_poll.set()

    def _check(self, topic: str, payload: bytes) -> Event | Report | Rejected:
        """Paho's thread: the verdict on one message, made before the writer takes it."""
        s = self.settings
        try:
            return check(topic, payload, prefix=s.prefix, max_bytes=s.max_payload_bytes)
        except Exception as error:  # a bug in the check must not lose the message on paho's thread
            log.exception("the check failed on a message on %s", topic)
            return Rejected(topic, "check_failed", f"{type(error).__name__}: {error}", payload)

    def _publish_receipt(self, topic: str, body: dict) -> None:
        self.intake.publish(topic, body, retain=True)

    def _on_connect(self) -> None:
        # The broker may have restarted empty and lost the retained receipts: send each again.
        self.receipts.forget_all()
        self._full_poll.set()

    def run(self, stop: threading.Event) -> None:
        """Collect until ``stop`` is set."""
        store = self._connect(stop)
        if store is None:
            return
        leader = threading.Thread(target=self._lead, args=(stop,), name="collector-leader", daemon=True)
        if self.settings.lead:
            leader.start()
        self.intake.start()
        log.info("collector %s up", self.settings.client_id)
        try:
            while not stop.is_set():
                batch = self.intake.take(self.settings.batch_max, timeout=0.2)
                if batch:
                    self._handle(store, batch, stop)
        finally:
            self.intake.stop()
            store.close()
            log.info("collector %s stopped: %s", self.settings.client_id, json.dumps(dict(self.counts)))
            if leader.is_alive():
                leader.join(5)

    def _connect(self, stop: threading.Event) -> Store | None:
        delay = RETRY_MIN_S
        while not stop.is_set():
            try:
                with psycopg.connect(self.settings.dsn, autocommit=True) as conn:
                    migrate(conn)
                return Store(self.settings.dsn)
            except psycopg.OperationalError as problem:
                log.warning("PostgreSQL unreachable (%s); again in %.1f s", str(problem).strip(), delay)
                stop.wait(delay)
                delay = min(delay * 2, RETRY_MAX_S)
        return None

    def _handle(self, store: Store, batch: list, stop: threading.Event) -> None:
        events: list[Event] = []
        rejected: list[Rejected] = []
        reports: list[Report] = []
        for message in batch:
            verdict = message.verdict
            if isinstance(verdict, Event):
                events.append(verdict)
            elif isinstance(verdict, Rejected):
                log.warning("quarantined a message on %s: %s: %s", verdict.topic, verdict.reason, verdict.detail)
                self.counts[verdict.reason] += 1
                rejected.append(verdict)
            else:
                reports.append(verdict)
        stored = self._store(store, events, rejected, reports, stop)
        if stored is None:
            return  # stopping: nothing acknowledged, the broker sends it again
        self.intake.ack(batch)
        self.counts["stored"] += stored.inserted
        self.counts["duplicates"] += stored.duplicates
        if self.leading.is_set():
            for device, state in stored.devices.items():
                self.receipts.offer(device, state.site, state.through, repeat=state.resent)

    def _store(self, store: Store, events, rejected, reports, stop: threading.Event) -> Stored | None:
        delay = RETRY_MIN_S
        while not stop.is_set():
            try:
                return store.store(events, rejected, reports)
            except psycopg.OperationalError as problem:
                log.warning("PostgreSQL lost (%s); the batch waits, again in %.1f s", str(problem).strip(), delay)
            stop.wait(delay)
            delay = min(delay * 2, RETRY_MAX_S)
            with contextlib.suppress(psycopg.OperationalError):
                store.reconnect()
        return None

    def _lead(self, stop: threading.Event) -> None:
        """The leader thread: take the lock when free, then receipts and gaps while it is held."""
        delay = RETRY_MIN_S
        while not stop.is_set():
            try:
                with psycopg.connect(self.settings.dsn, autocommit=True) as conn:
                    delay = RETRY_MIN_S
                    self._lead_on(conn, stop)
            except psycopg.OperationalError as problem:
                if self.leading.is_set():
                    log.warning("leader: PostgreSQL lost (%s)", str(problem).strip())
            self.leading.clear()
            stop.wait(delay)
            delay = min(delay * 2, RETRY_MAX_S)

    def _lead_on(self, conn: psycopg.Connection, stop: threading.Event) -> None:
        s = self.settings
        while not stop.is_set() and not conn.execute("SELECT pg_try_advisory_lock(%s)", (LEADER_LOCK,)).fetchone()[0]:
            stop.wait(1.0)
        if stop.is_set():
            return
        log.info("collector %s leads: receipts and gaps", s.client_id)
        self._full_poll.set()
        self.leading.set()
        closer = GapCloser(
            conn,
            self.intake.publish,
            prefix=s.prefix,
            grace_s=s.gap_grace_s,
            retry_s=s.gap_retry_s,
            retry_max_s=s.gap_retry_max_s,
            give_up_after=s.gap_give_up_after,
        )
        next_gaps = 0.0
        while not stop.is_set():
            self._poll_receipts(conn)
            if time.monotonic() >= next_gaps:
                closer.round()
                next_gaps = time.monotonic() + GAP_ROUND_S
            stop.wait(RECEIPT_POLL_S)

    def _poll_receipts(self, conn: psycopg.Connection) -> None:
        """Receipts for progress any collector committed (recent, or all after a reconnect)."""
        if not self.intake.connected.is_set():
            return
        if self._full_poll.is_set():
            self._full_poll.clear()
            rows = conn.execute("SELECT device_id, site_id, stored_through_seq, true FROM devices").fetchall()
        else:
            rows = conn.execute(
                "SELECT device_id, site_id, stored_through_seq, true FROM devices"
                " WHERE progress_at > clock_timestamp() - interval '3 seconds'"
            ).fetchall()
        for device, site, through, recent in rows:
            self.receipts.offer(device, site, through, repeat=recent)
