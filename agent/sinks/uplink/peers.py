"""The site's other stations: their events in, stored for the ledger's decisions; conflicts out.

With ``[site] peers = true`` the connection subscribes (QoS 1, in the device's persistent
session) to ``{prefix}/{site}/+/events``. Every message lands in :meth:`PeerIntake.received`
on uplink-net, which only queues it; the ``uplink-peers`` thread checks each one
(:func:`check_event`: JSON, the event schema, the site, the topic's device, the event's
hash) and stores those that change a code's state in ``peer_events``
(:func:`agent.ledger.peers.store`), on a SQLite connection of its own, a batch per
transaction. The pipeline reads that table inside its decisions; it never waits for this
thread but on SQLite's write lock, held here for one short transaction.

Bad input (not JSON, not an event, another site, a hash that does not match) is logged
(at most once per :data:`LOG_EVERY_S` per kind), counted in health and ignored.

A peer's accepted scan that the site's count makes a duplicate of one accepted here (the
two stations did not hear each other: a partition, or the same second) raises a
``conflict``: an alarm in the ledger (in the same transaction as the peer row, so a crash
loses neither and a redelivery raises none), an event on ``{p}/alarms`` naming both scans,
health's ``alarms``, and ``on_conflict`` (the feedback's amber, and the lock if
``[documents] lock_on`` has ``conflict``; the lock itself is recorded on the pipeline thread).

**Catching up.** The subscription is QoS 1 in the persistent session the uplink already
keeps (MQTT 5 session expiry, or 3.1.1 ``clean_session = false``), so a station that was
down or cut off gets what its peers published meanwhile from the broker when it
reconnects. Past the session (expired, or lost with a broker node) a peer's ``cmd/resend``
sends its events again; storing is idempotent by ``event_id``.

**Bounded.** Only rows that change a code's state are stored (an accepted movement or a
void: not rejections, duplicates, double reads, stock checks or documents), about 150
bytes each with the code index: the table grows as the site's accepted movements do, like
the ledger itself. The queue in memory holds at most :data:`MAX_QUEUE` messages; beyond it
a message is dropped and counted, and redelivery or ``cmd/resend`` brings it back.
"""

from __future__ import annotations

import collections
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt

from agent.clock import iso
from agent.events import SCHEMA, hashed_row
from agent.ledger import connect, peers, row_hash

from .topics import Topics

log = logging.getLogger(__name__)

#: Messages waiting for the intake thread at most; more are dropped (and counted).
MAX_QUEUE = 20_000
#: At most this many messages per transaction.
BATCH = 500
#: A message bigger than this is not read (an event is about 1 KB).
MAX_EVENT_BYTES = 64 * 1024
#: The same kind of bad message is logged at most this often.
LOG_EVERY_S = 10.0
#: The schema of an alarm event on ``{p}/alarms``.
ALARM_SCHEMA = "alarm/1"


def check_event(payload: bytes, *, device: str, site_id: str) -> tuple[dict | None, str]:
    """The peer row for a message from station ``device`` of ``site_id``, or None and why not
    (``kept`` rows only; an event that changes no code's state gives None and ``""``).

    >>> check_event(b"{", device="kiosk-2", site_id="site-01")
    (None, 'malformed')
    >>> check_event(b'{"schema": "scan-event/1"}', device="kiosk-2", site_id="site-01")
    (None, 'malformed')
    """
    if len(payload) > MAX_EVENT_BYTES:
        return None, "too_big"
    try:
        event = orjson.loads(payload)
        if not isinstance(event, dict) or event.get("schema") != SCHEMA:
            return None, "malformed"
        computed = row_hash(hashed_row(event))
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError):
        return None, "malformed"
    if event["site_id"] != site_id:
        return None, "other_site"
    if event["device_id"] != device:
        return None, "other_device"  # a station publishing under another's name
    if computed != event["hash"]:
        return None, "bad_hash"
    if not peers.kept(event):
        return None, ""
    return {c: event.get(c) for c in peers.COLUMNS}, ""


