"""The events the uplink publishes: one JSON object per ledger row with a ``seq``.

A document opened or closed is a ``document-event/1`` (published on
``{p}/documents``, :func:`document_event_from_row`); every other row is a
``scan-event/1`` (on ``{p}/events``, :func:`scan_event_from_row`): a scan, or an
entry row (void, reversal, exception, lock, acknowledgement) that names its
document. Together the two carry the device's whole ``seq``.

Built from the ``scans`` row when it is sent, not when it is recorded, so that
``backfilled`` says whether this copy went out long after the scan. Everything
the ledger hashed is in the event, so the back end can recompute ``hash`` (see
:func:`hashed_row`, for both schemas) and spot an altered record, and spot a gap
by ``seq``. Documented in ``docs/events.md``; schemas in ``docs/event.schema.json``
and ``docs/document-event.schema.json``.

>>> from agent.ledger import Ledger
>>> from agent.read import Read
>>> from agent import codes
>>> ledger = Ledger.open(":memory:", device_id="kiosk-1", site_id="site-1")
>>> read = Read(b"81234567890123456789", "stdin", "stdin:console")
>>> _ = ledger.decide_and_record(read, "dispense", codes.parse(read.raw))
>>> row = ledger.conn.execute("SELECT * FROM scans").fetchone()
>>> event = event_from_row(row)
>>> event["seq"], event["verdict"], event["product_id"], event["backfilled"]
(1, 'accepted', '8123456', False)
>>> from agent.ledger import row_hash
>>> row_hash(hashed_row(event)) == event["hash"]
True

A document's opened row is a document event carrying the document's record:

>>> from agent.ledger.documents import read_document
>>> _ = ledger.open_document(read_document({"id": "RX1", "kind": "prescription"}), read=Read(b"", "mqtt", "mqtt"))
>>> opened = event_from_row(ledger.conn.execute("SELECT * FROM scans WHERE id = 2").fetchone())
>>> opened["schema"], opened["event"], opened["document"]["kind"], opened["seq"]
('document-event/1', 'opened', 'prescription', 2)
>>> row_hash(hashed_row(opened)) == opened["hash"]
True
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import orjson

from agent.clock import iso

SCHEMA = "scan-event/1"
DOCUMENT_SCHEMA = "document-event/1"
#: Rows with these verdicts are document events, published on ``{p}/documents``.
DOCUMENT_VERDICTS = ("opened", "closed")

#: An event published this long (wall clock) after its scan is ``backfilled``.
BACKFILL_AFTER_S = 60.0


def is_document_row(row: Mapping) -> bool:
    """Whether ``row`` is a document opened or closed (a ``document-event/1``)."""
    return row["verdict"] in DOCUMENT_VERDICTS


def event_from_row(row: Mapping, now: datetime | None = None) -> dict:
    """The event for one ``scans`` row (a :class:`sqlite3.Row` or a dict): a document
    event for a document opened or closed, a scan event for any other row."""
    if is_document_row(row):
        return document_event_from_row(row, now)
    return scan_event_from_row(row, now)


def scan_event_from_row(row: Mapping, now: datetime | None = None) -> dict:
    """The ``scan-event/1`` for one ``scans`` row.

    ``row`` may carry ``earlier_event_id`` and ``earlier_seq`` (naming the scan a
    duplicate conflicts with, or the one a void voids) and ``document_kind``, all
    joined in by :class:`agent.ledger.outbox.Outbox`.
    """
    sent_ts, backfill_before = _stamps(now or datetime.now(UTC))
    document = None
    if row["document"] is not None:
        document = {"id": row["document"], "kind": _joined(row, "document_kind")}
    return {
        "schema": SCHEMA,
        **_row_fields(row),
        "document": document,
        "record": None if row["record"] is None else orjson.loads(row["record"]),
        **_chain_fields(row, sent_ts, backfill_before),
    }


def document_event_from_row(row: Mapping, now: datetime | None = None) -> dict:
    """The ``document-event/1`` for a document's ``opened`` or ``closed`` row: the envelope of
    a scan event, ``event`` (``opened``/``closed``) and ``document``, the row's whole record."""
    sent_ts, backfill_before = _stamps(now or datetime.now(UTC))
    return {
        "schema": DOCUMENT_SCHEMA,
        "event": row["verdict"],
        **_row_fields(row),
        "document": orjson.loads(row["record"]),
        **_chain_fields(row, sent_ts, backfill_before),
    }


