"""The ledger's tables, indexes and append-only triggers, and moving an old ledger forward.

:func:`create_schema` runs at every open. On a ledger already at
:data:`SCHEMA_VERSION` it reads one pragma and returns; otherwise it adds what is
missing (tables, indexes, triggers: ``IF NOT EXISTS`` each), never rewriting a
row, so a kiosk's existing ledger keeps its history and its hash chain.

>>> import sqlite3
>>> conn = sqlite3.connect(":memory:", isolation_level=None)
>>> create_schema(conn)
>>> conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
True
"""

from __future__ import annotations

import sqlite3

SCHEMA_VERSION = 2  # 2: the alarms table

#: Tables whose rows are never updated or deleted (triggers refuse it).
APPEND_ONLY = ("scans", "outbox", "deliveries", "alarms")


def create_schema(conn: sqlite3.Connection) -> None:
    """Create the tables, indexes and append-only triggers if missing."""
    if conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
        return
    import sqlite_utils  # only when a ledger is created or migrated: it costs a tenth of a second to import

    db = sqlite_utils.Database(conn)
    conn.execute("BEGIN IMMEDIATE")
    try:
        db["scans"].create(
            {
                "id": int,
                "seq": int,
                "event_id": str,
                "device_id": str,
                "site_id": str,
                "ts": str,
                "clock_synced": int,
                "movement": str,
                "verdict": str,
                "reason": str,
                "detail": str,
                "code": str,
                "raw": str,
                "kind": str,
                "product_id": str,
                "serial": str,
                "symbology": str,
                "ais": str,
                "source_kind": str,
                "source_id": str,
                "operator": str,
                "bill": str,
                "earlier_id": int,
                "prev_hash": str,
                "hash": str,
            },
            pk="id",
            not_null={"event_id", "device_id", "site_id", "ts", "movement", "verdict", "raw", "prev_hash", "hash"},
            if_not_exists=True,
        )
        db["scans"].create_index(["event_id"], unique=True, if_not_exists=True)
        db["scans"].create_index(["device_id", "seq"], unique=True, if_not_exists=True)
        db["scans"].create_index(["ts"], if_not_exists=True)
        db["code_state"].create(
            {"code": str, "out_count": int, "out_id": int, "in_held": int, "in_id": int, "destroyed_id": int},
            pk="code",
            not_null={"out_count", "in_held"},
            defaults={"out_count": 0, "in_held": 0},
            if_not_exists=True,
        )
        db["outbox"].create(
            {"scan_id": int}, pk="scan_id", foreign_keys=[("scan_id", "scans", "id")], if_not_exists=True
        )
        db["deliveries"].create(
            {"scan_id": int, "ts": str, "reason_code": int},
            pk="scan_id",
            foreign_keys=[("scan_id", "outbox", "scan_id")],
            if_not_exists=True,
        )
        db["alarms"].create(
            {"id": int, "ts": str, "kind": str, "detail": str},
            pk="id",
            not_null={"ts", "kind", "detail"},
            if_not_exists=True,
        )
        conn.execute("CREATE INDEX IF NOT EXISTS scans_bill ON scans (bill, verdict) WHERE bill != ''")
        for table in APPEND_ONLY:
            for action in ("UPDATE", "DELETE"):
                conn.execute(
                    f"CREATE TRIGGER IF NOT EXISTS {table}_no_{action.lower()} BEFORE {action} ON {table} "
                    f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
                )
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