class PeerIntake:
    """The peers' events: queued on uplink-net, checked and stored on ``uplink-peers``.

    Threads: :meth:`received` on uplink-net (paho's callback); :meth:`run` is
    ``uplink-peers`` and calls ``publish(topic, body)`` (any-thread safe) and
    ``on_conflict(conflict)``; :meth:`start`, :meth:`stop` on the uplink's owner;
    :meth:`stats` and the counters on any thread.

        intake = PeerIntake(db_path, topics=topics, site_id="site-01", publish=connection.send)
        connection.on_peer_event = intake.received
        intake.start()
        ...
        intake.stop()
    """

    def __init__(
        self,
        db_path: str | Path,
        *,
        topics: Topics,
        site_id: str,
        publish: Callable[[str, dict], None],
        split_packs: Mapping[str, int] | None = None,
        on_conflict: Callable[[peers.Conflict], None] | None = None,
        max_queue: int = MAX_QUEUE,
    ) -> None:
        self.db_path = Path(db_path)
        self.topics = topics
        self.device_id = topics.device
        self.site_id = site_id
        self.publish = publish
        self.split_packs = dict(split_packs or {})
        self.on_conflict = on_conflict
        self.max_queue = max_queue
        self._queue: collections.deque[tuple[str, bytes]] = collections.deque()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_log: dict[str, float] = {}
        #: Counts since start (each written by one thread).
        self.received_count = 0  # uplink-net: peers' messages
        self.dropped = 0  # uplink-net: the queue was full
        self.stored = 0  # uplink-peers: new rows
        self.ignored: dict[str, int] = {}  # uplink-peers: bad messages, by kind
        self.conflicts = 0  # uplink-peers
        self.last_stored_ts: str | None = None

    # -- uplink-net ---------------------------------------------------------------------

    def received(self, message: mqtt.MQTTMessage) -> None:
        """A message on the site's events: queue another station's, ignore this one's own."""
        if self.topics.peer(message.topic) is None:
            return  # this station's own events (or a topic we did not ask for)
        self.received_count += 1
        if len(self._queue) >= self.max_queue:
            self.dropped += 1
            return
        self._queue.append((message.topic, bytes(message.payload)))
        self._wake.set()

    # -- the owner ------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="uplink-peers", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Store what is queued, then stop."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def stats(self) -> dict:
        """For the health report."""
        return {
            "received": self.received_count,
            "stored": self.stored,
            "ignored": sum(self.ignored.values()),
            "ignored_by_kind": dict(self.ignored),
            "dropped": self.dropped,
            "conflicts": self.conflicts,
            "queued": len(self._queue),
            "last_stored_ts": self.last_stored_ts,
        }

    # -- uplink-peers ---------------------------------------------------------------------

    def run(self) -> None:
        conn = connect(self.db_path)
        try:
            while True:
                self._wake.wait()
                self._wake.clear()
                while self._queue:
                    try:
                        self.take(conn)
                    except sqlite3.Error as problem:
                        log.error("peers: cannot store peer events: %s; retrying", problem)
                        self._stopping.wait(1.0)
                    except Exception:
                        log.exception("peers: error; carrying on")
                if self._stopping.is_set():
                    return
        finally:
            conn.close()

    def take(self, conn: sqlite3.Connection) -> int:
        """Check and store one batch from the queue (uplink-peers); returns how many were new.

        A batch that SQLite refuses is put back at the head of the queue for the next try.
        """
        batch = []
        while self._queue and len(batch) < BATCH:
            batch.append(self._queue.popleft())
        rows = []
        for topic, payload in batch:
            row, why = check_event(payload, device=self.topics.peer(topic) or "", site_id=self.site_id)
            if row is not None:
                rows.append(row)
            elif why:
                self._ignore(why, topic, payload)
        if not rows:
            return 0
        now = iso(datetime.now(UTC))
        try:
            new, conflicts = peers.store(
                conn, rows, device_id=self.device_id, received_ts=now, split_packs=self.split_packs
            )
        except sqlite3.Error:
            self._queue.extendleft(reversed(batch))
            raise
        self.stored += new
        if new:
            self.last_stored_ts = now
        for conflict in conflicts:
            self._raise(conflict)
        return new

    def _raise(self, conflict: peers.Conflict) -> None:
        self.conflicts += 1
        log.error("ALARM conflict: %s", conflict.detail())
        self.publish(self.topics.alarms, alarm_event(conflict, device_id=self.device_id, site_id=self.site_id))
        if self.on_conflict is not None:
            try:
                self.on_conflict(conflict)
            except Exception:
                log.exception("peers: on_conflict failed; the alarm is recorded regardless")

    def _ignore(self, kind: str, topic: str, payload: bytes) -> None:
        self.ignored[kind] = self.ignored.get(kind, 0) + 1
        now = time.monotonic()
        if now - self._last_log.get(kind, float("-inf")) >= LOG_EVERY_S:
            self._last_log[kind] = now
            log.warning(
                "peer event ignored (%s) on %s: %r (%d ignored since start)",
                kind,
                topic,
                payload[:200],
                sum(self.ignored.values()),
            )


def alarm_event(conflict: peers.Conflict, *, device_id: str, site_id: str) -> dict:
    """The ``alarm/1`` event published on ``{p}/alarms`` for a conflict (docs/events.md)."""
    return {
        "schema": ALARM_SCHEMA,
        "kind": "conflict",
        "alarm_id": conflict.alarm_id,
        "ts": conflict.ts,
        "device_id": device_id,
        "site_id": site_id,
        "code": conflict.code,
        "detail": conflict.detail(),
        "local": conflict.local,
        "peer": conflict.peer,
    }
