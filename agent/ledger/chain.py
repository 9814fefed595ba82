"""The hash chain an auditor reads: each scan row hashes its contents and the row before.

Altering, inserting or deleting a row in the middle breaks the chain at that
row, and :func:`verify` names it. What a chain cannot see is its own **tail
cut off**: delete the newest scans and what is left still verifies, because
nothing on the kiosk remembers that they existed. That is caught past the
kiosk: every event carries its ``seq`` and ``hash``, so the back end, holding
events up to seq N, finds a ledger that ends before N (or that reuses a seq
with another hash) when it next hears from the device.

>>> row = {name: None for name in HASHED} | {"id": 1, "prev_hash": GENESIS}
>>> len(row_hash(row))
64
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field

import orjson

GENESIS = "0" * 64

#: Columns covered by each row's hash, in the order they are stored.
HASHED = (
    "id",
    "seq",
    "event_id",
    "device_id",
    "site_id",
    "ts",
    "clock_synced",
    "movement",
    "verdict",
    "reason",
    "detail",
    "code",
    "raw",
    "kind",
    "product_id",
    "serial",
    "symbology",
    "ais",
    "source_kind",
    "source_id",
    "operator",
    "bill",
    "earlier_id",
    "prev_hash",
)
#: Columns added later (schema 4), covered by the hash only where they are not NULL:
#: a row written before they existed keeps the hash it was written with.
HASHED_WHEN_SET = ("document", "record")


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of :func:`verify`: ``ok`` and, if not, the first bad row."""

    rows: int
    ok: bool
    bad_id: int | None = None
    problem: str = ""
    problems: list[str] = field(default_factory=list)


def canonical(row: Mapping) -> bytes:
    """The bytes a row's hash covers: its hashed columns as JSON, keys sorted, no spaces, UTF-8.

    Exactly ``json.dumps(..., sort_keys=True, separators=(",", ":"), ensure_ascii=False)``
    encoded as UTF-8, which any back end can recompute; made by orjson, which takes a
    fifth of the time on the scan path (the columns are strings, integers and None,
    for which the two give the same bytes). Of :data:`HASHED_WHEN_SET`, only the
    columns that are set (not None, and present in ``row``) are included.
    """
    data = {k: row[k] for k in HASHED}
    keys = row.keys()
    for k in HASHED_WHEN_SET:
        if k in keys and row[k] is not None:
            data[k] = row[k]
    return orjson.dumps(data, option=orjson.OPT_SORT_KEYS)


def row_hash(row: Mapping) -> str:
    """SHA-256 of the canonical JSON of a row's hashed columns (``prev_hash`` included)."""
    return hashlib.sha256(canonical(row)).hexdigest()


def verify(conn: sqlite3.Connection) -> VerifyResult:
    """Recompute the hash chain and check ``seq`` continuity, each imported manifest's
    codes against the digest its chained row recorded, and that ``peer_events`` (the
    site's other stations, outside this chain) is append-only and unaltered
    (:func:`agent.ledger.peers.check`).

    Returns at the first broken link, naming the row. A tail cut off is not a
    broken link (see the module's docstring): the back end's seq check finds it.
    """
    prev_hash = GENESIS
    prev_id = 0
    last_seq: dict[str, int] = {}
    rows = 0
    for row in conn.execute("SELECT * FROM scans ORDER BY id"):
        rows += 1
        scan_id = row["id"]
        problem = ""
        if scan_id != prev_id + 1:
            problem = f"rows {prev_id + 1}..{scan_id - 1} are missing"
        elif row["prev_hash"] != prev_hash:
            problem = "prev_hash does not match the hash of the row before"
        elif row_hash(row) != row["hash"]:
            problem = "contents do not match its hash (altered)"
        elif row["seq"] is not None and row["seq"] != last_seq.get(row["device_id"], 0) + 1:
            problem = f"seq {row['seq']} follows {last_seq.get(row['device_id'], 0)} for {row['device_id']}"
        if problem:
            return VerifyResult(
                rows=rows, ok=False, bad_id=scan_id, problem=f"scan id {scan_id} (seq {row['seq']}): {problem}"
            )
        if row["seq"] is not None:
            last_seq[row["device_id"]] = row["seq"]
        prev_hash, prev_id = row["hash"], scan_id
    # A manifest's codes live beside the chain; its chained row holds their digest.
    from agent.ledger.receiving import check_manifests

    problems = check_manifests(conn)
    # The site's peers' events live beside it too: append-only, chained row to row.
    from agent.ledger.peers import check as check_peers

    problems += check_peers(conn)
    if problems:
        return VerifyResult(rows=rows, ok=False, problem=problems[0], problems=problems)
    return VerifyResult(rows=rows, ok=True)