def _row_fields(row: Mapping) -> dict:
    """The row's own columns, as both schemas carry them (in wire order)."""
    earlier = None
    if row["earlier_id"] is not None:
        earlier = {
            "ledger_id": row["earlier_id"],
            "event_id": _joined(row, "earlier_event_id"),
            "seq": _joined(row, "earlier_seq"),
        }
    return {
        "event_id": row["event_id"],
        "seq": row["seq"],
        "device_id": row["device_id"],
        "site_id": row["site_id"],
        "ts": row["ts"],
        "clock_synced": bool(row["clock_synced"]),
        "movement": row["movement"],
        "verdict": row["verdict"],
        "reason": row["reason"],
        "detail": row["detail"],
        "code": row["code"],
        "raw": row["raw"],
        "kind": row["kind"],
        "product_id": row["product_id"],
        "serial": row["serial"],
        "symbology": row["symbology"],
        "ais": json.loads(row["ais"]) if row["ais"] else None,
        "source": {"kind": row["source_kind"], "id": row["source_id"]},
        "operator": row["operator"],
        "bill": row["bill"],
        "earlier": earlier,
    }


def _chain_fields(row: Mapping, sent_ts: str, backfill_before: str) -> dict:
    return {
        "ledger_id": row["id"],
        "hash": row["hash"],
        "prev_hash": row["prev_hash"],
        # ISO UTC times in one format compare as strings.
        "backfilled": row["ts"] < backfill_before,
        "sent_ts": sent_ts,
    }


def _joined(row: Mapping, key: str) -> object:
    """A column the outbox query joins in, or None for a row read without it."""
    # keys(): ``in`` on a sqlite3.Row looks among its values, not its column names.
    return row[key] if key in row.keys() else None  # noqa: SIM118


@functools.lru_cache(maxsize=4)
def _stamps(now: datetime) -> tuple[str, str]:
    """``sent_ts``, and the ``ts`` before which an event is backfilled (cached: a batch shares ``now``)."""
    return iso(now), iso(now - timedelta(seconds=BACKFILL_AFTER_S))


def encode(event: dict) -> bytes:
    """The wire form: compact UTF-8 JSON, keys in the event's order.

    orjson, because encoding is most of what the uplink adds to paho's own
    work per event (0.4 µs against the standard library's 6 µs here). For what
    an event holds (strings, integers, booleans, None, nested objects of those)
    the bytes are what ``json.dumps(event, ensure_ascii=False, separators=(",", ":"))``
    gives; floats and non-string keys would differ, and an event has none.

    >>> encode({"code": "81234567890123456789", "operator": "王"}).decode()
    '{"code":"81234567890123456789","operator":"王"}'
    """
    return orjson.dumps(event)


def record_json(record: Mapping) -> str:
    """An entry's record as the ledger stored and hashed it (``agent.ledger.store.record_text``):
    JSON with keys sorted at every level, no spaces, UTF-8 kept.

    >>> record_json({"status": "complete", "lines": [{"product_id": "8123456", "name": "阿莫西林"}]})
    '{"lines":[{"name":"阿莫西林","product_id":"8123456"}],"status":"complete"}'
    """
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def hashed_row(event: Mapping) -> dict:
    """The ledger row an event (either schema) stands for, as :func:`agent.ledger.row_hash` hashes it.

    A consumer checks an event with ``row_hash(hashed_row(event)) == event["hash"]``.
    ``document`` and ``record`` are in the row only when set, as the ledger hashes
    them (:data:`agent.ledger.chain.HASHED_WHEN_SET`): an event from before documents
    existed, without those fields, checks as it always did.
    """
    if event["schema"] == DOCUMENT_SCHEMA:
        record = event["document"]
        document = record["id"]  # the row's document column is the id in its record
    else:
        ref = event.get("document")
        document = None if ref is None else ref["id"]
        record = event.get("record")
    earlier = event["earlier"]
    return {
        "id": event["ledger_id"],
        "seq": event["seq"],
        "event_id": event["event_id"],
        "device_id": event["device_id"],
        "site_id": event["site_id"],
        "ts": event["ts"],
        "clock_synced": int(event["clock_synced"]),
        "movement": event["movement"],
        "verdict": event["verdict"],
        "reason": event["reason"],
        "detail": event["detail"],
        "code": event["code"],
        "raw": event["raw"],
        "kind": event["kind"],
        "product_id": event["product_id"],
        "serial": event["serial"],
        "symbology": event["symbology"],
        # The ledger stores GS1 AIs as json.dumps(..., sort_keys=True).
        "ais": json.dumps(event["ais"], sort_keys=True) if event["ais"] else None,
        "source_kind": event["source"]["kind"],
        "source_id": event["source"]["id"],
        "operator": event["operator"],
        "bill": event["bill"],
        "earlier_id": None if earlier is None else earlier["ledger_id"],
        "prev_hash": event["prev_hash"],
        "document": document,
        "record": None if record is None else record_json(record),
    }
