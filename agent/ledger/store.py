"""The ledger: every scan, the per-code movement state, and the outbox, in SQLite.

One transaction per scan decides whether it is accepted, a duplicate, a
double read or rejected, appends it to a hash-chained, append-only table and
queues its event. When :meth:`Ledger.decide_and_record` returns, all of that is
on disk (WAL, ``synchronous=FULL``), so "accepted" means "recorded".

>>> from agent import codes
>>> from agent.read import Read
>>> ledger = Ledger.open(":memory:", device_id="kiosk-1", site_id="site-1")
>>> read = Read(b"81234567890123456789", source_kind="stdin", source_id="stdin")
>>> ledger.decide_and_record(read, "dispense", codes.parse(read.raw)).verdict
'accepted'
"""

from __future__ import annotations

import contextlib
import json
import logging
import operator
import sqlite3
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from agent import codes
from agent.clock import Clock, iso
from agent.codes import Rejection, TraceCode, escape
from agent.domain import BILL_LIMIT, LIFECYCLES, Decision, Earlier, check_movement
from agent.ids import EventIds
from agent.ledger import peers, receiving
from agent.ledger.chain import GENESIS, HASHED, HASHED_WHEN_SET, row_hash
from agent.ledger.checkpoint import Checkpointer
from agent.ledger.documents import (
    Collected,
    Document,
    DocumentError,
    ExceptionItem,
    Line,
    OpenDocument,
    entry_of,
    replay,
)
from agent.ledger.receiving import ManifestHit
from agent.ledger.rules import RULES, State, judge, undo
from agent.ledger.schema import create_schema
from agent.ledger.sqlite import CACHE_KIB, connect
from agent.read import Read

if TYPE_CHECKING:
    from agent.ledger.manifests import Manifest

log = logging.getLogger(__name__)


class LedgerError(Exception):
    """The ledger could not record a scan (disk full, database unwritable)."""


