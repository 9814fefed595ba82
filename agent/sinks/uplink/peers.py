"""The site's other stations: their events in, stored for the ledger's decisions; conflicts out.

With ``[site] peers = true`` the connection subscribes (QoS 1, in the device's persistent
session) to ``{prefix}/{site}/+/events`` (and ``+/documents``, ``+/status``). Every
message lands in :meth:`PeerIntake.received` on uplink-net, which only queues it; the
``uplink-peers`` thread checks each one (:func:`check_event`: JSON, the event schema,
the site, the topic's device, the event's hash) and stores those that change a code's state in ``peer_events``
(:func:`agent.ledger.peers.store`), on a SQLite connection of its own, a batch per
transaction. The pipeline reads that table inside its decisions; it never waits for this
thread but on SQLite's write lock, held here for one short transaction.

Bad input (not JSON, not an event, another site, a hash that does not match) is logged
(at most once per :data:`LOG_EVERY_S` per kind), counted in health and ignored.

A peer's accepted scan that the site's count makes a duplicate of one accepted here (the
two stations did not hear each other: a partition, or the same second) raises a
``conflict``: an alarm in the ledger (in the same transaction as the peer row, so a crash
loses neither and a redelivery raises none), an event on ``{p}/alarms`` naming both scans
(published from the ledger by :mod:`.alarms` until acknowledged: ``on_alarm()`` pokes it),
health's ``alarms``, and ``on_conflict`` (the feedback's amber, and the lock if
``[documents] lock_on`` has ``conflict``; the lock itself is recorded on the pipeline thread).

**Catching up.** The subscription is QoS 1 in the persistent session the uplink already
keeps (MQTT 5 session expiry, or 3.1.1 ``clean_session = false``), so a station that was
down or cut off gets what its peers published meanwhile from the broker when it
reconnects. Past the session (expired, lost with a broker node or a broker restarted
empty) and past a broker that drops a message (NATS 2.9.10), :mod:`.catchup` tracks each
peer's seqs (its document events and ``status`` are subscribed to for that) and asks a
peer ``cmd/resend`` for a gap, or after a (re)connection for what it may have missed;
storing is idempotent by ``event_id``. How far each peer was heard (``peer_floors``) is
written with the rows, so a restart resumes there.

**Bounded.** Only rows that change a code's state are stored (an accepted movement or a
void: not rejections, duplicates, double reads, stock checks or documents), about 150
bytes each with the code index: the table grows as the site's accepted movements do, like
the ledger itself. The queue in memory holds at most :data:`MAX_QUEUE` messages; beyond it
a message is dropped and counted, and redelivery or ``cmd/resend`` brings it back.
"""

from __future__ import annotations

import collections
import contextlib
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
from agent.events import DOCUMENT_SCHEMA, SCHEMA, hashed_row
from agent.ledger import connect, peers, row_hash

from .catchup import CatchUp
from .topics import Topics

log = logging.getLogger(__name__)

#: Messages waiting for the intake thread at most; more are dropped (and counted).
MAX_QUEUE = 20_000
#: At most this many messages per transaction.
BATCH = 500
#: A message bigger than this is not read (an event is about 1 KB; a case received carries
#: its units, ~23 bytes each: 600 units is ~14 KB). Not read means its seq stays a gap.
MAX_EVENT_BYTES = 1024 * 1024
#: At most this many codes inside one pack are taken from a peer's event (a case of 600
#: units with middle packs is well under it; more are cut, not refused).
MAX_PACK_CODES = 20_000
#: The same kind of bad message is logged at most this often.
LOG_EVERY_S = 10.0
#: Floors raised by events that stored no row are written at most this often (a floor
#: behind on disk only means a few events asked for again after a crash).
FLOOR_SAVE_S = 5.0


def check_event(payload: bytes, *, device: str, site_id: str) -> tuple[dict | None, str]:
    """The event in a message from station ``device`` of ``site_id`` (a scan or a document
    event, hash-checked), or None and why not.

    >>> check_event(b"{", device="kiosk-2", site_id="site-01")
    (None, 'malformed')
    >>> check_event(b'{"schema": "scan-event/1"}', device="kiosk-2", site_id="site-01")
    (None, 'malformed')
    """
    if len(payload) > MAX_EVENT_BYTES:
        return None, "too_big"
    try:
        event = orjson.loads(payload)
        if not isinstance(event, dict) or event.get("schema") not in (SCHEMA, DOCUMENT_SCHEMA):
            return None, "malformed"
        computed = row_hash(hashed_row(event))
        seq = event["seq"]
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError):
        return None, "malformed"
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        return None, "malformed"
    if event["site_id"] != site_id:
        return None, "other_site"
    if event["device_id"] != device:
        return None, "other_device"  # a station publishing under another's name
    if computed != event["hash"]:
        return None, "bad_hash"
    return event, ""


