"""The ledger's tables, indexes and append-only triggers, and moving an old ledger forward.

:func:`create_schema` runs at every open. On a ledger already at
:data:`SCHEMA_VERSION` it reads one pragma and returns; otherwise it creates what
is missing, or migrates an older ledger forward in one transaction. A migration
never touches a row of ``scans``: the hash chain verifies as before.

Every page a scan writes costs time before the beep and wears the SD card, so the
scan path writes few B-trees (``bench/pages.py``): an accepted scan touches
``scans``, its ``event_id`` index and the code's ``code_state`` row. The outbox is
not a table but a view: every scan with a ``seq`` is an event, and ``deliveries``
says which were delivered. ``seq`` and ``ts`` have no index; the lookups that need
them read ``scans`` by rowid, which ``seq`` and ``ts`` follow (:mod:`~agent.ledger.outbox`).

>>> import sqlite3
>>> conn = sqlite3.connect(":memory:", isolation_level=None)
>>> create_schema(conn)
>>> conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
True
"""

from __future__ import annotations

import logging
import sqlite3

log = logging.getLogger(__name__)

#: 2: the alarms table; 3: the write budget (outbox view, code_state without rowid,
#: deliveries keyed to scans, no seq or ts index); 4: documents (``document`` and
#: ``record`` columns on scans, and two partial indexes that only entry rows write);
#: 5: receiving (``manifest_codes``: the supplier's codes with level and parent);
#: 6: ``receipts``, what the back end confirmed it stored (the uplink writes it);
#: 7: ``peer_events``, the site's other stations' movements (the uplink writes it), and
#: ``alarms.record`` (what a ``conflict`` alarm names, as JSON); 8: ``peer_floors``, how far
#: each peer's seq has been heard without a gap (the uplink's peer catch-up writes it), and
#: ``alarm_deliveries``, the alarms the broker acknowledged on ``{p}/alarms``, and
#: ``peer_packs``, the codes inside the packs (cases, middle packs) a peer received.
SCHEMA_VERSION = 8

#: Tables whose rows are never updated or deleted (triggers refuse it).
APPEND_ONLY = (
    "scans",
    "deliveries",
    "alarms",
    "manifest_codes",
    "receipts",
    "peer_events",
    "alarm_deliveries",
    "peer_packs",
)

_SCANS = """
CREATE TABLE IF NOT EXISTS "scans" (
   "id" INTEGER PRIMARY KEY,
   "seq" INTEGER,
   "event_id" TEXT NOT NULL,
   "device_id" TEXT NOT NULL,
   "site_id" TEXT NOT NULL,
   "ts" TEXT NOT NULL,
   "clock_synced" INTEGER,
   "movement" TEXT NOT NULL,
   "verdict" TEXT NOT NULL,
   "reason" TEXT,
   "detail" TEXT,
   "code" TEXT,
   "raw" TEXT NOT NULL,
   "kind" TEXT,
   "product_id" TEXT,
   "serial" TEXT,
   "symbology" TEXT,
   "ais" TEXT,
   "source_kind" TEXT,
   "source_id" TEXT,
   "operator" TEXT,
   "bill" TEXT,
   "earlier_id" INTEGER,
   "prev_hash" TEXT NOT NULL,
   "hash" TEXT NOT NULL,
   "document" TEXT,
   "record" TEXT
)
"""

# Keyed by the code itself: one B-tree, where a rowid table needs a second for its key.
_CODE_STATE = """
CREATE TABLE IF NOT EXISTS "{name}" (
   "code" TEXT PRIMARY KEY,
   "out_count" INTEGER NOT NULL DEFAULT 0,
   "out_id" INTEGER,
   "in_held" INTEGER NOT NULL DEFAULT 0,
   "in_id" INTEGER,
   "destroyed_id" INTEGER
) WITHOUT ROWID
"""

_DELIVERIES = """
CREATE TABLE IF NOT EXISTS "{name}" (
   "scan_id" INTEGER PRIMARY KEY REFERENCES "scans"("id"),
   "ts" TEXT,
   "reason_code" INTEGER
)
"""

_ALARMS = """
CREATE TABLE IF NOT EXISTS "alarms" (
   "id" INTEGER PRIMARY KEY,
   "ts" TEXT NOT NULL,
   "kind" TEXT NOT NULL,
   "detail" TEXT NOT NULL,
   "record" TEXT
)
"""

