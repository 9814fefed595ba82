"""One MQTT message in, one verdict out: an event to store, a device report, or a rejection.

Pure: no I/O, no clock. Every rejection names a stable ``reason`` (the quarantine
table's) and a ``detail`` a person can act on.

>>> from agent.events import encode
>>> check("trace/v1/site-1/kiosk-1/events", b"{not json", prefix="trace/v1").reason
'malformed_json'
>>> check("trace/v1/site-1/kiosk-1/events", b"x" * 10, prefix="trace/v1", max_bytes=5).reason
'oversized'
>>> check("trace/v1/site-1/kiosk-1/status", b"online", prefix="trace/v1")
Report(device='kiosk-1', site='site-1', kind='status', body='online')
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime

import orjson

from agent.events import DOCUMENT_SCHEMA, SCHEMA, hashed_row
from agent.ledger.chain import row_hash

from .topics import Topic

#: Bigger payloads are quarantined unread. A closed document of 3,500 codes with
#: named lines is about 1.2 MB (docs/events.md), so 4 MiB leaves room.
MAX_PAYLOAD_BYTES = 4 * 1024 * 1024
#: The schema each event topic carries.
SCHEMA_OF = {"events": SCHEMA, "documents": DOCUMENT_SCHEMA}
#: Columns of ``events`` that :meth:`Event.row` fills, in order.
COLUMNS = (
    "event_id",
    "ts",
    "device_id",
    "site_id",
    "seq",
    "ledger_id",
    "schema",
    "movement",
    "verdict",
    "reason",
    "code",
    "product_id",
    "document_id",
    "hash",
    "prev_hash",
    "body",
)
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
_TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\Z")


@dataclass(frozen=True)
class Event:
    """An event that passed every check: ready to store."""

    topic: str
    event: dict
    text: str  # the payload as received: the row's ``body``
    line: bytes = b""  # :meth:`copy_line`, when made ahead

    @property
    def device(self) -> str:
        return self.event["device_id"]

    @property
    def site(self) -> str:
        return self.event["site_id"]

    @property
    def seq(self) -> int:
        return self.event["seq"]

    def row(self) -> tuple:
        """The ``events`` row, in :data:`COLUMNS` order."""
        return _row(self.event, self.text)

    def copy_line(self) -> bytes:
        """The row as a line of ``COPY ... FROM STDIN`` text format (:func:`check` makes it,
        on the checking thread, so that the writer only sends it)."""
        return self.line or copy_line(self.row())


def _row(e: dict, text: str) -> tuple:
    """The ``events`` row of event ``e`` received as ``text``, in :data:`COLUMNS` order."""
    document = e.get("document")
    return (
        e["event_id"],
        e["ts"],
        e["device_id"],
        e["site_id"],
        e["seq"],
        e["ledger_id"],
        e["schema"],
        e.get("movement"),
        e["verdict"],
        e.get("reason"),
        e.get("code"),
        e.get("product_id"),
        document.get("id") if isinstance(document, dict) else None,
        e["hash"],
        e["prev_hash"],
        text,
    )


def copy_line(row: tuple) -> bytes:
    r"""``row`` as a line of COPY text format: NULL as ``\N``; backslash, tab, newline, CR escaped.

    >>> copy_line((None, 7, 'a\tb\\c\n'))
    b'\\N\t7\ta\\tb\\\\c\\n\n'
    >>> copy_line(("plain", None))
    b'plain\t\\N\n'
    """
    out = []
    for value in row:
        if value is None:
            out.append("\\N")
            continue
        text = value if type(value) is str else str(value)
        # Four substring tests beat a regex here (about 2 us a row against 6).
        if "\\" in text or "\t" in text or "\n" in text or "\r" in text:
            text = text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
        out.append(text)
    return ("\t".join(out) + "\n").encode()


@dataclass(frozen=True)
class Report:
    """A device's ``status`` (text) or ``health`` (a dict)."""

    device: str
    site: str
    kind: str
    body: object


