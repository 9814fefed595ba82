"""Receipts: what the back end says it has stored, and sending again what it has not.

With ``[mqtt] receipts = true`` the uplink subscribes to ``{p}/receipt``. The
collector publishes ``{"stored_through_seq": N}`` there (QoS 1, retained) after
each commit: every event of this device up to seq N is stored. An event that
was delivered (its PUBACK recorded in ``deliveries``) but whose seq is above N
is *unconfirmed*: the broker took it and may have lost it (a broker without
persistence, or one restarted without its sessions).

Each receipt that moves forward is recorded in the ledger's append-only
``receipts`` table, on the uplink thread's own connection; at most once per
:data:`RECORD_EVERY_S`, since a collector may publish a receipt per commit.
A receipt that does not parse, goes backwards, or names a seq this device
never produced is logged and ignored.

Sending again goes in *rounds* of at most :data:`RESEND_ROUND` events, the
oldest unconfirmed first, through the window (so the same ``max_inflight``
limit holds, and an event already busy is not sent twice at once):

- a round starts once the connection has been up ``receipt_timeout_s`` without
  a receipt moving forward (start, each reconnection, each receipt that moves
  forward and each round restart that clock);
- when a receipt covers the whole round, the next round (if events delivered
  more than ``receipt_timeout_s`` ago are still unconfirmed) starts at once:
  receipts pace the rounds, as acknowledgements pace a sliding window;
- a round that no receipt covers is sent again after ``receipt_timeout_s``
  times a factor that doubles (up to :data:`MAX_BACKOFF`) while no receipt
  moves forward, and falls back to 1 when one covers a round.

A restart loses nothing: the receipts table and ``deliveries`` say which events
are unconfirmed, and the clock starts again on the first connection.
"""

from __future__ import annotations

import collections
import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import paho.mqtt.client as mqtt

from agent.clock import iso
from agent.ledger.outbox import Outbox

log = logging.getLogger(__name__)

#: At most this many events are sent again in one round.
RESEND_ROUND = 500
#: A round no receipt covers waits ``receipt_timeout_s`` times up to this factor.
MAX_BACKOFF = 16
#: A receipt that moved forward is recorded at most this often (each record is one fsync).
RECORD_EVERY_S = 1.0
#: A receipt bigger than this is not read.
MAX_RECEIPT_BYTES = 1024
#: The same kind of bad receipt is logged at most this often.
LOG_EVERY_S = 10.0
#: What the ledger's ``receipts.source`` says for a receipt from MQTT.
SOURCE = "mqtt"