# The movements other stations of the site accepted (and their voids), as their events
# said (``agent.ledger.peers``): outside this device's chain, one row per event id, written
# by the uplink's peer intake on its own connection. The pipeline reads it by code inside
# its decision; only rows that change a code's state are kept (``peers.kept``). ``hash`` is
# the peer's own row hash (checked on arrival); ``chain`` links each row to the one before
# (``peers.chain_hash``), so ``verify`` finds a row altered or deleted.
_PEER_EVENTS = """
CREATE TABLE IF NOT EXISTS "peer_events" (
   "id" INTEGER PRIMARY KEY,
   "event_id" TEXT NOT NULL UNIQUE,
   "device_id" TEXT NOT NULL,
   "site_id" TEXT NOT NULL,
   "seq" INTEGER,
   "ts" TEXT NOT NULL,
   "movement" TEXT NOT NULL,
   "verdict" TEXT NOT NULL,
   "code" TEXT NOT NULL,
   "product_id" TEXT,
   "hash" TEXT NOT NULL,
   "received_ts" TEXT NOT NULL,
   "chain" TEXT NOT NULL
)
"""

# How far each peer's events have been heard: every seq of ``device_id`` up to
# ``through_seq`` was seen (kept in ``peer_events`` or not: only state-changing events are
# stored). Written by the peer intake in the transaction that stores those events, so it
# never runs ahead of them; it only rises. Not history but a cursor (like ``code_state``):
# one row per peer, updated in place. A restart resumes catching up from it
# (``agent.sinks.uplink.catchup``) instead of asking every peer for everything again.
_PEER_FLOORS = """
CREATE TABLE IF NOT EXISTS "peer_floors" (
   "device_id" TEXT PRIMARY KEY,
   "through_seq" INTEGER NOT NULL,
   "ts" TEXT NOT NULL
) WITHOUT ROWID
"""

# The codes inside a pack a peer received (its event's ``record.pack``: the units and the
# middle packs between): each counts every peer row of the pack's code as its own
# (``agent.ledger.peers.tally``), so a unit of a case received at the dock is held at the
# counter, and a void of the case there gives them all back. Keyed by the inner code: a
# decision probes it once, a miss for a code in no peer's pack. Written by the intake.
_PEER_PACKS = """
CREATE TABLE IF NOT EXISTS "peer_packs" (
   "code" TEXT NOT NULL,
   "pack_code" TEXT NOT NULL,
   PRIMARY KEY ("code", "pack_code")
) WITHOUT ROWID
"""

# The alarms published on ``{p}/alarms`` that the broker acknowledged (a PUBACK with a
# success code), one row each, written by the uplink. An alarm without a row is published
# again (``agent.sinks.uplink.alarms``): a publish lost in a crash is not lost for good.
_ALARM_DELIVERIES = """
CREATE TABLE IF NOT EXISTS "alarm_deliveries" (
   "alarm_id" INTEGER PRIMARY KEY REFERENCES "alarms"("id"),
   "ts" TEXT NOT NULL
)
"""

# A manifest's codes, as imported; its ``manifest`` entry row in ``scans`` holds the bill
# (lines, supplier) and the digest of these rows, which ``verify`` recomputes. Keyed by
# code first: a receive looks a scanned code up here; a code may come again in a later
# bill (returned to the supplier and shipped again).
_MANIFEST_CODES = """
CREATE TABLE IF NOT EXISTS "manifest_codes" (
   "code" TEXT NOT NULL,
   "bill_code" TEXT NOT NULL,
   "level" TEXT NOT NULL,
   "parent" TEXT,
   "batch" TEXT NOT NULL DEFAULT '',
   "expiry" TEXT NOT NULL DEFAULT '',
   PRIMARY KEY ("code", "bill_code")
) WITHOUT ROWID
"""

# The back end's receipts (``{p}/receipt``): it has stored every event of this device up
# to ``stored_through_seq``. Only a receipt that moves forward is recorded, so the last
# row is the highest; written by the uplink on its own connection, never on the scan path.
_RECEIPTS = """
CREATE TABLE IF NOT EXISTS "receipts" (
   "id" INTEGER PRIMARY KEY,
   "ts" TEXT NOT NULL,
   "stored_through_seq" INTEGER NOT NULL,
   "source" TEXT NOT NULL
)
"""

_INDEXES = (
    # Event ids are unique (and increase with id): the index is their guard and their lookup.
    'CREATE UNIQUE INDEX IF NOT EXISTS "idx_scans_event_id" ON "scans" ("event_id")',
    "CREATE INDEX IF NOT EXISTS scans_bill ON scans (bill, verdict) WHERE bill != ''",
    # Entry rows (a document opened or closed, a void, an exception, a lock, an
    # acknowledgement) carry a ``record``; a scan does not, so neither partial
    # index costs a scan a page. One finds a document's entries, the other the
    # station's last lock or acknowledgement at start.
    'CREATE INDEX IF NOT EXISTS "scans_entries" ON "scans" ("document", "verdict") WHERE "record" IS NOT NULL',
    "CREATE INDEX IF NOT EXISTS scans_locks ON scans (verdict) WHERE verdict IN ('locked', 'acknowledged')",
    # A case's children, and a bill's codes in order (verify, reconciliation).
    'CREATE INDEX IF NOT EXISTS "manifest_children" ON "manifest_codes" ("bill_code", "parent")',
    # A decision looks a code up among the peers' movements: one index probe, a miss for
    # a code no other station moved.
    'CREATE INDEX IF NOT EXISTS "peer_events_code" ON "peer_events" ("code")',
)

