"""The database schema: numbered SQL files in ``collector/migrations``, applied once each.

>>> [name for name, _ in migrations()][:1]
['0001_initial']
>>> month_bounds("2026-12")
('events_2026_12', '2026-12-01', '2027-01-01')
"""

from __future__ import annotations

from importlib import resources

import psycopg
from psycopg import sql

#: Serialises migrations between collectors starting at once (any fixed number).
_MIGRATE_LOCK = 0x5CA1_0001


def migrations() -> list[tuple[str, str]]:
    """``(name, sql)`` of every migration, in order."""
    files = resources.files("collector") / "migrations"
    return sorted((f.name.removesuffix(".sql"), f.read_text()) for f in files.iterdir() if f.name.endswith(".sql"))


def migrate(conn: psycopg.Connection) -> list[str]:
    """Apply the migrations not applied yet, each in its own transaction; return their names."""
    applied = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATE_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations"
            " (name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {name for (name,) in conn.execute("SELECT name FROM schema_migrations")}
        for name, text in migrations():
            if name in done:
                continue
            with conn.transaction():
                conn.execute(text)
                conn.execute("INSERT INTO schema_migrations (name) VALUES (%s)", (name,))
            applied.append(name)
    return applied


def month_bounds(month: str) -> tuple[str, str, str]:
    """The partition for ``YYYY-MM``: its table name and its bounds (UTC dates)."""
    year, mon = int(month[:4]), int(month[5:7])
    following = f"{year + 1:04d}-01-01" if mon == 12 else f"{year:04d}-{mon + 1:02d}-01"
    return f"events_{year:04d}_{mon:02d}", f"{year:04d}-{mon:02d}-01", following


def ensure_month(conn: psycopg.Connection, month: str) -> None:
    """Make the partition of ``events`` for ``YYYY-MM`` if it is not there (its own transaction).

    Two collectors may race to make it: the loser's error is the winner's table.
    """
    name, start, end = month_bounds(month)
    statement = sql.SQL("CREATE TABLE IF NOT EXISTS {} PARTITION OF events FOR VALUES FROM ({}) TO ({})").format(
        sql.Identifier(name), sql.Literal(start + " 00:00:00+00"), sql.Literal(end + " 00:00:00+00")
    )
    try:
        with conn.transaction():
            conn.execute(statement)
    except (psycopg.errors.DuplicateTable, psycopg.errors.UniqueViolation, psycopg.errors.InvalidObjectDefinition):
        # InvalidObjectDefinition: another collector's partition for this month now overlaps.
        pass