class Receipts:
    """The highest receipt, the rounds of resends, and their counters.

    Threads: :meth:`received` and :meth:`connected` on uplink-net (paho's
    callbacks); :meth:`load`, :meth:`settle`, :meth:`next_due`, :meth:`due`,
    :meth:`flush`, :meth:`unconfirmed` on the uplink thread, which owns
    ``outbox``; :attr:`stored_through` and the counters on any thread.

        receipts = Receipts(60.0, device_id="kiosk-7", wake=wake)
        receipts.load(outbox)                      # uplink, at start
        receipts.received(message)                 # uplink-net, on {p}/receipt
        receipts.settle(outbox)                    # uplink: record what moved forward
        if time.monotonic() >= receipts.next_due():
            window.queue_again(receipts.due(outbox))
    """

    def __init__(self, timeout_s: float, *, device_id: str, wake: Callable[[], None] = lambda: None) -> None:
        self.timeout_s = timeout_s
        self.device_id = device_id
        self.wake = wake
        #: The highest receipt taken (recorded, or to be recorded by :meth:`settle`).
        self.stored_through = 0
        self.resent = 0  # events sent again since start
        self.ignored = 0  # receipts ignored since start
        self._recorded = 0  # the highest receipt in the ledger
        self._record_at = 0.0  # monotonic: not before this
        self._incoming: collections.deque[bytes] = collections.deque()
        self._quiet_since = time.monotonic()  # connected, and no receipt moved forward since
        self._round_end: int | None = None  # the highest seq of the round no receipt covers yet
        self._go_on = False  # a receipt covered the round: the next may start at once
        self._factor = 1
        self._last_log: dict[str, float] = {}

    # -- uplink-net ---------------------------------------------------------------------

    def received(self, message: mqtt.MQTTMessage) -> None:
        """A message on ``{p}/receipt``: queue it for the uplink thread."""
        self._incoming.append(bytes(message.payload))
        self.wake()

    def connected(self) -> None:
        """A new connection: the timeout counts from now (no receipt could arrive before)."""
        self._quiet_since = time.monotonic()

    # -- the uplink thread ----------------------------------------------------------------

    def load(self, outbox: Outbox) -> None:
        """Start from the highest receipt in the ledger."""
        self.stored_through = self._recorded = outbox.stored_through()

    def settle(self, outbox: Outbox) -> None:
        """Take the receipts received so far: keep the highest that moves forward, ignore
        (and log) the rest, and record it if :data:`RECORD_EVERY_S` has passed."""
        if self._incoming:
            last_seq = outbox.last_seq(self.device_id)
            while self._incoming:
                self._take(self._incoming.popleft(), last_seq)
        if self.stored_through > self._recorded and time.monotonic() >= self._record_at:
            self.flush(outbox)

    def flush(self, outbox: Outbox) -> None:
        """Record the highest receipt taken, if the ledger has not got it yet."""
        if self.stored_through > self._recorded:
            outbox.record_receipt(self.stored_through, SOURCE)
            self._recorded = self.stored_through
            self._record_at = time.monotonic() + RECORD_EVERY_S

    def next_due(self) -> float:
        """When (monotonic) the uplink thread must call :meth:`settle` and :meth:`due` again.

        A round due at once is due at 0.0, the start of the monotonic clock: a caller's
        ``time.monotonic() >= next_due()`` reads its clock first, so "now" read in here
        would always be later, and the round would never start.
        """
        due = 0.0 if self._go_on else self._quiet_since + self.timeout_s * self._factor
        if self.stored_through > self._recorded:
            due = min(due, self._record_at)
        return due

    def due(self, outbox: Outbox) -> list:
        """The events to send again now, oldest first (at most :data:`RESEND_ROUND`), or []."""
        now = time.monotonic()
        if not self._go_on and now < self._quiet_since + self.timeout_s * self._factor:
            return []
        go_on, self._go_on = self._go_on, False
        # Going on after a covered round, only events delivered more than the timeout ago:
        # newer ones may simply not be stored yet. After a silence, the oldest whatever.
        delivered_by = iso(datetime.now(UTC) - timedelta(seconds=self.timeout_s)) if go_on else None
        rows = outbox.unconfirmed(self.device_id, self.stored_through, delivered_by=delivered_by, limit=RESEND_ROUND)
        self._quiet_since = now
        if not rows:
            self._round_end, self._factor = None, 1
            return []
        if self._round_end is not None:  # the last round went uncovered: wait longer next time
            self._factor = min(self._factor * 2, MAX_BACKOFF)
        self._round_end = rows[-1]["seq"]
        self.resent += len(rows)
        log.warning(
            "no receipt covers seq %d..%d after %.0f s (stored through %d): sending %d events again;"
            " next round in %.0f s unless a receipt covers them",
            rows[0]["seq"],
            rows[-1]["seq"],
            self.timeout_s,
            self.stored_through,
            len(rows),
            self.timeout_s * self._factor,
        )
        return rows

    def unconfirmed(self, outbox: Outbox) -> tuple[int, str | None]:
        """How many events are delivered but unconfirmed, and when the oldest was recorded (ISO UTC)."""
        above = self.stored_through
        return outbox.unconfirmed_count(self.device_id, above), outbox.oldest_unconfirmed_ts(self.device_id, above)

    def oldest_unconfirmed_ts(self, outbox: Outbox) -> str | None:
        """When the oldest unconfirmed event was recorded (ISO UTC), or None."""
        return outbox.oldest_unconfirmed_ts(self.device_id, self.stored_through)

    # -- inside ---------------------------------------------------------------------------

    def _take(self, payload: bytes, last_seq: int) -> None:
        seq = _parse(payload)
        if seq is None:
            self._ignore("malformed", 'receipt ignored: not {"stored_through_seq": N} with N >= 0: %r', payload[:200])
        elif seq > last_seq:
            self._ignore("unknown", "receipt ignored: seq %d was never produced here (last seq %d)", seq, last_seq)
        elif seq < self.stored_through:
            self._ignore(
                "backwards", "receipt ignored: seq %d goes backwards (stored through %d)", seq, self.stored_through
            )
        elif seq > self.stored_through:
            log.debug("receipt: stored through seq %d", seq)
            self.stored_through = seq
            self._quiet_since = time.monotonic()
            if self._round_end is not None and seq >= self._round_end:
                self._round_end, self._factor, self._go_on = None, 1, True
        # The same receipt again (retained, sent on every subscription) changes nothing.

    def _ignore(self, kind: str, message: str, *args) -> None:
        self.ignored += 1
        now = time.monotonic()
        if now - self._last_log.get(kind, float("-inf")) >= LOG_EVERY_S:
            self._last_log[kind] = now
            log.warning(message + " (%d receipts ignored since start)", *args, self.ignored)


def _parse(payload: bytes) -> int | None:
    """``N`` from ``{"stored_through_seq": N}``, or None if that is not what it says."""
    if len(payload) > MAX_RECEIPT_BYTES:
        return None
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    seq = body.get("stored_through_seq") if isinstance(body, dict) else None
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        return None
    return seq