def peer_row(event: Mapping) -> dict | None:
    """The ``peer_events`` row for a checked event, if it changes a code's state (:func:`~agent.ledger.peers.kept`).

    >>> peer_row({"schema": "document-event/1", "verdict": "opened", "movement": "dispense"}) is None
    True
    """
    if event.get("schema") != SCHEMA or not peers.kept(event):
        return None
    row = {c: event.get(c) for c in peers.COLUMNS}
    # A pack received (a case, a middle pack): what is inside it, as the peer's ledger recorded
    # it in the event's hash-checked record. Those codes count the pack's rows as their own.
    record = event.get("record")
    pack = record.get("pack") if isinstance(record, dict) and event.get("verdict") == "accepted" else None
    if isinstance(pack, dict):
        inner = [c for c in (*(pack.get("middles") or ()), *(pack.get("units") or ())) if isinstance(c, str) and c]
        row["pack_codes"] = inner[:MAX_PACK_CODES]
    return row


class PeerIntake:
    """The peers' events: queued on uplink-net, checked and stored on ``uplink-peers``,
    which also catches up (:mod:`.catchup`) by asking peers for the seqs it missed.

    Threads: :meth:`received` and :meth:`connected` on uplink-net (paho's callbacks);
    :meth:`run` is ``uplink-peers`` and calls ``publish(topic, body)`` (any-thread safe),
    ``connected_now()``, ``on_alarm()`` and ``on_conflict(conflict)``; :meth:`start`, :meth:`stop` on the
    uplink's owner; :meth:`stats` and the counters on any thread.

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
        on_alarm: Callable[[], None] = lambda: None,
        connected_now: Callable[[], bool] = lambda: True,
        max_queue: int = MAX_QUEUE,
    ) -> None:
        self.db_path = Path(db_path)
        self.topics = topics
        self.device_id = topics.device
        self.site_id = site_id
        self.publish = publish
        self.split_packs = dict(split_packs or {})
        self.on_conflict = on_conflict
        self.on_alarm = on_alarm
        self.connected_now = connected_now
        self.max_queue = max_queue
        self._queue: collections.deque[tuple[str, bytes]] = collections.deque()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_log: dict[str, float] = {}
        #: uplink-net sets it (monotonic) at each (re)connection; uplink-peers marks the peers.
        self._connected_at: float | None = None
        self._marked_at: float | None = None
        #: The peers' floors and the asks; made on uplink-peers from ``peer_floors``.
        self.catchup: CatchUp | None = None
        self._floors_saved_at = 0.0
        #: Counts since start (each written by one thread).
        self.received_count = 0  # uplink-net: peers' messages
        self.dropped = 0  # uplink-net: the queue was full
        self.stored = 0  # uplink-peers: new rows
        self.ignored: dict[str, int] = {}  # uplink-peers: bad messages, by kind
        self.conflicts = 0  # uplink-peers
        self.last_stored_ts: str | None = None

    # -- uplink-net ---------------------------------------------------------------------

    def received(self, message: mqtt.MQTTMessage) -> None:
        """A message on the site's topics: queue another station's, ignore this one's own."""
        if self.topics.site_message(message.topic) is None:
            return  # this station's own (or a topic we did not ask for)
        self.received_count += 1
        if len(self._queue) >= self.max_queue:
            self.dropped += 1  # a gap now: caught up later
            return
        self._queue.append((message.topic, bytes(message.payload)))
        self._wake.set()

    def connected(self) -> None:
        """Connected and subscribed: the peers not heard within the grace are asked."""
        self._connected_at = time.monotonic()
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
        catchup = self.catchup
        return {
            "received": self.received_count,
            "stored": self.stored,
            "ignored": sum(self.ignored.values()),
            "ignored_by_kind": dict(self.ignored),
            "dropped": self.dropped,
            "conflicts": self.conflicts,
            "queued": len(self._queue),
            "last_stored_ts": self.last_stored_ts,
            "catch_up": None if catchup is None else catchup.stats(),
        }

    # -- uplink-peers ---------------------------------------------------------------------

    def run(self) -> None:
        conn = connect(self.db_path)
        try:
            self.catchup = CatchUp(peers.floors(conn))
            while True:
                self._wake.wait(self._sleep())
                self._wake.clear()
                while self._queue:
                    try:
                        self.take(conn)
                    except sqlite3.Error as problem:
                        log.error("peers: cannot store peer events: %s; retrying", problem)
                        self._stopping.wait(1.0)
                    except Exception:
                        log.exception("peers: error; carrying on")
                try:
                    self.catch_up(conn)
                except sqlite3.Error as problem:
                    log.error("peers: cannot store how far peers were heard: %s; retrying", problem)
                except Exception:
                    log.exception("peers: catch-up error; carrying on")
                if self._stopping.is_set():
                    with contextlib.suppress(sqlite3.Error):
                        self._save_floors(conn)
                    return
        finally:
            conn.close()

    def _sleep(self) -> float | None:
        """How long uplink-peers may sleep unless woken: until the next ask (while connected:
        offline it asks nothing, and :meth:`connected` wakes it) or floor save."""
        due = []
        if self.catchup is not None and self.connected_now():
            due.append(self.catchup.next_due())
        if self.catchup is not None and self.catchup.dirty():
            due.append(self._floors_saved_at + FLOOR_SAVE_S)
        due = [t for t in due if t is not None]
        return max(0.0, min(due) - time.monotonic()) if due else None

    def take(self, conn: sqlite3.Connection) -> int:
        """Check and store one batch from the queue (uplink-peers); returns how many were new.

        A batch that SQLite refuses is put back at the head of the queue for the next try.
        """
        batch = []
        while self._queue and len(batch) < BATCH:
            batch.append(self._queue.popleft())
        rows = []
        now = time.monotonic()
        for topic, payload in batch:
            device, kind = self.topics.site_message(topic) or ("", "")
            if kind == "status":
                if payload == b"online":
                    self.catchup.online(device, now=now)
                elif payload == b"offline":
                    self.catchup.offline(device)
                continue
            event, why = check_event(payload, device=device, site_id=self.site_id)
            if event is None:
                self._ignore(why, topic, payload)
                continue
            self.catchup.seen(device, event["seq"], now=now)
            row = peer_row(event)
            if row is not None:
                rows.append(row)
        if not rows:
            return 0
        ts = iso(datetime.now(UTC))
        floors = self.catchup.dirty()
        try:
            new, conflicts = peers.store(
                conn, rows, device_id=self.device_id, received_ts=ts, split_packs=self.split_packs, floors=floors
            )
        except sqlite3.Error:
            self._queue.extendleft(reversed(batch))
            raise
        self.catchup.saved(floors)
        self.stored += new
        if new:
            self.last_stored_ts = ts
        for conflict in conflicts:
            self._raise(conflict)
        return new

    def catch_up(self, conn: sqlite3.Connection) -> None:
        """Mark the peers at a (re)connection, ask for what is due, and save floors due (uplink-peers)."""
        now = time.monotonic()
        connected_at = self._connected_at
        if connected_at is not None and connected_at != self._marked_at:
            self._marked_at = connected_at
            self.catchup.connected(now=now)
        if self.catchup.dirty() and now >= self._floors_saved_at + FLOOR_SAVE_S:
            self._save_floors(conn)
        if not self.connected_now():
            return  # asked again after the reconnection (every peer is marked then)
        for device, first, last in self.catchup.due(now=now):
            log.info("peers: asking %s to send events %d..%d again", device, first, last)
            self.publish(self.topics.peer_command(device, "resend"), {"from_seq": first, "to_seq": last})

    def _save_floors(self, conn: sqlite3.Connection) -> None:
        floors = self.catchup.dirty() if self.catchup is not None else {}
        self._floors_saved_at = time.monotonic()
        if floors:
            peers.store(conn, [], device_id=self.device_id, received_ts=iso(datetime.now(UTC)), floors=floors)
            self.catchup.saved(floors)

    def _raise(self, conflict: peers.Conflict) -> None:
        self.conflicts += 1
        log.error("ALARM conflict: %s", conflict.detail())
        self.on_alarm()  # the uplink publishes it from the ledger (.alarms), again until acknowledged
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
