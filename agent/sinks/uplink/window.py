"""The window: which events are read ahead, ready to send, in flight, or refused.

The outbox in SQLite is the source of truth; the window is only a view onto
it. The uplink thread reads rows ahead from the outbox and makes them ready
(live events first, then the backlog oldest first); uplink-net sends ready rows
while the window has room and hands each PUBACK on: a success to be recorded,
a refusal back to the uplink thread, which holds the event for a while.

A row goes out on one of two topics: a document opened or closed on
``{p}/documents``, every other row on ``{p}/events`` (:mod:`agent.events`).
Both are the same kind of event to the window: one row, one QoS 1 message, one
PUBACK, one ``deliveries`` row.

An event is *busy* from the moment it is made ready until its delivery is
recorded (or it is refused), so it is never sent twice at once.
"""

from __future__ import annotations

import collections
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

import paho.mqtt.client as mqtt

from agent.events import document_event_from_row, encode, is_document_row, scan_event_from_row
from agent.ledger.outbox import Outbox

from .health import Counters
from .topics import Topics

log = logging.getLogger(__name__)

#: Backlog rows read from the ledger at a time.
READ_AHEAD = 500
#: Even with nothing to retry, walk the whole outbox this often (a safety net).
RESCAN_S = 60.0
#: Live events noted and not yet prepared; more than this and the oldest are
#: left to the backlog walk, which finds them anyway.
LIVE_QUEUE = 10_000


