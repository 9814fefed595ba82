"""Alarms out on ``{p}/alarms``: published from the ledger until the broker acknowledges them.

An alarm is raised in a ledger transaction (a ``conflict``: :mod:`agent.ledger.peers`) and
published afterwards. Whoever raises one only pokes :class:`AlarmSender`; the uplink thread
reads the alarms not yet acknowledged (:func:`agent.ledger.alarms.undelivered`) and hands
each to uplink-net (:meth:`~.connection.Connection.send_tracked`); a PUBACK with a success
code records it in ``alarm_deliveries``. One not acknowledged within :data:`RETRY_S` (a
crash before the publish, a connection lost with it, a refusal) goes again, so an alarm is
delivered at least once: consumers keep alarms by ``(device_id, alarm_id)`` and drop copies.

Bounded: at most :data:`ROUND` alarms a round, a round when poked (a new alarm, a new
connection) or every :data:`CHECK_S`; only the kinds in
:data:`agent.ledger.alarms.PUBLISHED` go out (others are in the ledger and health).

>>> row = {"id": 4, "ts": "2026-11-30T08:00:00.000Z", "kind": "conflict", "detail": "d",
...        "record": '{"code": "81234567890123456789", "local": {}, "peer": {}}'}
>>> event = alarm_event(row, device_id="kiosk-1", site_id="site-1")
>>> event["schema"], event["alarm_id"], event["code"]
('alarm/1', 4, '81234567890123456789')
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

import orjson
import paho.mqtt.client as mqtt

from agent.clock import iso
from agent.events import encode
from agent.ledger import alarms
from agent.ledger.outbox import Outbox

from .topics import Topics

log = logging.getLogger(__name__)

#: The schema of an alarm event on ``{p}/alarms`` (docs/events.md).
ALARM_SCHEMA = "alarm/1"
#: An alarm published and not acknowledged within this long is published again.
RETRY_S = 30.0
#: Even unpoked, the ledger is read for alarms not acknowledged this often (a safety net).
CHECK_S = 60.0
#: At most this many alarms published a round.
ROUND = 100


def alarm_event(row: Mapping, *, device_id: str, site_id: str) -> dict:
    """The ``alarm/1`` event for an ``alarms`` row (its ``record`` names the two scans)."""
    record = orjson.loads(row["record"]) if row["record"] else {}
    return {
        "schema": ALARM_SCHEMA,
        "kind": row["kind"],
        "alarm_id": row["id"],
        "ts": row["ts"],
        "device_id": device_id,
        "site_id": site_id,
        "code": record.get("code"),
        "detail": row["detail"],
        "local": record.get("local"),
        "peer": record.get("peer"),
    }


class AlarmSender:
    """Publishes the ledger's unacknowledged alarms, and records their PUBACKs.

    Threads: :meth:`send_due`, :meth:`settle` and :meth:`next_due` on the uplink thread
    (with its outbox's connection); :meth:`acknowledged` on uplink-net (the PUBACK of a
    tracked send); :meth:`poke` on any thread. ``send(topic, payload, alarm_id)`` is
    :meth:`~.connection.Connection.send_tracked`; ``wake()`` wakes the uplink thread.
    """

    def __init__(
        self,
        topics: Topics,
        *,
        device_id: str,
        site_id: str,
        send: Callable[[str, bytes, int], None],
        wake: Callable[[], None] = lambda: None,
    ) -> None:
        self.topics = topics
        self.device_id = device_id
        self.site_id = site_id
        self.send = send
        self.wake = wake
        self._sent: dict[int, float] = {}  # alarm id -> when (monotonic) it went out (uplink thread)
        self._acks: collections.deque[tuple[int, mqtt.ReasonCode]] = collections.deque()  # uplink-net -> uplink
        self._check_at = 0.0  # the uplink thread reads the ledger at or after this (monotonic)
        #: Counts since start.
        self.published = 0
        self.delivered = 0
        self.refused = 0

    def poke(self) -> None:
        """A new alarm, or a new connection: look at the ledger now (any thread)."""
        self._check_at = 0.0
        self.wake()

    def acknowledged(self, alarm_id: int, reason: mqtt.ReasonCode) -> None:
        """The PUBACK of alarm ``alarm_id`` (uplink-net)."""
        self._acks.append((alarm_id, reason))
        self.wake()

    def next_due(self) -> float:
        """When (monotonic) :meth:`send_due` has something to do unless poked."""
        return min((self._check_at, *(at + RETRY_S for at in self._sent.values())))

    def send_due(self, outbox: Outbox) -> int:
        """Publish the alarms not acknowledged and not in flight (uplink thread); returns how many."""
        now = time.monotonic()
        if now < self.next_due():
            return 0
        self._check_at = now + CHECK_S
        sent = 0
        for row in alarms.undelivered(outbox.conn, limit=ROUND + len(self._sent)):
            at = self._sent.get(row["id"])
            if at is not None and now < at + RETRY_S:
                continue  # in flight
            if at is not None:
                log.warning("alarm %d not acknowledged in %.0f s: publishing it again", row["id"], RETRY_S)
            event = alarm_event(row, device_id=self.device_id, site_id=self.site_id)
            self.send(self.topics.alarms, encode(event), row["id"])
            self._sent[row["id"]] = now
            sent += 1
            if sent >= ROUND:
                self._check_at = now  # more next round
                break
        self.published += sent
        return sent

    def settle(self, outbox: Outbox) -> None:
        """Record the alarms acknowledged since the last call (uplink thread)."""
        done = []
        while self._acks:
            alarm_id, reason = self._acks.popleft()
            if reason.is_failure:
                self.refused += 1
                log.warning("broker refused alarm %d: %s; publishing it again in %.0f s", alarm_id, reason, RETRY_S)
                continue  # stays in _sent: the retry time
            done.append(alarm_id)
        if not done:
            return
        alarms.mark_delivered(outbox.conn, done, ts=iso(datetime.now(UTC)))
        for alarm_id in done:
            self._sent.pop(alarm_id, None)
        self.delivered += len(done)
