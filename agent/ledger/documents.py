"""Documents: a sale, prescription, delivery or ward order, its expected lines, and its progress.

Pure: :func:`read_document`, :func:`read_exception` and :func:`read_void` check a
command's JSON and name the first bad field; :class:`OpenDocument` holds what a
document has collected so far and says what a scan would break (wrong drug,
over-count, full). The ledger (:mod:`agent.ledger.store`) keeps the rows; this
module only counts.

>>> doc = read_document({"id": "RX00000001", "kind": "prescription",
...     "lines": [{"product_id": "8123456", "name": "Amoxicillin", "expected": 2}]})
>>> doc.movement
'dispense'
>>> open_doc = OpenDocument(doc, opened_id=1)
>>> open_doc.refuses("81234560000000011111", "8123456")
>>> open_doc.refuses("89999990000000011111", "8999999")
('not_on_document', 'product 8999999 is on no line of prescription RX00000001 (wrong drug?)')
>>> open_doc.add(2, "81234560000000011111", "8123456", "e2", 2, "h2")
>>> open_doc.progress()["collected"], open_doc.progress()["expected"]
(1, 2)
>>> read_document({"id": "RX1", "kind": "invoice"})
Traceback (most recent call last):
agent.ledger.documents.DocumentError: kind: 'invoice' is not allowed; allowed: sale, prescription, ...
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from agent.domain import DOCUMENT_KINDS, DOCUMENT_LIMIT, DOCUMENT_STATUSES, ENTRIES

#: Ids, ref values, reasons and names longer than this are refused.
MAX_TEXT = 64
#: A line's name may be longer (a drug's full name and strength).
MAX_NAME = 200
#: Keys a document's ``ref`` may carry.
REF_KEYS = ("patient", "visit", "order", "supplier", "prescriber", "ward", "bed", "pos")
#: What an exception records: an item without a code (无码), or a code that cannot be read.
EXCEPTION_KINDS = ("uncoded", "damaged")
_PRODUCT = re.compile(r"[0-9]{7}|[0-9]{14}")
_EVENT_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class DocumentError(ValueError):
    """A document command refused; ``field`` names what was wrong. Nothing was recorded."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Line:
    """One expected line: a product, how many units, and how many scans one code may cover (拆零)."""

    product_id: str
    name: str = ""
    expected: int = 1
    split_units: int = 1

    def to_dict(self) -> dict:
        return {
            "product_id": self.product_id,
            "name": self.name,
            "expected": self.expected,
            "split_units": self.split_units,
        }


@dataclass(frozen=True)
class Document:
    """A document as opened: id, kind, refs and expected lines (none: any code counts).

    ``manifest`` is the bill code of the supplier's manifest a delivery is received
    against ("" for none: a delivery then says ``no_manifest``).
    """

    id: str
    kind: str
    ref: dict[str, str] = field(default_factory=dict)
    lines: tuple[Line, ...] = ()
    manifest: str = ""

    @property
    def movement(self) -> str:
        return DOCUMENT_KINDS[self.kind]

    def line_for(self, product_id: str) -> Line | None:
        for line in self.lines:
            if line.product_id == product_id:
                return line
        return None

    def to_record(self) -> dict:
        """What the ``opened`` row records (and :meth:`from_record` reads back)."""
        record = {
            "id": self.id,
            "kind": self.kind,
            "movement": self.movement,
            "ref": dict(self.ref),
            "lines": [line.to_dict() for line in self.lines],
        }
        if self.manifest:
            record["manifest"] = self.manifest
        elif self.kind == "delivery":
            record["no_manifest"] = True
        return record

    @classmethod
    def from_record(cls, record: Mapping) -> Document:
        return cls(
            id=record["id"],
            kind=record["kind"],
            ref=dict(record.get("ref") or {}),
            lines=tuple(Line(**line) for line in record.get("lines") or ()),
            manifest=record.get("manifest", ""),
        )