class Ledger:
    """The agent's SQLite ledger. Only the pipeline thread (one at a time: see
    :class:`agent.pipeline.Pipeline`) calls :meth:`decide_and_record` and the document
    methods (:meth:`open_document`, :meth:`close_document`, :meth:`void`,
    :meth:`add_exception`, :meth:`acknowledge`); others open their own :func:`connect`.

    ``split_packs`` maps a product id to how many times one of its codes may be
    dispensed; ``double_read_window_s`` is how soon the same text from the same
    source counts as the scanner reading twice.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        device_id: str,
        site_id: str,
        double_read_window_s: float = 2.0,
        split_packs: Mapping[str, int] | None = None,
        lifecycle: str = "off",
        lock_on: Iterable[str] = (),
        unexpected: str = "reject",
        clock: Clock | None = None,
    ) -> None:
        self.conn = conn
        self.device_id = device_id
        self.site_id = site_id
        self.double_read_window_s = double_read_window_s
        self.split_packs = dict(split_packs or {})
        if lifecycle not in LIFECYCLES:
            raise ValueError(f"lifecycle {lifecycle!r} is not allowed; allowed: {', '.join(LIFECYCLES)}")
        self.lifecycle = lifecycle
        #: Verdicts and reasons after which the station refuses scans until acknowledged.
        self.lock_on = frozenset(lock_on)
        #: ``[receiving] unexpected``: a code not on a delivery's manifest is ``reject``-ed or ``flag``-ged.
        self.unexpected = unexpected
        #: Codes listed per imported manifest (bill code -> count), read once each.
        self._code_counts: dict[str, int] = {}
        self.clock = clock or Clock()
        self._last_by_source: dict[str, tuple[str, float]] = {}
        self.checkpointer: Checkpointer | None = None
        create_schema(conn)
        last = conn.execute("SELECT id, hash, event_id FROM scans ORDER BY id DESC LIMIT 1").fetchone()
        # Seeded from the last recorded event, so ids keep increasing across a
        # restart even when the wall clock was set back meanwhile.
        self._ids = EventIds(after=None if last is None else last["event_id"])
        #: The latest ts recorded; a wall clock behind it is not trustworthy.
        self._latest_ts = latest_ts(conn)
        #: The chain's end: last id, its hash, this device's last seq. Kept here so a scan
        #: reads no index for it (one writer: the pipeline).
        self._tail = (0, GENESIS, 0) if last is None else (last["id"], last["hash"], last_seq(conn, device_id))
        #: The open document and the station's lock (one writer: the pipeline).
        self.document: OpenDocument | None = None
        self.lock: dict | None = None
        #: Set when a failed transaction could not read the open document back: the next
        #: call reads it again before deciding anything (see :meth:`_fresh`).
        self._stale = False
        self._load_station()

    @classmethod
    def open(cls, path: str | Path, **kwargs) -> Ledger:
        """Open (creating if needed) the ledger at ``path``.

        Also starts a :class:`Checkpointer` for it, so the scan path never
        pays for copying the WAL back into the database.
        """
        ledger = cls(connect(path), **kwargs)
        if str(path) != ":memory:":
            ledger.conn.execute("PRAGMA wal_autocheckpoint=0")
            # Enough page cache for the upper B-tree levels of a ledger with
            # tens of millions of scans: a page read from the OS on every
            # lookup costs the 99th percentile more than a millisecond.
            ledger.conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
            ledger.checkpointer = Checkpointer(path)
            ledger.checkpointer.start()
        return ledger

    def close(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer.stop()
        self.conn.close()

    def decide_and_record(
        self,
        read: Read,
        movement: str,
        parsed: TraceCode | Rejection,
        *,
        operator: str = "",
        bill: str = "",
    ) -> Decision:
        """Decide what ``read`` is for ``movement`` and record it durably, in one transaction.

        While a document is open, its kind sets the movement and its lines are checked.
        Raises :class:`LedgerError` if it could not be recorded; then nothing was.
        """
        check_movement(movement)
        self._fresh()
        if self.document is not None:
            movement = self.document.document.movement
        text = parsed.code if parsed.valid else parsed.text
        double_read = self.is_double_read(read, text)
        with self._transaction():
            decision = self._decide_and_insert(read, movement, parsed, text, double_read, operator, bill)
        self._last_by_source[read.source_id] = (text, read.t_last)
        return decision

    def is_double_read(self, read: Read, text: str) -> bool:
        """Whether ``text`` from ``read``'s source is the scanner reading the last one again."""
        previous = self._last_by_source.get(read.source_id)
        return previous is not None and previous[0] == text and read.t_first - previous[1] <= self.double_read_window_s

    def remember_read(self, read: Read, text: str) -> None:
        """Note ``text`` as the last read of its source (a station barcode, which
        :meth:`decide_and_record` does not see), for :meth:`is_double_read`."""
        self._last_by_source[read.source_id] = (text, read.t_last)

    def _decide_and_insert(
        self,
        read: Read,
        movement: str,
        parsed: TraceCode | Rejection,
        text: str,
        double_read: bool,
        operator: str,
        bill: str,
    ) -> Decision:
        earlier_id: int | None = None
        state = None
        doc = self.document
        if double_read:
            verdict, reason, detail = "double_read", "double_read", "same scan again within the double-read window"
        elif self.lock is not None:
            verdict, reason, detail = "rejected", "station_locked", self.lock_detail()
        elif not parsed.valid:
            verdict, reason, detail = "rejected", parsed.reason, parsed.detail
        elif bill and self._bill_count(bill) >= BILL_LIMIT:
            verdict, reason, detail = "rejected", "bill_full", f"bill {bill} already holds {BILL_LIMIT} codes"
        else:
            hit = self._manifest_hit(parsed.code, doc) if movement == "receive" else None
            if hit is not None and hit.is_pack:
                return self._receive_pack(read, parsed, hit, doc, operator, bill)
            local, tally = self._state(parsed.code), self._peer_tally(parsed.code)
            state = peers.combine(local, tally)
            allowed = self.split_packs.get(parsed.product_id, 1)
            if doc is not None:
                allowed = doc.allowed(parsed.product_id)
            verdict, reason, detail, earlier_id = judge(movement, state, allowed=allowed, lifecycle=self.lifecycle)
            detail = self._where(earlier_id, detail)
            if reason == "already_received":
                reason, detail = self._received_how(parsed.code, doc, earlier_id, reason, detail)
            if doc is not None and doc.has_all_of(parsed.code, parsed.product_id):
                # The same box again in this document: a counting slip, not a second sale.
                verdict, reason, detail, earlier_id = "rejected", "in_document", doc.in_document_detail(), None
            manifest = "" if doc is None else doc.document.manifest
            if verdict == "accepted" and hit is None and manifest and self._lists_codes(manifest):
                # First: what the dock sets aside for the supplier, whatever else is wrong with it.
                verdict, reason, detail = self._unexpected(parsed.code, doc, reason, detail)
            refusal = doc.refuses(parsed.code, parsed.product_id) if doc is not None and verdict == "accepted" else None
            if refusal is not None:
                (reason, detail), verdict = refusal, "rejected"

        row = self._append(
            {
                **self._scan_fields(read, parsed, movement, operator, bill),
                "verdict": verdict,
                "reason": reason,
                "detail": detail,
                "earlier_id": _local_id(earlier_id),
                "document": None if doc is None or double_read else doc.id,
            },
            with_seq=verdict != "double_read",
        )
        if verdict == "accepted" and state is not None:
            self._store_state(
                parsed.code, local, peers.local_part(RULES[movement].then(state, row["id"]), local, tally)
            )
            if doc is not None:
                doc.add(row["id"], parsed.code, parsed.product_id, row["event_id"], row["seq"], row["hash"])
                if reason == "not_on_manifest":
                    doc.unexpected.append(parsed.code)
        return self._finish(row, read, parsed, text, doc, operator, earlier_id)

    def _finish(
        self,
        row: dict,
        read: Read,
        parsed: TraceCode | Rejection,
        text: str,
        doc: OpenDocument | None,
        operator: str,
        earlier_id: int | None,
    ) -> Decision:
        """A recorded scan's decision: its document's progress, and the lock it may set."""
        verdict, reason = row["verdict"], row["reason"]
        progress = None if row["document"] is None else doc.progress()
        # The lock guards a document's scans (a POS or ward order in hand); loose scans go on as before.
        locks = (
            doc is not None
            and verdict not in ("double_read", "accepted")
            and reason != "station_locked"
            and bool({verdict, reason} & self.lock_on)
        )
        if locks:
            self._lock(row, operator)
        return self._decision(
            row, read, parsed, text, earlier=self._earlier(earlier_id), progress=progress, locks=locks
        )

    # -- receiving: manifests and the packs a case code stands for ------------------------

    def import_manifest(self, manifest: Manifest, *, read: Read, operator: str = "") -> list[Decision]:
        """Record the supplier's ``manifest``: one ``manifest`` row in the chain (bill, lines,
        the digest of its codes) and its codes, in one transaction.

        The same manifest again records nothing (returns ``[]``); another one with the
        same bill code raises :class:`DocumentError` (field ``bill_code``).
        """
        self._fresh()
        digest = manifest.digest()
        earlier = receiving.manifest_row(self.conn, manifest.bill_code)
        if earlier is not None:
            if json.loads(earlier["record"])["digest"] == digest:
                return []
            raise DocumentError(
                "bill_code",
                f"{manifest.bill_code} was imported on {earlier['ts']} with other contents;"
                " a manifest is never replaced (a corrected bill comes with a bill code of its own)",
            )
        rows = [(c.code, c.level, c.parent, c.batch, c.expiry) for c in manifest.codes]
        count, codes_sha256 = receiving.codes_digest(rows)
        levels = Counter(row[1] for row in rows)
        record = {
            "bill_code": manifest.bill_code,
            "supplier": manifest.supplier,
            "ship_date": manifest.ship_date,
            "lines": [
                {k: getattr(line, k) for k in ("product_id", "name", "batch", "expiry", "quantity")}
                for line in manifest.lines
            ],
            "digest": digest,
            "codes": count,
            "codes_sha256": codes_sha256,
            "levels": dict(sorted(levels.items())),
        }
        detail = f"manifest {manifest.bill_code} from {manifest.supplier}: {len(manifest.lines)} lines, {count} codes"
        with self._transaction():
            row = self._append(
                self._entry_fields(
                    read,
                    operator,
                    movement="receive",
                    verdict="manifest",
                    detail=detail,
                    document=manifest.bill_code,
                    record=record,
                )
            )
            receiving.insert_codes(self.conn, manifest.bill_code, rows)
            decision = self._decision(row, read, None, manifest.bill_code)
        return [decision]

    def _against_manifest(self, document: Document) -> Document:
        """A delivery whose bill code has a manifest: received against it, its lines the
        manifest's unless the command gave its own."""
        row = receiving.manifest_row(self.conn, document.id)
        if row is None:
            return document
        record = json.loads(row["record"])
        lines = document.lines or tuple(Line(**line) for line in receiving.document_lines(record))
        return replace(document, lines=lines, manifest=document.id)

    def _manifest_hit(self, code: str, doc: OpenDocument | None) -> ManifestHit | None:
        """``code`` on the manifest it is received against: the open delivery's (none for a
        delivery without one), or for a loose receive the latest manifest that lists it."""
        if doc is not None:
            bill = doc.document.manifest
            return receiving.find(self.conn, code, bill) if bill and self._lists_codes(bill) else None
        return receiving.find(self.conn, code)

    def _receive_pack(
        self, read: Read, parsed: TraceCode, hit: ManifestHit, doc: OpenDocument | None, operator: str, bill: str
    ) -> Decision:
        """A case or middle pack received: every unit under it, or none, in this one row."""
        units, middles = receiving.units_under(self.conn, hit.bill_code, hit.code)
        local, tally = self._state(parsed.code), self._peer_tally(parsed.code)
        state = peers.combine(local, tally)
        verdict, reason, detail, earlier_id = judge("receive", state, allowed=1, lifecycle=self.lifecycle)
        detail = self._where(earlier_id, detail)
        if reason == "already_received":
            reason, detail = self._received_how(parsed.code, doc, earlier_id, reason, detail)
        inner_states: dict[str, tuple[State, peers.Tally]] = {}
        if verdict == "accepted" and doc is not None:
            conflict = doc.pack_conflict(parsed.code, units, middles)
            if conflict is not None:
                verdict, reason, detail = "duplicate", "parent_child_same_document", conflict
        if verdict == "accepted" and not units:
            verdict, reason, detail = "rejected", "not_on_manifest", f"{hit.level} lists no units in {hit.bill_code}"
        if verdict == "accepted":
            for inner in (*middles, *units):
                inner_local, inner_tally = self._state(inner), self._peer_tally(inner)
                found = judge("receive", peers.combine(inner_local, inner_tally), allowed=1, lifecycle=self.lifecycle)
                if found.verdict != "accepted":
                    verdict, reason, earlier_id = found.verdict, found.reason, found.earlier_id
                    detail = f"{inner} inside this {hit.level}: {self._where(earlier_id, found.detail)}"
                    break
                inner_states[inner] = (inner_local, inner_tally)
        if verdict == "accepted" and doc is not None:
            refusal = doc.refuses_pack(units)
            if refusal is not None:
                (reason, detail), verdict = refusal, "rejected"
        accepted = verdict == "accepted"
        if accepted:
            detail = f"{hit.level} of {len(units)} units received (manifest {hit.bill_code})"
        pack = {"level": hit.level, "bill_code": hit.bill_code, "units": units, "middles": middles}
        row = self._append(
            {
                **self._scan_fields(read, parsed, "receive", operator, bill),
                "verdict": verdict,
                "reason": reason,
                "detail": detail,
                "earlier_id": _local_id(earlier_id),
                "document": None if doc is None else doc.id,
                # What was received is in the chain: the ledger alone says which units arrived.
                "record": {"pack": pack} if accepted else None,
            }
        )
        if accepted:
            receive = RULES["receive"].then
            self._store_state(parsed.code, local, peers.local_part(receive(state, row["id"]), local, tally))
            for inner, (inner_local, inner_tally) in inner_states.items():
                after = receive(peers.combine(inner_local, inner_tally), row["id"])
                self._store_state(inner, inner_local, peers.local_part(after, inner_local, inner_tally))
            if doc is not None:
                scan = Collected(parsed.code, parsed.product_id, row["event_id"], row["seq"], row["hash"])
                scan.level, scan.units, scan.middles = hit.level, tuple(units), tuple(middles)
                doc.add_scan(row["id"], scan)
        return self._finish(row, read, parsed, parsed.code, doc, operator, earlier_id)

    def _received_how(
        self, code: str, doc: OpenDocument | None, earlier_id: int | None, reason: str, detail: str
    ) -> tuple[str, str]:
        """A code already received: inside a pack of this very document, inside a case
        received before, or on its own."""
        if doc is not None and code in doc.covered:
            return "parent_child_same_document", f"inside {doc.covered[code]}, scanned in {doc.document.kind} {doc.id}"
        if earlier_id is not None and earlier_id > 0:
            earlier = self.conn.execute("SELECT code FROM scans WHERE id = ?", (earlier_id,)).fetchone()
            if earlier is not None and earlier["code"] != code:
                return "received_in_case", f"received inside {earlier['code']} and not returned to the supplier since"
        return reason, detail

    def _lists_codes(self, bill: str) -> bool:
        """Whether manifest ``bill`` lists codes (one may give only lines: then any code of them counts)."""
        if bill not in self._code_counts:
            self._code_counts[bill] = json.loads(receiving.manifest_row(self.conn, bill)["record"])["codes"]
        return self._code_counts[bill] > 0

    def _unexpected(self, code: str, doc: OpenDocument, reason: str | None, detail: str) -> tuple[str, str, str]:
        """A code not on the open delivery's manifest: refused, or taken and flagged."""
        why = f"not on manifest {doc.document.manifest}"
        if self.unexpected == "reject":
            return "rejected", "not_on_manifest", f"{why}; set aside for the supplier"
        return "accepted", reason or "not_on_manifest", detail or f"{why}; accepted and flagged"

    # -- documents, voids, exceptions, the lock ----------------------------------------

    def open_document(
        self, document: Document, *, on_new: str = "close_previous", read: Read, operator: str = ""
    ) -> list[Decision]:
        """Open ``document`` (closing the open one first, or refusing, as ``on_new`` says).

        Raises :class:`DocumentError` (nothing recorded) for an id already open or
        already used by a closed document, or another document open under ``refuse``.
        """
        self._fresh()
        doc = self.document
        if doc is not None and doc.id == document.id:
            raise DocumentError("id", f"{doc.document.kind} {doc.id} is open already")
        if entry_row(self.conn, document.id, "closed") is not None:
            raise DocumentError("id", f"{document.id} was used by a document already closed; ids are not reused")
        if doc is not None and on_new == "refuse":
            raise DocumentError(
                "id", f"{doc.document.kind} {doc.id} is open; close it first ([documents] on_new = refuse)"
            )
        if document.kind == "delivery":
            document = self._against_manifest(document)
        decisions = []
        with self._transaction():
            if doc is not None:
                decisions.append(self._close(doc, "new_document", read, operator))
            row = self._append(
                self._entry_fields(
                    read,
                    operator,
                    movement=document.movement,
                    verdict="opened",
                    detail=f"{document.kind} {document.id} opened",
                    document=document.id,
                    record=document.to_record(),
                ),
            )
            self.document = OpenDocument(document, opened_id=row["id"], split_packs=self.split_packs)
            decisions.append(self._decision(row, read, None, document.id, progress=self.document.progress()))
        return decisions

    def close_document(self, doc_id: str, *, closed_by: str, read: Read, operator: str = "") -> list[Decision]:
        """Close the open document ``doc_id``; its status is worked out from what it collected."""
        doc = self._open_named(doc_id)
        with self._transaction():
            decision = self._close(doc, closed_by, read, operator)
        return [decision]

    def _close(self, doc: OpenDocument, closed_by: str, read: Read, operator: str) -> Decision:
        record = doc.closing_record(closed_by)
        if doc.document.manifest:
            record["reconciliation"] = receiving.reconcile(
                self.conn,
                doc.document.manifest,
                doc.received_units(),
                doc.unexpected,
                today=self.clock.now().date().isoformat(),
            )
        row = self._append(
            self._entry_fields(
                read,
                operator,
                movement=doc.document.movement,
                verdict="closed",
                reason=record["status"],
                detail=f"{doc.document.kind} {doc.id} closed {record['status']}",
                document=doc.id,
                record=record,
            ),
        )
        progress = doc.progress()
        self.document = None
        return self._decision(row, read, None, doc.id, progress=progress)

    def void(self, event_id: str, *, reason: str, approver: str = "", read: Read, operator: str = "") -> list[Decision]:
        """Void an accepted scan of a document: a new row that names it, and the code's state reverts.

        A scan of the open document gets a ``void``; one of a closed document a
        ``reversal``. A pack's scan reverts every unit it received. Raises
        :class:`DocumentError` for a scan that does not exist, was not accepted, is in
        no document, was voided already, or whose code moved since (void the later scan first).
        """
        self._fresh()
        target = self.conn.execute("SELECT * FROM scans WHERE event_id = ?", (event_id,)).fetchone()
        if target is None:
            raise DocumentError("event_id", f"no scan has event id {event_id}")
        pack = None if target["record"] is None else json.loads(target["record"]).get("pack")
        if target["verdict"] != "accepted" or (target["record"] is not None and pack is None):
            raise DocumentError("event_id", f"scan {event_id} was {target['verdict']}; only an accepted scan is voided")
        if target["document"] is None:
            raise DocumentError("event_id", f"scan {event_id} is in no document; only a document's scans are voided")
        if self._voided(target["document"], target["id"]):
            raise DocumentError("event_id", f"scan {event_id} is voided already")
        movement, code = target["movement"], target["code"]
        state = self._state(code)
        # A pack's units and middle packs revert with it: each must still be where it left them.
        inner = {} if pack is None else {c: self._state(c) for c in (*pack["middles"], *pack["units"])}
        for moved, moved_state in ((code, state), *inner.items()):
            if not _left_by(movement, moved_state, target["id"]):
                raise DocumentError("event_id", f"code {moved} moved after scan {event_id}; void the later scan first")
        doc = self.document if self.document is not None and self.document.id == target["document"] else None
        verdict = "void" if doc is not None else "reversal"
        record = {
            "voided": {"event_id": event_id, "seq": target["seq"], "ledger_id": target["id"]},
            "reason": reason,
            "approver": approver,
        }
        with self._transaction():
            fields = self._entry_fields(
                read,
                operator,
                movement=movement,
                verdict=verdict,
                detail=f"{verdict} of {event_id}: {reason}",
                document=target["document"],
                record=record,
            )
            fields.update(
                {k: target[k] for k in ("code", "raw", "kind", "product_id", "serial", "symbology", "ais")},
                earlier_id=target["id"],
            )
            row = self._append(fields)
            self._store_state(code, state, undo(movement, state))
            for moved, moved_state in inner.items():
                self._store_state(moved, moved_state, undo(movement, moved_state))
            if doc is not None:
                doc.remove(target["id"], entry_of(row))
            parsed = TraceCode(kind=target["kind"], code=code, product_id=target["product_id"] or "")
            progress = None if doc is None else doc.progress()
            decision = self._decision(row, read, parsed, code, earlier=self._earlier(target["id"]), progress=progress)
        return [decision]

    def add_exception(self, doc_id: str, item: ExceptionItem, *, read: Read, operator: str = "") -> list[Decision]:
        """Record an item counted without a scan (no code, or a code that will not read) against a line."""
        doc = self._open_named(doc_id)
        if doc.document.line_for(item.line) is None:
            raise DocumentError("line", f"{item.line} is on no line of {doc.document.kind} {doc.id}")
        with self._transaction():
            row = self._append(
                self._entry_fields(
                    read,
                    operator,
                    movement=doc.document.movement,
                    verdict="exception",
                    reason=item.kind,
                    detail=f"{item.kind} item on line {item.line}: {item.reason}",
                    document=doc.id,
                    record=item.to_record(),
                ),
            )
            doc.add_exception(entry_of(row))
            decision = self._decision(row, read, None, item.line, progress=doc.progress())
        return [decision]

    def acknowledge(self, by: str, *, via: str, read: Read) -> list[Decision]:
        """Lift the station's lock; the row names who acknowledged it and how."""
        self._fresh()
        if self.lock is None:
            raise DocumentError("station", "the station is not locked; nothing to acknowledge")
        record = {"by": by, "via": via, "lock": self.lock["event_id"]}
        with self._transaction():
            row = self._append(
                self._entry_fields(
                    read,
                    by,
                    movement=self.lock["movement"],
                    verdict="acknowledged",
                    detail=f"lock acknowledged by {by} ({via})",
                    document=None if self.document is None else self.document.id,
                    record=record,
                ),
            )
            self.lock = None
            decision = self._decision(row, read, None, by)
        return [decision]

    def lock_for_conflict(self, cause: dict, *, read: Read) -> list[Decision]:
        """Lock the station after a ``conflict`` with another station (``[documents] lock_on``
        has ``conflict``): a ``locked`` row whose record names the alarm and both scans.
        Pipeline thread (through :meth:`agent.pipeline.Pipeline.call`); a station locked
        already records nothing (returns ``[]``)."""
        self._fresh()
        if self.lock is not None:
            return []
        record = {"cause": {"reason": "conflict", "verdict": "conflict", **cause}}
        with self._transaction():
            row = self._append(
                self._entry_fields(
                    read,
                    "",
                    movement=cause["local"]["movement"],
                    verdict="locked",
                    reason="conflict",
                    detail=f"station locked after a conflict over {cause['code']}; a supervisor must acknowledge",
                    document=None if self.document is None else self.document.id,
                    record=record,
                )
            )
            self.lock = {"event_id": row["event_id"], "movement": row["movement"], **record}
            decision = self._decision(row, read, None, cause["code"])
        return [decision]

    def lock_detail(self) -> str:
        """Why the station is locked, for a ``station_locked`` rejection."""
        cause = self.lock["cause"] if self.lock else {}
        why = cause.get("reason") or cause.get("verdict")
        return f"station locked after {why} of {cause.get('code')}; a supervisor must acknowledge"

    def _lock(self, cause: dict, operator: str) -> None:
        record = {"cause": {k: cause[k] for k in ("event_id", "seq", "verdict", "reason", "code")}}
        fields = {
            "movement": cause["movement"],
            "verdict": "locked",
            "reason": cause["reason"],
            "detail": f"station locked after {cause['reason']}; a supervisor must acknowledge",
            "raw": "",
            "source_kind": cause["source_kind"],
            "source_id": cause["source_id"],
            "operator": operator,
            "bill": "",
            "document": cause["document"],
            "record": record,
        }
        row = self._append(fields)
        self.lock = {"event_id": row["event_id"], "movement": row["movement"], **record}

    def _open_named(self, doc_id: str) -> OpenDocument:
        self._fresh()
        doc = self.document
        if doc is None or doc.id != doc_id:
            now = "no document is open" if doc is None else f"the open one is {doc.document.kind} {doc.id}"
            raise DocumentError("id", f"{doc_id} is not open; {now}")
        return doc

    def _voided(self, doc_id: str, scan_id: int) -> bool:
        return (
            self.conn.execute(
                "SELECT 1 FROM scans WHERE record IS NOT NULL AND document = ? AND verdict IN ('void', 'reversal')"
                " AND earlier_id = ?",
                (doc_id, scan_id),
            ).fetchone()
            is not None
        )

    @staticmethod
    def _scan_fields(read: Read, parsed: TraceCode | Rejection, movement: str, operator: str, bill: str) -> dict:
        """A scan row's columns that say what was read, from where, by whom."""
        return {
            "movement": movement,
            "code": parsed.code if parsed.valid else None,
            "raw": escape(read.raw),
            "kind": parsed.kind,
            "product_id": parsed.product_id or None,
            "serial": parsed.serial or None,
            "symbology": parsed.symbology or read.symbology,
            "ais": json.dumps(parsed.ais, sort_keys=True) if parsed.valid and parsed.ais else None,
            "source_kind": read.source_kind,
            "source_id": read.source_id,
            "operator": operator,
            "bill": bill,
        }

    @staticmethod
    def _entry_fields(
        read: Read,
        operator: str,
        *,
        movement: str,
        verdict: str,
        detail: str,
        document: str | None,
        record: dict,
        reason: str | None = None,
    ) -> dict:
        return {
            "movement": movement,
            "verdict": verdict,
            "reason": reason,
            "detail": detail,
            "raw": escape(read.raw),
            "source_kind": read.source_kind,
            "source_id": read.source_id,
            "operator": operator,
            "bill": "",
            "document": document,
            "record": record,
        }

    # -- rows ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One transaction; on failure the chain's end and the open document and lock are
        as they were (read back from the ledger), and :class:`LedgerError` is raised."""
        tail, latest = self._tail, self._latest_ts
        try:
            try:
                self.conn.execute("BEGIN IMMEDIATE")
                yield
                self.conn.execute("COMMIT")
            except BaseException:
                # SQLite may already have rolled back (a failed COMMIT on a full
                # disk does); a failing ROLLBACK must not hide the first error.
                if self.conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self.conn.execute("ROLLBACK")
                self._tail, self._latest_ts = tail, latest
                # The open document and the lock may hold what was rolled back: read them
                # again now, or (if the database will not answer) before the next decision.
                self._stale = True
                with contextlib.suppress(sqlite3.Error):
                    self._fresh()
                raise
        except sqlite3.Error as problem:
            raise LedgerError(f"could not record scan: {problem}") from problem

    def _append(self, fields: dict, *, with_seq: bool = True) -> dict:
        """Insert the next row of the chain (inside a transaction); returns it with its hash."""
        last_id, last_hash, last_seq = self._tail
        now = self.clock.now()
        ts = iso(now)
        # clock_synced = 0 when the kernel is not NTP-synchronised, or when the
        # wall clock reads earlier than a scan already recorded (it was set back):
        # such a ts is kept as read, but flagged as not trustworthy.
        clock_synced = self.clock.synchronised() and (self._latest_ts is None or ts >= self._latest_ts)
        row = {
            **_BLANK_ROW,
            "id": last_id + 1,
            "seq": last_seq + 1 if with_seq else None,
            "event_id": str(self._ids.next(int(now.timestamp() * 1000))),
            "device_id": self.device_id,
            "site_id": self.site_id,
            "ts": ts,
            "clock_synced": int(clock_synced),
            "prev_hash": last_hash,
            **fields,
        }
        if row["record"] is not None:
            row["record"] = record_text(row["record"])
        row["hash"] = row_hash(row)
        self.conn.execute(_INSERT_ROW, _row_values(row))
        self._tail = (row["id"], row["hash"], row["seq"] or last_seq)
        if self._latest_ts is None or ts > self._latest_ts:
            self._latest_ts = ts
        return row

    def _decision(
        self,
        row: dict,
        read: Read,
        parsed: TraceCode | Rejection | None,
        text: str,
        *,
        earlier: Earlier | None = None,
        progress: dict | None = None,
        locks: bool = False,
    ) -> Decision:
        doc_id = row["document"]
        kind = None
        if doc_id is not None:
            doc = self.document
            kind = doc.document.kind if doc is not None and doc.id == doc_id else self._document_kind(doc_id)
        return Decision(
            verdict=row["verdict"],
            reason=row["reason"],
            detail=row["detail"],
            movement=row["movement"],
            text=text,
            parsed=parsed if parsed is not None else codes.parse(text),
            read=read,
            scan_id=row["id"],
            seq=row["seq"],
            event_id=row["event_id"],
            ts=row["ts"],
            hash=row["hash"],
            earlier=earlier,
            document=None if doc_id is None else {"id": doc_id, "kind": kind},
            progress=progress,
            record=None if row["record"] is None else json.loads(row["record"]),
            locks=locks,
        )

    def _document_kind(self, doc_id: str) -> str | None:
        opened = entry_row(self.conn, doc_id, "opened")
        return None if opened is None else json.loads(opened["record"])["kind"]

    def _fresh(self) -> None:
        """Read the open document and the lock back if a failed transaction left them stale."""
        if not self._stale:
            return
        try:
            self._load_station()
        except sqlite3.Error as problem:
            raise LedgerError(f"could not read the open document back: {problem}") from problem
        self._stale = False

    def _load_station(self) -> None:
        """The open document (with what it collected) and the lock, read back from the ledger."""
        self.document = load_open_document(self.conn, self.split_packs)
        self.lock = load_lock(self.conn)

    def _state(self, code: str) -> State:
        row = self.conn.execute(_SELECT_STATE, (code,)).fetchone()
        return State() if row is None else State(*row)

    def _store_state(self, code: str, before: State, after: State) -> None:
        if after != before:  # a stock check changes nothing, and writes nothing
            self.conn.execute(_WRITE_STATE, (code, *after))

    def _bill_count(self, bill: str) -> int:
        return self.conn.execute(
            "SELECT COUNT(*) FROM scans WHERE bill = ? AND verdict = 'accepted'", (bill,)
        ).fetchone()[0]

    def _peer_tally(self, code: str) -> peers.Tally:
        """The site's other stations' movements of ``code``: two index probes (their scans
        and the packs they received), each a miss for a code no other station moved."""
        return peers.tally(self.conn, code)

    def _where(self, earlier_id: int | None, detail: str) -> str:
        """``detail``, naming the station, time and event when the earlier scan is a peer's."""
        if earlier_id is None or earlier_id > 0:
            return detail
        peer = peers.row(self.conn, -earlier_id)
        return f"{detail} (at {peer['device_id']}, {peer['ts']}, event {peer['event_id']})"

    def _earlier(self, scan_id: int | None) -> Earlier | None:
        if scan_id is None:
            return None
        if scan_id < 0:  # another station's scan (agent.ledger.peers)
            peer = peers.row(self.conn, -scan_id)
            return Earlier(
                seq=peer["seq"],
                event_id=peer["event_id"],
                ts=peer["ts"],
                device_id=peer["device_id"],
                site_id=peer["site_id"],
                movement=peer["movement"],
            )
        row = self.conn.execute(
            "SELECT seq, event_id, ts, device_id, site_id, movement FROM scans WHERE id = ?", (scan_id,)
        ).fetchone()
        return Earlier(**dict(row))

    def record_alarm(self, kind: str, detail: str) -> int:
        """Append an alarm (e.g. ``ledger_damaged`` at start) for operators and the uplink; returns its id."""
        with self.conn:
            cursor = self.conn.execute(
                "INSERT INTO alarms (ts, kind, detail) VALUES (?, ?, ?)", (iso(self.clock.now()), kind, detail)
            )
        log.error("ALARM %s: %s", kind, detail)
        return cursor.lastrowid