@dataclass(frozen=True)
class Rejected:
    """A message not stored as an event: it goes to the quarantine, with why."""

    topic: str
    reason: str
    detail: str
    payload: bytes


def check(topic: str, payload: bytes, *, prefix: str, max_bytes: int = MAX_PAYLOAD_BYTES) -> Event | Report | Rejected:
    """What to do with one message received on ``topic``."""

    def reject(reason: str, detail: str) -> Rejected:
        return Rejected(topic, reason, detail, payload)

    if len(payload) > max_bytes:
        return reject("oversized", f"{len(payload)} bytes, more than the {max_bytes} taken")
    where = Topic.parse(topic, prefix)
    if where is None:
        return reject("unknown_topic", f"not {prefix}/<site>/<device>/<events|documents|health|status>")
    if where.kind == "status":
        try:
            return Report(where.device, where.site, "status", payload.decode("utf-8"))
        except UnicodeDecodeError as problem:
            return reject("malformed_status", f"not UTF-8: {problem}")
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError as problem:
        return reject("malformed_json", str(problem))
    if not isinstance(body, dict):
        return reject("malformed_json", f"a JSON {type(body).__name__}, not an object")
    for key, part in (("device_id", where.device), ("site_id", where.site)):
        if key in body and body[key] != part:
            return reject("topic_mismatch", f"{key} {body[key]!r} on the topic of {part!r}")
    if where.kind == "health":
        return Report(where.device, where.site, "health", body)
    problem = _malformed(body, SCHEMA_OF[where.kind])
    if problem:
        return reject("invalid_event", problem)
    try:
        expected = row_hash(hashed_row(body))
    except (KeyError, TypeError, AttributeError, ValueError) as error:
        return reject("invalid_event", f"cannot rebuild the hashed row: {type(error).__name__} {error}")
    if expected != body["hash"]:
        return reject("hash_mismatch", f"hash {body['hash']} but the event hashes to {expected}")
    text = payload.decode("utf-8")
    # PostgreSQL's text and jsonb cannot hold NUL; say so here rather than fail the batch.
    if "\\u0000" in text:
        return reject("unstorable", "a string holds U+0000, which PostgreSQL text cannot store")
    return Event(topic, body, text, copy_line(_row(body, text)))


def _malformed(event: dict, schema: str) -> str:
    """What is wrong with the envelope the collector relies on, or ''.

    >>> _malformed({"schema": "scan-event/1"}, "scan-event/1")
    'event_id: missing'
    """
    if event.get("schema") != schema:
        return f"schema {event.get('schema')!r} on a topic of {schema}"
    for key in ("event_id", "seq", "ledger_id", "device_id", "site_id", "ts", "hash", "prev_hash", "verdict"):
        if key not in event:
            return f"{key}: missing"
    if not (type(event["event_id"]) is str and _UUID.match(event["event_id"])):
        try:  # the other spellings PostgreSQL's uuid takes too (upper case, braces, no hyphens)
            uuid.UUID(event["event_id"])
        except (ValueError, TypeError, AttributeError):
            return f"event_id: {event['event_id']!r} is not a UUID"
    for key in ("seq", "ledger_id"):
        value = event[key]
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value < 2**63:
            return f"{key}: {value!r} is not a whole number from 1"
    for key in ("device_id", "site_id", "verdict"):
        if not isinstance(event[key], str) or not event[key]:
            return f"{key}: {event[key]!r} is not a non-empty string"
    ts = event["ts"]
    if not isinstance(ts, str) or not _TS.match(ts):
        return f"ts: {ts!r} is not YYYY-MM-DDTHH:MM:SS.mmmZ"
    try:
        datetime.fromisoformat(ts[:-1] + "+00:00")
    except ValueError as problem:
        return f"ts: {problem}"
    for key in ("hash", "prev_hash"):
        if not isinstance(event[key], str) or not _HEX64.match(event[key]):
            return f"{key}: not 64 lowercase hex digits"
    return ""
