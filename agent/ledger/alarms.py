"""The alarms the uplink publishes on ``{p}/alarms``, and the record of their delivery (schema 8).

An alarm row is written in the transaction that raises it (a ``conflict`` with the peer
row that caused it, :func:`agent.ledger.peers.store`). Publishing it comes after, on the
uplink's threads; a crash in between, or a broker that never acknowledged it, must not
lose it. So an alarm counts as delivered only once ``alarm_deliveries`` has its id, and
until then :func:`undelivered` offers it again.

>>> import sqlite3
>>> from agent.ledger.schema import create_schema
>>> conn = sqlite3.connect(":memory:", isolation_level=None)
>>> conn.row_factory = sqlite3.Row
>>> create_schema(conn)
>>> for n in range(3):
...     _ = conn.execute("INSERT INTO alarms (ts, kind, detail, record) VALUES ('t', 'conflict', 'd', '{}')")
>>> mark_delivered(conn, [2], ts="t")
>>> [row["id"] for row in undelivered(conn)]
[1, 3]
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

#: The kinds of alarm published on ``{p}/alarms`` (others are in the ledger and health only).
PUBLISHED = ("conflict",)


def undelivered(
    conn: sqlite3.Connection, *, after: int = 0, limit: int = 100, kinds: tuple[str, ...] = PUBLISHED
) -> list[sqlite3.Row]:
    """Alarms of ``kinds`` with ``id > after`` not acknowledged yet, oldest first."""
    marks = ", ".join("?" * len(kinds))
    return conn.execute(
        f"SELECT id, ts, kind, detail, record FROM alarms WHERE id > ? AND kind IN ({marks})"
        " AND NOT EXISTS (SELECT 1 FROM alarm_deliveries WHERE alarm_id = alarms.id) ORDER BY id LIMIT ?",
        (after, *kinds, limit),
    ).fetchall()


def mark_delivered(conn: sqlite3.Connection, alarm_ids: Iterable[int], *, ts: str) -> None:
    """Record these alarms as acknowledged by the broker, in one transaction. Idempotent."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany(
            "INSERT OR IGNORE INTO alarm_deliveries (alarm_id, ts) VALUES (?, ?)", [(i, ts) for i in alarm_ids]
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
