"""What a station is told besides codes: open or close a document, void a scan, record an
exception, acknowledge a lock, import a supplier's manifest.

Every way in uses these verbs: a scanned barcode (the pipeline recognises it with
:class:`StationCodes`), an MQTT command, the CLI through the control socket, the
local API. Each verb checks its JSON here, naming the first bad field, and then
runs on the pipeline thread, the ledger's one writer, through
:meth:`agent.pipeline.Pipeline.call`. So a document's rows take their place
in the chain between scans, and a refused command leaves the ledger as it was.

>>> codes = StationCodes(patterns={"prescription": "^RX[0-9]{8}$"}, close_code="CLOSE")
>>> codes.match("RX00000001"), codes.match("CLOSE"), codes.match("81234567890123456789")
(('open', 'prescription'), ('close', ''), None)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING

from agent.domain import Decision
from agent.ledger.documents import DocumentError, only_fields, read_document, read_exception, read_text, read_void
from agent.read import Read

if TYPE_CHECKING:
    from agent.ledger.manifests import Manifest
    from agent.pipeline import Pipeline

#: The verbs of :class:`Station`, as MQTT commands and the control socket name them.
VERBS = ("open_document", "close_document", "void", "exception", "acknowledge", "import_manifest")
#: How long a command waits for the pipeline to run it (the pipeline is busy only with scans).
CALL_TIMEOUT_S = 10.0


class StationBusy(DocumentError):
    """The station could not take a command now (its pipeline is stopping, or did not get
    to it in time): nothing was recorded, and the same command may be sent again."""

    def __init__(self, message: str) -> None:
        super().__init__("station", message)


class StationCodes:
    """Barcodes that are not trace codes but tell the station something (``[documents]``).

    ``patterns`` maps a document kind to a regex its barcode matches whole;
    ``close_code`` closes the open document; ``ack_code`` lifts a lock.
    """

    def __init__(self, patterns: Mapping[str, str] | None = None, close_code: str = "", ack_code: str = "") -> None:
        self.patterns = [(kind, re.compile(pattern)) for kind, pattern in (patterns or {}).items()]
        self.close_code = close_code
        self.ack_code = ack_code

    @classmethod
    def from_config(cls, config) -> StationCodes:
        """From a :class:`agent.config.DocumentsConfig`."""
        return cls(config.patterns, config.close_code, config.ack_code)

    def match(self, text: str) -> tuple[str, str] | None:
        """``("open", kind)``, ``("close", "")``, ``("ack", "")``, or None for anything else."""
        if self.close_code and text == self.close_code:
            return "close", ""
        if self.ack_code and text == self.ack_code:
            return "ack", ""
        for kind, pattern in self.patterns:
            if pattern.fullmatch(text):
                return "open", kind
        return None


class Station:
    """The verbs, for commands. Threads: any thread may call them; each waits (at most
    ``timeout_s``) for the pipeline thread to run it, and returns the reply's result or
    raises :class:`DocumentError` naming the field (nothing recorded).

    ``via`` says where a command came from (``mqtt``, ``cli``, ``api``): it becomes
    the entry row's ``source_kind``, and ``source_id`` says who or what sent it.
    """

    def __init__(
        self, pipeline: Pipeline, *, on_new: str = "close_previous", timeout_s: float = CALL_TIMEOUT_S
    ) -> None:
        self.pipeline = pipeline
        self.on_new = on_new
        self.timeout_s = timeout_s

    def open_document(self, body: Mapping, *, via: str = "command", source_id: str = "") -> dict:
        document = read_document(body)
        ledger = self.pipeline.ledger
        return self._run(
            lambda read: ledger.open_document(document, on_new=self.on_new, read=read, operator=self._operator()),
            via,
            source_id,
        )

    def close_document(self, body: Mapping, *, via: str = "command", source_id: str = "") -> dict:
        only_fields(body, ("id",))
        doc_id = read_text(body, "id")
        ledger = self.pipeline.ledger
        return self._run(
            lambda read: ledger.close_document(doc_id, closed_by=via, read=read, operator=self._operator()),
            via,
            source_id,
        )

    def void(self, body: Mapping, *, via: str = "command", source_id: str = "") -> dict:
        event_id, reason, approver = read_void(body)
        ledger = self.pipeline.ledger
        return self._run(
            lambda read: ledger.void(event_id, reason=reason, approver=approver, read=read, operator=self._operator()),
            via,
            source_id,
        )

    def exception(self, body: Mapping, *, via: str = "command", source_id: str = "") -> dict:
        doc_id, item = read_exception(body)
        ledger = self.pipeline.ledger
        return self._run(
            lambda read: ledger.add_exception(doc_id, item, read=read, operator=self._operator()), via, source_id
        )

    def acknowledge(self, body: Mapping, *, via: str = "command", source_id: str = "") -> dict:
        only_fields(body, ("by",))
        by = read_text(body, "by")
        ledger = self.pipeline.ledger
        return self._run(lambda read: ledger.acknowledge(by, via=via, read=read), via, source_id)

    def check_manifest(self, body: Mapping) -> Manifest:
        """A supplier's manifest checked whole, or :class:`DocumentError` naming its row and
        field (``codes[17].parent``). Runs on the caller's thread: a big one takes a moment."""
        from agent.ledger.manifests import ManifestError, read_manifest

        try:
            return read_manifest(body, leading_digits=self.pipeline.leading_digits)
        except ManifestError as problem:
            field = ".".join(part for part in (problem.row, problem.field) if part) or "manifest"
            raise DocumentError(field, problem.message) from None

    def import_manifest(
        self, body: Mapping, *, via: str = "command", source_id: str = "", manifest: Manifest | None = None
    ) -> dict:
        """Check a supplier's manifest (:meth:`check_manifest`, unless ``manifest`` is that
        already), then record it on the pipeline thread. The same manifest again records
        nothing (``rows`` empty, ``imported`` false)."""
        if manifest is None:
            manifest = self.check_manifest(body)
        ledger = self.pipeline.ledger
        result = self._run(
            lambda read: ledger.import_manifest(manifest, read=read, operator=self._operator()), via, source_id
        )
        result.update(imported=bool(result["rows"]), bill_code=manifest.bill_code, codes=len(manifest.codes))
        return result

    def _operator(self) -> str:
        return self.pipeline.context.operator

    def _run(self, verb: Callable[[Read], list[Decision]], via: str, source_id: str) -> dict:
        read = Read(b"", source_kind=via, source_id=source_id or via)
        future = self.pipeline.call(lambda: verb(read))
        try:
            decisions = future.result(self.timeout_s)
        except FutureTimeout:
            if future.cancel():  # never started, and now never will: "nothing recorded" holds
                raise StationBusy(
                    f"the pipeline did not take the command within {self.timeout_s:g} s; nothing recorded"
                ) from None
            decisions = future.result()  # started: its rows are being committed, so wait for them
        return {"rows": [reply_row(d) for d in decisions]}


def reply_row(decision: Decision) -> dict:
    """What a command's reply says of each row it recorded."""
    return {
        "verdict": decision.verdict,
        "reason": decision.reason,
        "detail": decision.detail,
        "event_id": decision.event_id,
        "seq": decision.seq,
        "document": decision.document,
        "progress": decision.progress,
    }
