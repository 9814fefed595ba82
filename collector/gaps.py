"""Gaps: seqs missing below a device's highest stored seq, asked for again with ``cmd/resend``.

A gap is only a gap once it is older than ``gap_grace_s``: events overtake each
other (two collectors, a resend in flight). Then the collector publishes
``{p}/cmd/resend`` ``{"from_seq": a, "to_seq": b}`` (at most :data:`MAX_RESEND`
seqs per command, as the agent takes them), again after ``retry_s``, doubling
up to ``retry_max_s``. After ``give_up_after`` requests the gap is flagged
``unclosed`` for the report; it is still asked for, at the slowest pace.

The pure parts:

>>> missing(3, [4, 5, 8, 9, 12])
[(6, 7), (10, 11)]
>>> plan = reconcile([OpenGap(1, 6, 9)], [(6, 7), (10, 11)])
>>> plan.update, plan.new, plan.closed
([(1, 6, 7)], [(10, 11, None)], [])
>>> [retry_delay(n, 5, 60) for n in (1, 2, 3, 4, 5)]
[5, 10, 20, 40, 60]
>>> chunks(1, 25_000)
[(1, 10000), (10001, 20000), (20001, 25000)]
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import psycopg

log = logging.getLogger(__name__)

#: The agent's limit per resend command (agent/sinks/uplink/commands.py MAX_RESEND).
MAX_RESEND = 10_000
#: Seqs after stored_through_seq looked at per round: gaps further on wait for these to close.
WINDOW = 200_000
#: Resend commands per gap per round, at most.
MAX_CHUNKS = 10


def missing(through: int, seqs: Sequence[int]) -> list[tuple[int, int]]:
    """The runs missing after ``through`` among the stored ``seqs`` (sorted, all > through)."""
    runs, last = [], through
    for seq in seqs:
        if seq > last + 1:
            runs.append((last + 1, seq - 1))
        last = max(last, seq)
    return runs


@dataclass(frozen=True)
class OpenGap:
    id: int
    from_seq: int
    to_seq: int


@dataclass
class Plan:
    """What to change in ``gaps``: ranges that shrank or split, new ones, and those filled."""

    update: list[tuple[int, int, int]] = field(default_factory=list)  # (id, from, to)
    new: list[tuple[int, int, int | None]] = field(default_factory=list)  # (from, to, id it split from)
    closed: list[int] = field(default_factory=list)


def reconcile(open_gaps: Sequence[OpenGap], runs: Sequence[tuple[int, int]]) -> Plan:
    """Match the runs missing now to the gaps open before: a run inside an open gap is what
    is left of it (it keeps its age and its requests), any other run is new."""
    plan, used = Plan(), set()
    for start, end in runs:
        owner = next((g for g in open_gaps if g.from_seq <= end and start <= g.to_seq), None)
        if owner is None:
            plan.new.append((start, end, None))
        elif owner.id in used:
            plan.new.append((start, end, owner.id))
        else:
            used.add(owner.id)
            if (owner.from_seq, owner.to_seq) != (start, end):
                plan.update.append((owner.id, start, end))
    plan.closed = [g.id for g in open_gaps if g.id not in used]
    return plan


def retry_delay(requests: int, retry_s: float, retry_max_s: float) -> float:
    """How long after its ``requests``-th resend a gap is asked for again."""
    return min(retry_max_s, retry_s * 2 ** (requests - 1))


def chunks(start: int, end: int, size: int = MAX_RESEND) -> list[tuple[int, int]]:
    """``start``..``end`` in resend commands of at most ``size`` seqs."""
    return [(a, min(end, a + size - 1)) for a in range(start, end + 1, size)]


class GapCloser:
    """Finds gaps and asks for them (one round per :meth:`round`).

    Threads: one thread (the collector's leader); it has its own connection.
    Only one collector of those sharing a database runs it (the leader, which
    holds an advisory lock), so a gap is asked for once, not once per collector.
    ``send(topic, body)`` publishes the command (QoS 1, not retained).
    """

    def __init__(
        self,
        conn: psycopg.Connection,
        send: Callable[[str, dict], None],
        *,
        prefix: str = "trace/v1",
        grace_s: float = 5.0,
        retry_s: float = 5.0,
        retry_max_s: float = 300.0,
        give_up_after: int = 6,
    ) -> None:
        self.conn = conn
        self.send = send
        self.prefix = prefix
        self.grace_s = grace_s
        self.retry_s = retry_s
        self.retry_max_s = retry_max_s
        self.give_up_after = give_up_after
        #: Resend commands sent since start.
        self.requests = 0

    def round(self) -> int:
        """Reconcile every device that has or had a gap, and send the resends due; return how many."""
        sent = 0
        devices = self.conn.execute(
            "SELECT device_id, site_id, stored_through_seq FROM devices d WHERE max_seq > stored_through_seq"
            " OR EXISTS (SELECT 1 FROM gaps g WHERE g.device_id = d.device_id AND g.closed_at IS NULL)"
            " ORDER BY device_id"
        ).fetchall()
        for device, site, through in devices:
            with self.conn.transaction():
                self._reconcile(device, site, through)
                sent += self._ask(device, site)
        self.requests += sent
        return sent

    def _reconcile(self, device: str, site: str, through: int) -> None:
        seqs = [
            s
            for (s,) in self.conn.execute(
                "SELECT DISTINCT seq FROM events WHERE device_id = %s AND seq > %s AND seq <= %s ORDER BY seq",
                (device, through, through + WINDOW),
            )
        ]
        open_gaps = [
            OpenGap(*row)
            for row in self.conn.execute(
                "SELECT id, from_seq, to_seq FROM gaps WHERE device_id = %s AND closed_at IS NULL ORDER BY from_seq",
                (device,),
            )
        ]
        plan = reconcile(open_gaps, missing(through, seqs))
        for gap_id, start, end in plan.update:
            self.conn.execute("UPDATE gaps SET from_seq = %s, to_seq = %s WHERE id = %s", (start, end, gap_id))
        for start, end, split_from in plan.new:
            self.conn.execute(
                "INSERT INTO gaps (device_id, site_id, from_seq, to_seq, noticed_at, requests, last_request_at)"
                " SELECT %s, %s, %s, %s, COALESCE(g.noticed_at, clock_timestamp()), COALESCE(g.requests, 0),"
                " g.last_request_at FROM (SELECT 1) one LEFT JOIN gaps g ON g.id = %s",
                (device, site, start, end, split_from),
            )
            if split_from is None:
                log.info("gap: %s seq %d..%d missing", device, start, end)
        if plan.closed:
            self.conn.execute("UPDATE gaps SET closed_at = clock_timestamp() WHERE id = ANY(%s)", (plan.closed,))

    def _ask(self, device: str, site: str) -> int:
        sent = 0
        due = self.conn.execute(
            "SELECT id, from_seq, to_seq, requests,"
            " extract(epoch FROM clock_timestamp() - noticed_at),"
            " extract(epoch FROM clock_timestamp() - last_request_at)"
            " FROM gaps WHERE device_id = %s AND closed_at IS NULL ORDER BY from_seq",
            (device,),
        ).fetchall()
        for gap_id, start, end, requests, age, since in due:
            if age < self.grace_s:
                continue
            if requests and since < retry_delay(requests, self.retry_s, self.retry_max_s):
                continue
            for a, b in chunks(start, end)[:MAX_CHUNKS]:
                self.send(f"{self.prefix}/{site}/{device}/cmd/resend", {"from_seq": a, "to_seq": b})
                sent += 1
            log.info("gap: %s seq %d..%d asked for again (request %d)", device, start, end, requests + 1)
            self.conn.execute(
                "UPDATE gaps SET requests = requests + 1, last_request_at = clock_timestamp(),"
                " unclosed = requests + 1 >= %s WHERE id = %s",
                (self.give_up_after, gap_id),
            )
        return sent