def _local_id(earlier_id: int | None) -> int | None:
    """The ``earlier_id`` column: a scan of this ledger; a peer's scan (a negative id) is
    named in the detail instead."""
    return earlier_id if earlier_id is None or earlier_id > 0 else None


def record_text(record: dict) -> str:
    """An entry's ``record`` as stored and hashed: JSON, keys sorted, compact, UTF-8 kept.

    A consumer that gets the record as a JSON object recomputes the same text
    (``json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``).
    """
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS).decode()


def _left_by(movement: str, state: State, scan_id: int) -> bool:
    """Whether the code's ``state`` is still the one scan ``scan_id`` (a ``movement``) left."""
    if movement in ("dispense", "use"):
        return state.out_id == scan_id and state.out_count > 0
    if movement == "receive":
        # A received code sold since cannot be un-received: void the sale first.
        return state.in_id == scan_id and (state.out_id is None or state.out_id < scan_id)
    if movement == "return_out":
        return state.in_id == scan_id
    if movement == "return_in":
        # Undoing a customer return puts the sale back; a code sold again since would then
        # count two sales, so the later sale is voided first.
        return state.out_count == 0
    if movement == "destroy":
        return state.destroyed_id == scan_id
    return True


def load_open_document(conn: sqlite3.Connection, split_packs: Mapping[str, int] | None = None) -> OpenDocument | None:
    """The document opened and not closed yet, with its scans, voids and exceptions, or None."""
    # The partial index holds entry rows only; without it the planner walks every scan
    # from the end, on every start of a ledger that never had a document.
    last = conn.execute(
        "SELECT id, document, verdict, record FROM scans INDEXED BY scans_entries"
        " WHERE record IS NOT NULL AND verdict IN ('opened', 'closed') ORDER BY id DESC LIMIT 1"
    ).fetchone()
    if last is None or last["verdict"] != "opened":
        return None
    document = Document.from_record(json.loads(last["record"]))
    doc = OpenDocument(document, opened_id=last["id"], split_packs=split_packs)
    rows = conn.execute(
        "SELECT id, verdict, reason, code, product_id, event_id, seq, ts, hash, earlier_id, record FROM scans"
        " WHERE id > ? AND document = ? ORDER BY id",
        (last["id"], last["document"]),
    )
    replay(doc, rows)
    return doc