#: The events to publish: every scan with a seq (all but double reads).
_OUTBOX_VIEW = 'CREATE VIEW IF NOT EXISTS "outbox" AS SELECT id AS scan_id FROM scans WHERE seq IS NOT NULL'


def create_schema(conn: sqlite3.Connection) -> None:
    """Create the tables, indexes and append-only triggers, or move an older ledger forward."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        if version:
            log.warning("ledger: moving schema %d forward to %d (once; scans are not touched)", version, SCHEMA_VERSION)
        if version and version < 3:
            _migrate_to_3(conn)
        if version and version < 4:
            _migrate_to_4(conn)
        if version and version < 7:
            _migrate_to_7(conn)
        seed_floors = version == 7
        conn.execute(_SCANS)
        conn.execute(_CODE_STATE.format(name="code_state"))
        conn.execute(_DELIVERIES.format(name="deliveries"))
        conn.execute(_ALARMS)
        conn.execute(_MANIFEST_CODES)
        conn.execute(_RECEIPTS)
        conn.execute(_PEER_EVENTS)
        conn.execute(_PEER_FLOORS)
        conn.execute(_ALARM_DELIVERIES)
        conn.execute(_PEER_PACKS)
        if seed_floors:
            _migrate_to_8(conn)
        for index in _INDEXES:
            conn.execute(index)
        conn.execute(_OUTBOX_VIEW)
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


def _migrate_to_3(conn: sqlite3.Connection) -> None:
    """From schema 1 or 2: the derived tables and indexes take their lean shape.

    ``code_state`` and ``deliveries`` are copied row for row into their new
    shape (deliveries referred to the outbox table, which becomes a view of
    ``scans``); the outbox table and the seq and ts indexes are dropped. Dropping a
    table fires no DELETE trigger, and ``scans`` keeps every row and hash.
    """
    _reshape(conn, "code_state", _CODE_STATE, "code, out_count, out_id, in_held, in_id, destroyed_id")
    _reshape(conn, "deliveries", _DELIVERIES, "scan_id, ts, reason_code")  # its triggers go with the old table
    conn.execute("DROP TABLE outbox")
    conn.execute('DROP INDEX IF EXISTS "idx_scans_device_id_seq"')
    conn.execute('DROP INDEX IF EXISTS "idx_scans_ts"')


def _migrate_to_4(conn: sqlite3.Connection) -> None:
    """From schema 3: the ``document`` and ``record`` columns, NULL in every existing row.

    Adding a column rewrites no row, and the hash of a row covers these columns
    only where they are set (:data:`agent.ledger.chain.HASHED_WHEN_SET`), so the
    chain verifies as before.
    """
    conn.execute('ALTER TABLE "scans" ADD COLUMN "document" TEXT')
    conn.execute('ALTER TABLE "scans" ADD COLUMN "record" TEXT')


def _migrate_to_7(conn: sqlite3.Connection) -> None:
    """From schema 2 to 6: ``alarms.record``, NULL in every alarm raised before.

    ``alarms`` is append-only: adding a column rewrites no row and fires no trigger.
    (A schema-1 ledger has no alarms table yet; it is created whole below.)
    """
    columns = [row[1] for row in conn.execute('PRAGMA table_info("alarms")')]
    if columns and "record" not in columns:
        conn.execute('ALTER TABLE "alarms" ADD COLUMN "record" TEXT')


def _migrate_to_8(conn: sqlite3.Connection) -> None:
    """From schema 7: ``peer_floors`` starts at each peer's highest seq in ``peer_events``.

    A schema-7 station did not track gaps; trusting what it stored (rather than starting
    every peer at 0) spares the site a resend of each peer's whole history at the upgrade.
    Events a peer published after that seq are caught up as usual.
    """
    conn.execute(
        'INSERT OR IGNORE INTO "peer_floors" (device_id, through_seq, ts)'
        " SELECT device_id, MAX(seq), MAX(received_ts) FROM peer_events WHERE seq IS NOT NULL GROUP BY device_id"
    )


def _reshape(conn: sqlite3.Connection, table: str, create: str, columns: str) -> None:
    """Copy ``table`` row for row into the shape ``create`` makes, then put the copy in its place."""
    conn.execute(create.format(name=f"{table}_v3"))
    conn.execute(f"INSERT INTO {table}_v3 SELECT {columns} FROM {table}")
    conn.execute(f"DROP TABLE {table}")
    conn.execute(f"ALTER TABLE {table}_v3 RENAME TO {table}")