def read_document(body: Mapping) -> Document:
    """A :class:`Document` from an ``open_document`` command's JSON, or :class:`DocumentError`."""
    only_fields(body, ("id", "kind", "ref", "lines"))
    doc_id = read_text(body, "id")
    kind = body.get("kind")
    if kind not in DOCUMENT_KINDS:
        raise DocumentError("kind", f"{kind!r} is not allowed; allowed: {', '.join(DOCUMENT_KINDS)}")
    ref = body.get("ref") or {}
    if not isinstance(ref, dict):
        raise DocumentError("ref", 'must be an object, e.g. {"patient": "P-1"}')
    only_fields(ref, REF_KEYS, "ref.")
    for key in ref:
        read_text(ref, key, where="ref.")
    lines = body.get("lines") or []
    if not isinstance(lines, list):
        raise DocumentError("lines", "must be a list of objects with product_id, name, expected, split_units")
    read = tuple(_line(line, f"lines[{n}]") for n, line in enumerate(lines))
    seen: set[str] = set()
    for n, line in enumerate(read):
        if line.product_id in seen:
            raise DocumentError(f"lines[{n}].product_id", f"{line.product_id} is on an earlier line already")
        seen.add(line.product_id)
    total = sum(line.expected for line in read)
    if total > DOCUMENT_LIMIT:
        raise DocumentError("lines", f"{total} units expected; a document holds at most {DOCUMENT_LIMIT} codes")
    return Document(id=doc_id, kind=kind, ref=dict(ref), lines=read)


def _line(line: object, where: str) -> Line:
    if not isinstance(line, dict):
        raise DocumentError(where, "must be an object with product_id, name, expected, split_units")
    only_fields(line, ("product_id", "name", "expected", "split_units"), f"{where}.")
    product = line.get("product_id")
    if not isinstance(product, str) or not _PRODUCT.fullmatch(product):
        raise DocumentError(f"{where}.product_id", f"{product!r}: must be the 7-digit product id or a 14-digit GTIN")
    name = line.get("name", "")
    if not isinstance(name, str) or len(name) > MAX_NAME or not name.isprintable():
        raise DocumentError(f"{where}.name", f"must be printable text of at most {MAX_NAME} characters")
    expected = _whole(line, "expected", where, default=None)
    split = _whole(line, "split_units", where, default=1)
    return Line(product_id=product, name=name, expected=expected, split_units=split)


def _whole(body: Mapping, key: str, where: str, *, default: int | None) -> int:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value > DOCUMENT_LIMIT:
        field = f"{where}.{key}" if where else key
        raise DocumentError(field, f"{value!r} is not allowed; allowed: a whole number from 1 to {DOCUMENT_LIMIT}")
    return value


def read_text(body: Mapping, key: str, *, where: str = "", required: bool = True, limit: int = MAX_TEXT) -> str:
    """``body[key]`` if it is printable text of 1..``limit`` characters (or absent and not required: "")."""
    if key not in body and not required:
        return ""
    value = body.get(key)
    if not isinstance(value, str) or not value.strip() or len(value) > limit or not value.isprintable():
        raise DocumentError(f"{where}{key}", f"{value!r}: must be printable text of 1 to {limit} characters")
    return value


def only_fields(body: Mapping, allowed: Iterable[str], where: str = "") -> None:
    """DocumentError naming the first field of ``body`` not in ``allowed`` (``where`` prefixes its name)."""
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise DocumentError(f"{where}{unknown[0]}", f"unknown field; allowed: {', '.join(allowed)}")


@dataclass(frozen=True)
class ExceptionItem:
    """An item counted without a scan: no code on it (无码) or a code that will not read."""

    line: str
    kind: str
    reason: str
    approver: str
    units: int = 1

    def to_record(self) -> dict:
        return {
            "line": self.line,
            "kind": self.kind,
            "reason": self.reason,
            "approver": self.approver,
            "units": self.units,
        }