def entry_row(conn: sqlite3.Connection, doc_id: str, verdict: str) -> sqlite3.Row | None:
    """Document ``doc_id``'s first entry row of ``verdict`` (``opened``, ``closed``...), through the entry index."""
    return conn.execute(
        "SELECT * FROM scans WHERE record IS NOT NULL AND document = ? AND verdict = ? ORDER BY id LIMIT 1",
        (doc_id, verdict),
    ).fetchone()


def load_lock(conn: sqlite3.Connection) -> dict | None:
    """The station's lock (its row's event id, movement and cause) if not acknowledged since, or None."""
    row = conn.execute(
        "SELECT event_id, movement, verdict, record FROM scans WHERE verdict IN ('locked', 'acknowledged')"
        " ORDER BY id DESC LIMIT 1"
    ).fetchone()
    if row is None or row["verdict"] != "locked":
        return None
    return {"event_id": row["event_id"], "movement": row["movement"], **json.loads(row["record"])}


def last_seq(conn: sqlite3.Connection, device_id: str) -> int:
    """The device's last ``seq`` (0 before its first event), read without an index on ``seq``:
    seq grows with id for a device, so it is on the device's last row that has one."""
    row = conn.execute(
        "SELECT seq FROM scans WHERE device_id = ? AND seq IS NOT NULL ORDER BY id DESC LIMIT 1", (device_id,)
    ).fetchone()
    return 0 if row is None else row[0]