class Window:
    """The events between the outbox and the broker.

    Threads:

    - the pipeline thread (through :meth:`Uplink.decided`): :meth:`note_live`;
    - uplink: :meth:`prepare`, :meth:`queue_again`, :meth:`settle_refusals`, :meth:`next_due`;
    - uplink-net: :meth:`fill`, :meth:`acknowledged`, :meth:`restart`;
    - uplink-record: :meth:`recorded`;
    - any: :meth:`close`, :attr:`in_flight`, :attr:`sending`.

    ``record(scan_id, reason_code)`` is called on uplink-net for each successful
    PUBACK; ``wake_worker()`` when the uplink thread has something to do (make
    more rows ready, settle a refusal). ``topics`` says where each row goes.

        window = Window(100, topics=topics, retry_s=30, record=recorder.put)
        window.prepare(outbox)                                  # uplink
        window.fill(functools.partial(client.publish, qos=1))   # uplink-net
    """

    def __init__(
        self,
        max_inflight: int,
        *,
        topics: Topics,
        retry_s: float,
        record: Callable[[int, int], None],
        wake_worker: Callable[[], None] = lambda: None,
        counters: Counters | None = None,
    ) -> None:
        self.max_inflight = max_inflight
        self.topics = topics
        self.retry_s = retry_s
        self.record = record
        self.wake_worker = wake_worker
        self.counters = counters or Counters()
        self._live: collections.deque[int] = collections.deque(maxlen=LIVE_QUEUE)
        self._refusals: collections.deque[tuple[int, mqtt.ReasonCode]] = collections.deque()
        self._inflight: dict[int, int] = {}  # paho mid -> scan id (uplink-net only)
        # Rows ready to send (encoded by uplink-net at send time); live ones go first.
        self._ready_live: collections.deque[sqlite3.Row] = collections.deque()
        self._ready: collections.deque[sqlite3.Row] = collections.deque()
        # Scan ids ready, in flight, or acknowledged but not yet recorded.
        self._busy: set[int] = set()
        self._held: dict[int, float] = {}  # scan id refused by the broker -> monotonic retry time
        self._ahead: collections.deque[sqlite3.Row] = collections.deque()  # backlog rows read ahead
        self._cursor = 0  # the backlog has been read up to this scan id
        self._caught_up = False
        self._rescan_at = 0.0
        self._probing = True
        self._closed = False
        self._last_failure_log = float("-inf")

    # -- the pipeline thread ------------------------------------------------------

    def note_live(self, scan_id: int) -> None:
        """A new event is in the outbox: send it before the backlog."""
        self._live.append(scan_id)

    # -- the uplink thread ----------------------------------------------------------

    def prepare(self, outbox: Outbox) -> int:
        """Make the next events ready for uplink-net: live ones first, then the backlog
        oldest first. Returns how many were made ready."""
        made = 0
        for row in self._live_rows(outbox):
            self._make_ready(row, self._ready_live)
            made += 1
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
        while len(self._ready) < 2 * self.max_inflight:
            if not self._ahead:
                if self._caught_up:
                    break  # new events arrive through note_live()
                self._read_ahead(outbox)
                if not self._ahead:
                    break
            row = self._ahead.popleft()
            if row["id"] not in self._busy and row["id"] not in self._held:
                self._make_ready(row, self._ready)
                made += 1
        return made

    def _live_rows(self, outbox: Outbox) -> list[sqlite3.Row]:
        """The rows of the live events noted since the last call, not busy or held."""
        live: list[int] = []
        while self._live:
            scan_id = self._live.popleft()
            if scan_id not in self._busy and scan_id not in self._held:
                live.append(scan_id)
        if not live:
            return []
        if not self._caught_up:
            return outbox.rows(live)  # and the backlog walk finds whatever else is new
        # Caught up, every row above the cursor is new: all of them are read, not only
        # the ids noted, so that a row recorded without a decision of its own (the
        # ``locked`` row after the scan that locks the station) goes out with it.
        rows = outbox.pending(self._cursor, READ_AHEAD)
        if rows:
            self._cursor = rows[-1]["id"]
        if len(rows) == READ_AHEAD:
            self._caught_up = False  # more than a read-ahead: the backlog walk goes on from here
        return [row for row in rows if row["id"] not in self._busy and row["id"] not in self._held]

    def queue_again(self, rows: Iterable[sqlite3.Row]) -> int:
        """Send these rows again, delivered or not (``resend``, receipts): after the live
        events (a peer's catch-up must not hold this station's new scans back) and the rows
        already ready (at most twice the window of backlog), before the rest of the backlog.
        Rows already busy are skipped; returns how many were queued.

        Behind the ready rows, not in front of them: rounds of resends that come faster than
        the window drains would keep the oldest ready rows back for good, and a request for
        those is skipped, as they are busy (the power-cut suite, on a slow VM: a backlog's
        seq 1193..1392 asked for 30 times in three minutes and never sent)."""
        again = [row for row in rows if row["id"] not in self._busy]
        for row in again:
            self._busy.add(row["id"])
        self._ready.extend(again)
        return len(again)

    def settle_refusals(self) -> None:
        """Hold the events the broker refused, to be sent again after ``retry_s``."""
        while self._refusals:
            scan_id, reason = self._refusals.popleft()
            self._refused(scan_id, reason)
            self._busy.discard(scan_id)

    def next_due(self) -> float:
        """When (monotonic) :meth:`prepare` must run again though nobody asked: a held
        event's retry, or the periodic walk of the whole outbox."""
        return min((self._rescan_at, *self._held.values()))

    def _make_ready(self, row: sqlite3.Row, ready: collections.deque) -> None:
        self._busy.add(row["id"])
        ready.append(row)

    def _read_ahead(self, outbox: Outbox) -> None:
        top = outbox.newest()
        rows = outbox.pending(self._cursor, READ_AHEAD)
        self._ahead.extend(rows)
        if rows:
            self._cursor = rows[-1]["id"]
        if len(rows) < READ_AHEAD:
            # Caught up: every event recorded after ``top`` comes through note_live().
            self._cursor, self._caught_up = max(self._cursor, top), True

    def _refused(self, scan_id: int, reason: mqtt.ReasonCode) -> None:
        self.counters.failures += 1
        self._held[scan_id] = time.monotonic() + self.retry_s
        now = time.monotonic()
        if now - self._last_failure_log >= 10.0:
            self._last_failure_log = now
            log.warning(
                "broker refused event (scan id %d): %s (reason code 0x%02x); NOT delivered, retrying in %.0f s"
                " (%d refusals since start)",
                scan_id,
                reason,
                reason.value,
                self.retry_s,
                self.counters.failures,
            )

    # -- uplink-net ---------------------------------------------------------------

    def fill(self, publish: Callable[[str, bytes], mqtt.MQTTMessageInfo]) -> bool:
        """Publish ready events while the window has room (``publish(topic, payload)``
        is paho's QoS 1 publish).

        Returns whether the window still has room while the backlog is not all
        read: then rows are on their way, and uplink-net should look again soon.
        """
        if self._closed:
            return False
        # One event first on each connection: a broker that refuses it and then
        # drops us (mosquitto on an ACL denial) still gets its refusal out.
        room = (1 if self._probing else self.max_inflight) - len(self._inflight)
        took = False
        now = datetime.now(UTC)
        while room > 0:
            if self._ready_live:
                row = self._ready_live.popleft()
            elif self._ready:
                row = self._ready.popleft()
            else:
                break
            took = True
            scan_id = row["id"]
            # Encoded here, on the thread that sends, so that the send path never
            # waits for another thread to hand back the GIL.
            info = publish(*self._message(row, now))
            if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
                log.warning("paho refused event (scan id %d): %s", scan_id, mqtt.error_string(info.rc))
                self._busy.discard(scan_id)  # sent again on the next walk of the outbox
                continue
            # Any other result (success, no connection, connection lost): paho
            # holds the message and sends it again after reconnecting.
            self._inflight[info.mid] = scan_id
            self.counters.published += 1
            room -= 1
        if took and len(self._ready) < self.max_inflight:
            # The uplink thread prepares more. Only after taking some: it fills
            # the queue until it is full or the backlog is all read, so waking
            # it for a queue it left short would only cost a wake-up.
            self.wake_worker()
        return room > 0 and (not self._caught_up or bool(self._ahead))

    def _message(self, row: sqlite3.Row, now: datetime) -> tuple[str, bytes]:
        """The topic and payload for one row: a document event or a scan event."""
        if is_document_row(row):
            return self.topics.documents, encode(document_event_from_row(row, now))
        return self.topics.events, encode(scan_event_from_row(row, now))

    def acknowledged(self, mid: int, reason: mqtt.ReasonCode) -> bool:
        """A PUBACK arrived. Returns False if ``mid`` was not an event's (a status,
        health or reply message)."""
        scan_id = self._inflight.pop(mid, None)
        if scan_id is None:
            return False
        self._probing = False
        if reason.is_failure:
            self._refusals.append((scan_id, reason))
            self.wake_worker()
        else:
            self.record(scan_id, reason.value)  # stays busy until recorded
        return True

    def restart(self) -> None:
        """A new connection: probe with one event, and walk the outbox from the oldest
        again (paho resends its own window)."""
        self._rescan_at = 0.0
        self._probing = True

    # -- uplink-record --------------------------------------------------------------

    def recorded(self, scan_ids: Iterable[int]) -> None:
        """These events' deliveries are recorded (or failed to be, and wait for the next walk)."""
        for scan_id in scan_ids:
            self._busy.discard(scan_id)

    # -- any thread -------------------------------------------------------------------

    def close(self) -> None:
        """Send no more events."""
        self._closed = True

    @property
    def in_flight(self) -> int:
        """Events published and not yet acknowledged."""
        return len(self._inflight)

    @property
    def sending(self) -> bool:
        """Whether events are in flight or ready to go."""
        return bool(self._inflight or self._ready_live or self._ready)