def read_exception(body: Mapping) -> tuple[str, ExceptionItem]:
    """``(document id, exception)`` from an ``exception`` command's JSON."""
    only_fields(body, ("document", "line", "kind", "reason", "approver", "units"))
    doc_id = read_text(body, "document")
    line = body.get("line")
    if not isinstance(line, str) or not _PRODUCT.fullmatch(line):
        raise DocumentError("line", f"{line!r}: must be the product id of one of the document's lines")
    kind = body.get("kind")
    if kind not in EXCEPTION_KINDS:
        raise DocumentError("kind", f"{kind!r} is not allowed; allowed: {', '.join(EXCEPTION_KINDS)}")
    item = ExceptionItem(
        line=line,
        kind=kind,
        reason=read_text(body, "reason", limit=MAX_NAME),
        approver=read_text(body, "approver"),
        units=_whole(body, "units", "", default=1) if "units" in body else 1,
    )
    return doc_id, item


def read_void(body: Mapping) -> tuple[str, str, str]:
    """``(event id, reason, approver)`` from a ``void`` command's JSON (approver may be "")."""
    only_fields(body, ("event_id", "reason", "approver"))
    event_id = body.get("event_id")
    if not isinstance(event_id, str) or not _EVENT_ID.fullmatch(event_id):
        raise DocumentError("event_id", f"{event_id!r}: must be the event id of a scan (a UUID)")
    return event_id, read_text(body, "reason", limit=MAX_NAME), read_text(body, "approver", required=False)


@dataclass
class Collected:
    """One scan counted in a document; a case or middle pack (``level``) counts its ``units``."""

    code: str
    product_id: str
    event_id: str
    seq: int | None
    hash: str
    level: str = "unit"
    units: tuple[str, ...] = ()
    middles: tuple[str, ...] = ()

    def products(self) -> Counter[str]:
        """Units per product id this scan counts."""
        if self.level == "unit":
            return Counter({self.product_id: 1})
        return Counter(unit[:7] for unit in self.units)