def latest_ts(conn: sqlite3.Connection) -> str | None:
    """The latest ``ts`` in the ledger, read without an index on ``ts``.

    A row recorded with ``clock_synced = 1`` was at or past every ts before it,
    so the latest is among it and the rows after it: the search walks back from
    the end to the last synchronised row (the whole ledger only on a kiosk whose
    clock was never synchronised).
    """
    since = conn.execute("SELECT id FROM scans WHERE clock_synced = 1 ORDER BY id DESC LIMIT 1").fetchone()
    return conn.execute("SELECT MAX(ts) FROM scans WHERE id >= ?", (0 if since is None else since[0],)).fetchone()[0]


def export_rows(conn: sqlite3.Connection, since: str | None = None) -> Iterator[dict]:
    """Scans in chain order, optionally only those at or after ISO time ``since``."""
    import sqlite_utils  # only for an export: it costs a tenth of a second to import

    db = sqlite_utils.Database(conn)
    where, params = ("ts >= ?", [since]) if since else (None, [])
    for row in db["scans"].rows_where(where, params, order_by="id"):
        yield dict(row)


_SELECT_STATE = "SELECT out_count, out_id, in_held, in_id, destroyed_id FROM code_state WHERE code = ?"
_WRITE_STATE = (
    "INSERT OR REPLACE INTO code_state (code, out_count, out_id, in_held, in_id, destroyed_id)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
_COLUMNS = (*HASHED, "hash", *HASHED_WHEN_SET)
_BLANK_ROW = dict.fromkeys(_COLUMNS)
# Positional: sqlite3 binds ``?`` from a tuple without looking each ``:name`` up in a dict.
_INSERT_ROW = f"INSERT INTO scans ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)})"
_row_values = operator.itemgetter(*_COLUMNS)
