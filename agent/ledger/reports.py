"""Documents as the ledger's rows tell them: what ``scan-agent documents list``, ``show``
and ``export`` print. Read-only: every function takes a connection and only reads.

One document is open at a time, so a document's scans all lie between its ``opened``
and ``closed`` rows: a document is read by that range of ids, never by a scan of the
whole ledger. Its entry rows (opened, closed, voids, reversals, exceptions) are found
through the entry-row index; a reversal comes after the close.

>>> from agent import codes
>>> from agent.ledger import Ledger
>>> from agent.ledger.documents import read_document
>>> from agent.read import Read
>>> ledger = Ledger.open(":memory:", device_id="k", site_id="s")
>>> cli = Read(b"", "cli", "cli")
>>> _ = ledger.open_document(read_document({"id": "S-1", "kind": "sale",
...     "lines": [{"product_id": "8123456", "name": "Amoxicillin", "expected": 2}]}), read=cli)
>>> scan = Read(b"81234567890123456789", "stdin", "stdin")
>>> _ = ledger.decide_and_record(scan, "dispense", codes.parse(scan.raw))
>>> [(d["id"], d["status"], d["collected"], d["expected"]) for d in list_documents(ledger.conn)]
[('S-1', 'open', 1, 2)]
>>> [row["drug_trac_codg"] for row in export_codes(ledger.conn)]
['81234567890123456789']
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator

from agent.ledger.documents import Document, DocumentError, OpenDocument, replay
from agent.ledger.store import entry_row

#: ``documents export``: one row per code of a document (the 3505/3506 upload's
#: ``drugtracinfo``, with the scan that collected it); ``reversed_by`` names a
#: reversal made after the document closed.
EXPORT_COLUMNS = (
    "document",
    "kind",
    "movement",
    "status",
    "opened_ts",
    "closed_ts",
    "product_id",
    "name",
    "drug_trac_codg",
    "trdn_flag",
    "event_id",
    "seq",
    "ts",
    "reversed_by",
)

_ENTRY = (
    "SELECT id, event_id, seq, ts, verdict, reason, document, record, earlier_id, source_kind, source_id, operator"
    " FROM scans"
)


def list_documents(conn: sqlite3.Connection) -> list[dict]:
    """Every document, oldest first: id, kind, opened and closed ts, status, collected/expected.

    ``status`` is ``open`` for the open one, else as it closed; ``reversals`` counts
    scans reversed after the close.
    """
    # Named: on its own the planner reads all of scans for this, not the small entry-row index.
    entries = conn.execute(
        f"{_ENTRY} INDEXED BY scans_entries"
        " WHERE record IS NOT NULL AND verdict IN ('opened', 'closed', 'reversal') ORDER BY id"
    ).fetchall()
    found: dict[str, dict] = {}
    open_one: tuple[dict, sqlite3.Row] | None = None
    for row in entries:
        doc_id, verdict = row["document"], row["verdict"]
        if verdict == "opened":
            record = json.loads(row["record"])
            found[doc_id] = item = {
                "id": doc_id,
                "kind": record["kind"],
                "opened_ts": row["ts"],
                "closed_ts": None,
                "status": "open",
                "collected": 0,
                "expected": sum(line["expected"] for line in record["lines"]) or None,
                "reversals": 0,
            }
            open_one = (item, row)
        elif doc_id in found and verdict == "closed":
            record = json.loads(row["record"])
            found[doc_id].update(
                closed_ts=row["ts"], status=row["reason"], collected=record["collected"], expected=record["expected"]
            )
            open_one = None
        elif doc_id in found:
            found[doc_id]["reversals"] += 1
    if open_one is not None:
        item, opened = open_one
        item["collected"] = _replay(conn, opened, None)[0].progress()["collected"]
    return list(found.values())


def show_document(conn: sqlite3.Connection, doc_id: str) -> dict:
    """One document with its lines, progress, codes, voids and exceptions (JSON-ready).

    Raises :class:`DocumentError` (field ``id``) when no document has that id.
    """
    opened = entry_row(conn, doc_id, "opened")
    if opened is None:
        raise DocumentError("id", f"no document has id {doc_id}")
    closed = entry_row(conn, doc_id, "closed")
    doc, times, rejected = _replay(conn, opened, closed)
    reversals = conn.execute(
        f"{_ENTRY} WHERE record IS NOT NULL AND document = ? AND verdict = 'reversal' ORDER BY id", (doc_id,)
    ).fetchall()
    reversed_by = {row["earlier_id"]: row["event_id"] for row in reversals}
    progress = doc.progress()
    voids = [_void("void", v) for v in doc.voids] + [
        _void("reversal", {"event_id": r["event_id"], "ts": r["ts"], **json.loads(r["record"])}) for r in reversals
    ]
    closed_record = None if closed is None else json.loads(closed["record"])
    return {
        "id": doc.id,
        "kind": doc.document.kind,
        "movement": doc.document.movement,
        "ref": dict(doc.document.ref),
        "status": "open" if closed is None else closed["reason"],
        "opened": _who(opened),
        "closed": None if closed is None else {**_who(closed), "closed_by": closed_record.get("closed_by")},
        "progress": {k: progress[k] for k in ("collected", "expected", "complete")},
        "lines": [
            {
                **line.to_dict(),
                "collected": doc.count(line.product_id),
                "exceptions": doc.excepted[line.product_id],
            }
            for line in doc.document.lines
        ],
        "codes": [
            {
                "drug_trac_codg": scan.code,
                "product_id": scan.product_id,
                "trdn_flag": doc.trdn_flag(scan.product_id),
                "event_id": scan.event_id,
                "seq": scan.seq,
                "ts": times[scan_id],
                "reversed_by": reversed_by.get(scan_id),
                "level": scan.level,
                "units": max(len(scan.units), 1),
            }
            for scan_id, scan in doc.scans.items()
        ],
        "voids": voids,
        "exceptions": list(doc.exceptions),
        "rejected": rejected,
        "manifest": doc.document.manifest or None,
        "no_manifest": doc.document.kind == "delivery" and not doc.document.manifest,
        # A delivery against a manifest: how it matched, worked out at the close.
        "reconciliation": None if closed_record is None else closed_record.get("reconciliation"),
    }


def export_codes(conn: sqlite3.Connection, doc_id: str | None = None, *, closed_only: bool = False) -> Iterator[dict]:
    """One row per code of each document (or of ``doc_id``), in :data:`EXPORT_COLUMNS`."""
    ids = [doc_id] if doc_id is not None else [d["id"] for d in list_documents(conn)]
    for one in ids:
        doc = show_document(conn, one)
        if closed_only and doc["closed"] is None:
            continue
        names = {line["product_id"]: line["name"] for line in doc["lines"]}
        for code in doc["codes"]:
            yield {
                "document": doc["id"],
                "kind": doc["kind"],
                "movement": doc["movement"],
                "status": doc["status"],
                "opened_ts": doc["opened"]["ts"],
                "closed_ts": None if doc["closed"] is None else doc["closed"]["ts"],
                "product_id": code["product_id"],
                "name": names.get(code["product_id"], ""),
                "drug_trac_codg": code["drug_trac_codg"],
                "trdn_flag": code["trdn_flag"],
                "event_id": code["event_id"],
                "seq": code["seq"],
                "ts": code["ts"],
                "reversed_by": code["reversed_by"],
            }


def _replay(
    conn: sqlite3.Connection, opened: sqlite3.Row, closed: sqlite3.Row | None
) -> tuple[OpenDocument, dict[int, str], int]:
    """The document as its rows up to the close build it (as the ledger rebuilds an open
    one at start), the ts of each scan it collected, and how many scans it refused."""
    doc = OpenDocument(Document.from_record(json.loads(opened["record"])), opened_id=opened["id"])
    end = "" if closed is None else " AND id < :closed"
    rows = conn.execute(
        "SELECT id, verdict, reason, code, product_id, event_id, seq, ts, hash, earlier_id, record FROM scans"
        f" WHERE id > :opened{end} AND document = :doc ORDER BY id",
        {"opened": opened["id"], "closed": None if closed is None else closed["id"], "doc": doc.id},
    )
    rows = rows.fetchall()
    replay(doc, rows)
    times = {row["id"]: row["ts"] for row in rows if row["verdict"] == "accepted"}
    rejected = sum(row["verdict"] in ("rejected", "duplicate") for row in rows)
    return doc, times, rejected


def _who(row: sqlite3.Row) -> dict:
    """When an entry row was recorded, and from where."""
    return {
        "ts": row["ts"],
        "event_id": row["event_id"],
        "seq": row["seq"],
        "source_kind": row["source_kind"],
        "source_id": row["source_id"],
        "operator": row["operator"],
    }


def _void(kind: str, void: dict) -> dict:
    voided = void.get("voided") or {}
    return {
        "kind": kind,
        "event_id": void["event_id"],
        "ts": void.get("ts"),
        "voided": voided.get("event_id"),
        "reason": void.get("reason"),
        "approver": void.get("approver"),
    }


def code_status(conn: sqlite3.Connection, code: str) -> dict:
    """Where one code stands at this station: held or not, dispenses not returned, destroyed,
    and the scans that put it there (a unit received inside a case names the case's scan).

    Read through ``code_state`` and the ids it keeps: no walk of the ledger.
    """
    state = conn.execute(
        "SELECT out_count, out_id, in_held, in_id, destroyed_id FROM code_state WHERE code = ?", (code,)
    ).fetchone()
    if state is None:
        return {"code": code, "seen": False, "held": False, "dispensed": 0, "destroyed": False, "scans": {}}
    scans = {}
    for name, scan_id in (
        ("received", state["in_id"]),
        ("dispensed", state["out_id"]),
        ("destroyed", state["destroyed_id"]),
    ):
        if scan_id is None:
            continue
        row = conn.execute(
            "SELECT event_id, seq, ts, movement, code, document, device_id FROM scans WHERE id = ?", (scan_id,)
        ).fetchone()
        scans[name] = {**dict(row), "via": "self" if row["code"] == code else row["code"]}
    return {
        "code": code,
        "seen": True,
        "held": bool(state["in_held"]),
        "dispensed": state["out_count"],
        "destroyed": state["destroyed_id"] is not None,
        "scans": scans,
    }