class OpenDocument:
    """What an open document has collected, kept in memory by the ledger's one writer
    (the pipeline thread) and rebuilt from the ledger's rows at start."""

    def __init__(self, document: Document, *, opened_id: int, split_packs: Mapping[str, int] | None = None) -> None:
        self.document = document
        #: ``[codes] split_packs``: how often one code may count where no line says (拆零).
        self.split_packs = dict(split_packs or {})
        #: The ledger id of the ``opened`` row; its scans are all after it.
        self.opened_id = opened_id
        self.scans: dict[int, Collected] = {}
        self.per_code: Counter[str] = Counter()
        self.per_line: Counter[str] = Counter()
        self.exceptions: list[dict] = []
        self.excepted: Counter[str] = Counter()
        self.voids: list[dict] = []
        #: Units and middle packs counted by a pack scan of this document -> that pack's code.
        self.covered: dict[str, str] = {}
        #: Codes accepted although not on the delivery's manifest (``[receiving] unexpected = "flag"``).
        self.unexpected: list[str] = []

    @property
    def id(self) -> str:
        return self.document.id

    def allowed(self, product_id: str) -> int:
        """How many scans one code of ``product_id`` may have in this document."""
        line = self.document.line_for(product_id)
        return self.split_packs.get(product_id, 1) if line is None else line.split_units

    def trdn_flag(self, product_id: str) -> int:
        """1 when a code of ``product_id`` stands for split units (拆零) here, as the 3505 upload flags it."""
        return 1 if self.allowed(product_id) > 1 else 0

    def has_all_of(self, code: str, product_id: str) -> bool:
        """Whether this document already counts ``code`` as often as it may."""
        return self.per_code[code] >= self.allowed(product_id)

    def in_document_detail(self) -> str:
        return f"already scanned in {self.document.kind} {self.id}"

    def refuses(self, code: str, product_id: str) -> tuple[str, str] | None:
        """``(reason, detail)`` if this document cannot take the code, else None."""
        doc = self.document
        if len(self.scans) >= DOCUMENT_LIMIT:
            return "document_full", f"{doc.kind} {doc.id} already holds {DOCUMENT_LIMIT} codes"
        line = doc.line_for(product_id)
        if doc.lines and line is None:
            return "not_on_document", f"product {product_id} is on no line of {doc.kind} {doc.id} (wrong drug?)"
        if self.has_all_of(code, product_id):
            return "in_document", self.in_document_detail()
        if line is not None and self.count(line.product_id) >= line.expected:
            return "line_complete", f"line {line.product_id} {line.name} already has its {line.expected} units"
        return None

    def count(self, product_id: str) -> int:
        """Units of a line counted so far: scans and exceptions."""
        return self.per_line[product_id] + self.excepted[product_id]

    def add(self, scan_id: int, code: str, product_id: str, event_id: str, seq: int | None, hash: str) -> None:
        self.add_scan(scan_id, Collected(code, product_id, event_id, seq, hash))

    def add_scan(self, scan_id: int, scan: Collected) -> None:
        """Count one scan (a unit's, or a pack's with its units)."""
        self.scans[scan_id] = scan
        self.per_code[scan.code] += 1
        self.per_line.update(scan.products())
        for code in (*scan.units, *scan.middles):
            self.covered[code] = scan.code

    def remove(self, scan_id: int, void: dict) -> None:
        """A scan voided: it no longer counts."""
        gone = self.scans.pop(scan_id)
        self.per_code[gone.code] -= 1
        self.per_line.subtract(gone.products())
        for code in (*gone.units, *gone.middles):
            self.covered.pop(code, None)
        if gone.code in self.unexpected:
            self.unexpected.remove(gone.code)
        self.voids.append(void)

    def pack_conflict(self, code: str, units: Iterable[str], middles: Iterable[str]) -> str | None:
        """Why a pack cannot join this document beside codes it holds (a parent and its own
        children must not share a bill), or None."""
        if code in self.covered:
            return f"{code} is inside {self.covered[code]}, scanned in {self.document.kind} {self.id} already"
        for inner in (*middles, *units):
            if self.per_code[inner]:
                return f"{inner}, inside this pack, was scanned in {self.document.kind} {self.id} already"
        return None

    def refuses_pack(self, units: Iterable[str]) -> tuple[str, str] | None:
        """``(reason, detail)`` if this document cannot take a pack of ``units``, else None."""
        doc = self.document
        if len(self.scans) >= DOCUMENT_LIMIT:
            return "document_full", f"{doc.kind} {doc.id} already holds {DOCUMENT_LIMIT} codes"
        for product_id, count in sorted(Counter(unit[:7] for unit in units).items()):
            line = doc.line_for(product_id)
            if doc.lines and line is None:
                return "not_on_document", f"product {product_id} is on no line of {doc.kind} {doc.id} (wrong drug?)"
            if line is not None and self.count(product_id) + count > line.expected:
                return (
                    "line_complete",
                    f"line {product_id} {line.name} has {self.count(product_id)} of {line.expected} units;"
                    f" this pack holds {count} more",
                )
        return None

    def received_units(self) -> dict[str, str]:
        """Every unit this document counts -> the code scanned for it (itself, or its pack)."""
        units = {}
        for scan in self.scans.values():
            if scan.level == "unit":
                units[scan.code] = scan.code
            else:
                units.update(dict.fromkeys(scan.units, scan.code))
        return units

    def add_exception(self, record: Mapping) -> None:
        """An exception row's record (with its ``event_id``): its units count toward its line."""
        if self.document.line_for(record["line"]) is None:
            raise DocumentError("line", f"{record['line']} is on no line of {self.document.kind} {self.id}")
        self.exceptions.append(dict(record))
        self.excepted[record["line"]] += record["units"]

    def progress(self) -> dict:
        """Collected and expected units, per line and in total; ``complete`` once every line is."""
        lines = [
            {
                "product_id": line.product_id,
                "name": line.name,
                "expected": line.expected,
                "collected": self.count(line.product_id),
            }
            for line in self.document.lines
        ]
        collected = sum(line["collected"] for line in lines) if lines else len(self.scans)
        expected = sum(line.expected for line in self.document.lines) if lines else None
        complete = bool(lines) and all(line["collected"] >= line["expected"] for line in lines)
        return {"collected": collected, "expected": expected, "complete": complete, "lines": lines}

    def status(self, closed_by: str = "") -> str:
        """How the document stands if it closed now (one of ``DOCUMENT_STATUSES``).

        Nothing collected is ``incomplete``; so is a document without lines left idle
        (nobody said it was done); one with lines is complete once every line is.
        """
        if not self.scans and not self.exceptions:
            return "incomplete"
        if self.document.lines and not self.progress()["complete"]:
            return "incomplete"
        if not self.document.lines and closed_by == "idle":
            return "incomplete"
        return "complete_with_exceptions" if self.exceptions else "complete"

    def closing_record(self, closed_by: str) -> dict:
        """What the ``closed`` row records: status, lines with their codes (the shape of the
        3505/3506 upload's ``drugtracinfo``), voids, exceptions and the included scans' hashes."""
        status = self.status(closed_by)
        assert status in DOCUMENT_STATUSES
        codes: dict[str, list[dict]] = {}
        mixed = []  # packs that hold units of several lines are listed once, beside the lines
        for scan in self.scans.values():
            if scan.level == "unit":
                flag = self.trdn_flag(scan.product_id)
                codes.setdefault(scan.product_id, []).append({"drug_trac_codg": scan.code, "trdn_flag": flag})
                continue
            entry = {"drug_trac_codg": scan.code, "trdn_flag": 0, "level": scan.level, "units": len(scan.units)}
            products = scan.products()
            if len(products) == 1:
                codes.setdefault(next(iter(products)), []).append(entry)
            else:
                mixed.append(entry)
        lines = [
            {
                **line.to_dict(),
                "collected": self.count(line.product_id),
                "exceptions": self.excepted[line.product_id],
                "drugtracinfo": codes.get(line.product_id, []),
            }
            for line in self.document.lines
        ]
        progress = self.progress()
        return {
            **self.document.to_record(),
            "status": status,
            "closed_by": closed_by,
            "collected": progress["collected"],
            "expected": progress["expected"],
            "lines": lines,
            # A document without lines lists its codes here.
            "drugtracinfo": mixed if lines else [c for group in codes.values() for c in group] + mixed,
            "voids": list(self.voids),
            "exceptions": list(self.exceptions),
            "scans": [{"event_id": s.event_id, "seq": s.seq, "hash": s.hash} for s in self.scans.values()],
        }


def replay(doc: OpenDocument, rows: Iterable[Mapping]) -> None:
    """Apply a document's ledger rows after its ``opened`` row, in order: accepted scans
    count, voids take theirs back, exceptions count toward their line. How the ledger
    rebuilds the open document at start, and how a report rebuilds any document."""
    for row in rows:
        verdict = row["verdict"]
        if verdict == "accepted":
            doc.add_scan(row["id"], collected(row))
            if row["reason"] == "not_on_manifest":
                doc.unexpected.append(row["code"])
        elif verdict not in ENTRIES:
            continue
        elif verdict == "void":
            doc.remove(row["earlier_id"], entry_of(row))
        elif verdict == "exception":
            doc.add_exception(entry_of(row))


def collected(row: Mapping) -> Collected:
    """An accepted scan's row as a document counts it (a pack's ``record`` lists its units)."""
    scan = Collected(row["code"], row["product_id"] or "", row["event_id"], row["seq"], row["hash"])
    if row["record"] is not None:
        pack = json.loads(row["record"])["pack"]
        scan.level, scan.units, scan.middles = pack["level"], tuple(pack["units"]), tuple(pack["middles"])
    return scan


def entry_of(row: Mapping) -> dict:
    """A void's or an exception's row as the document lists it: its record, event id and time."""
    return {**json.loads(row["record"]), "event_id": row["event_id"], "ts": row["ts"]}
