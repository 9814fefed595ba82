"""The single writer: reads in, decisions out, in order, one transaction each.

Sources put :class:`~agent.read.Read` objects on the queue; the pipeline thread
asks :mod:`agent.codes` what each is, asks the ledger to decide and record it,
and only after that commit returns hands the :class:`~agent.ledger.Decision`
to the sinks (feedback first, then printers and the uplink). So a sink never
hears "accepted" for a scan that is not on disk.

>>> from agent.ledger import Ledger
>>> from agent.read import Read
>>> seen = []
>>> class Collect:
...     def decided(self, decision): seen.append(decision.verdict)
>>> p = Pipeline(Ledger.open(":memory:", device_id="k", site_id="s"), sinks=[Collect()])
>>> p.start(); p.submit(Read(b"81234567890123456789", "stdin", "stdin")); p.stop()
>>> seen
['accepted']
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import NamedTuple, Protocol

from agent import codes
from agent.domain import Decision, check_movement
from agent.ledger import Ledger, LedgerError
from agent.ledger.documents import Document, DocumentError
from agent.read import Read
from agent.station import StationBusy, StationCodes

log = logging.getLogger(__name__)

#: An idle pipeline wakes this often, only to refresh ``last_progress``: the watchdog
#: (:func:`agent.ops.systemd.pipeline_healthy`) calls a pipeline stuck after 10 s
#: without progress (``agent.runner.PIPELINE_STALL_S``), so this stays well under that.
IDLE_REFRESH_S = 2.5

#: Source kinds whose reader thread decides its own read when the pipeline is idle
#: (see :meth:`Pipeline.submit`), saving the wake-up of the pipeline's thread. The kernel
#: keeps what the device sends meanwhile (a tty buffers 4 KiB: seconds of scans).
#: Keyboard-wedge scanners are not among them: evdev keeps a few dozen key events, which a
#: disk stall during a commit could overflow while the next scan is typed.
DECIDE_ON_SOURCE_THREAD = frozenset({"serial"})


class Sink(Protocol):
    """Anything told about each decision after it is committed (feedback, uplink, printers).

    ``decided`` must return quickly: it runs on the pipeline thread (see :class:`Pipeline`:
    one decision at a time, in order).
    """

    def decided(self, decision: Decision) -> None: ...


@dataclass(frozen=True)
class Context:
    """What the station is doing now; commands change it between scans."""

    movement: str = "dispense"
    operator: str = ""
    bill: str = ""


_STOP = object()


class _Call(NamedTuple):
    """A command for the pipeline thread: ``verb()`` records rows and returns their decisions."""

    verb: Callable[[], list[Decision]]
    future: Future


class _Failed(NamedTuple):
    """A read decided on a source's thread raised: the pipeline's own thread raises it in turn,
    as if it had been its own, and stops (the watchdog sees no more progress)."""

    problem: BaseException


class Pipeline:
    """Owns the ledger's write connection and the order of decisions.

    Threads: :meth:`submit`, :meth:`set_context`, :meth:`call` and :meth:`stop` are for any
    thread. Everything else, the ledger's writes and the sinks' ``decided`` included, runs on
    *the pipeline thread*: the pipeline's own thread or, for a read from a source kind in
    :data:`DECIDE_ON_SOURCE_THREAD` while nothing is queued, that source's thread in its place.
    Either holds the pipeline's turn (a lock) meanwhile, so there is one at a time, in the
    order things were handed over.
    """

    def __init__(
        self,
        ledger: Ledger,
        *,
        context: Context | None = None,
        sinks: Sequence[Sink] = (),
        leading_digits: Iterable[str] = ("8",),
        accept_gs1: bool = False,
        station_codes: StationCodes | None = None,
        on_new: str = "close_previous",
        idle_close_s: float = 0.0,
    ) -> None:
        self.ledger = ledger
        self.context = context or Context()
        self.sinks = list(sinks)
        self.leading_digits = tuple(leading_digits)
        self.accept_gs1 = accept_gs1
        self.station_codes = station_codes or StationCodes()
        self.on_new = on_new
        #: An open document with no scan for this long closes as it stands (0: never).
        self.idle_close_s = idle_close_s
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        #: Held by whichever thread is the pipeline thread now (see the class docstring).
        self._turn = threading.Lock()
        #: Items put on the queue and not yet handled: a source decides its own read only at 0.
        self._waiting = 0
        self._waiting_lock = threading.Lock()
        self.last_progress = time.monotonic()
        self.faulted = False
        self._thread: threading.Thread | None = None
        self._stopping = False
        #: When the open document last had a scan or a command (monotonic).
        self._document_active = time.monotonic()

    def submit(self, read: Read) -> None:
        """Hand over a read; safe from any thread.

        A read from a source kind in :data:`DECIDE_ON_SOURCE_THREAD`, while the pipeline
        runs with nothing queued or in hand, is decided on the calling thread: this returns
        after its commit and its sinks. Any other read is queued behind what came before it.
        """
        if read.source_kind in DECIDE_ON_SOURCE_THREAD and self._decide_here(read):
            return
        self._put(read)

    def set_context(self, **changes: str) -> None:
        """Change movement, operator or bill for the reads queued after this call."""
        if "movement" in changes:
            check_movement(changes["movement"])
        self._put(changes)

    def _put(self, item: object) -> None:
        with self._waiting_lock:
            self._waiting += 1
        self.queue.put(item)

    def _decide_here(self, read: Read) -> bool:
        """Handle ``read`` on this thread if the pipeline is running and idle; False if not (then queue it)."""
        thread = self._thread
        if thread is None or self._stopping or not self._turn.acquire(blocking=False):
            return False
        try:
            # Something queued (or in the pipeline thread's hand) came first: this read waits its turn.
            if self._waiting or not thread.is_alive():
                return False
            try:
                self.handle(read)
            except BaseException as problem:
                # Not on this source's thread (its reader would take it for a port failure):
                # the pipeline's own thread raises it and stops, as it would have.
                self._put(_Failed(problem))
                return True
            self.last_progress = time.monotonic()
            return True
        finally:
            self._turn.release()

    def call(self, verb: Callable[[], list[Decision]]) -> Future:
        """Run ``verb`` on the pipeline thread, between reads; safe from any thread.

        ``verb`` records rows through the ledger and returns their decisions, which
        the sinks hear as they hear a scan's. The future holds the decisions, or the
        :class:`~agent.ledger.documents.DocumentError` or :class:`~agent.ledger.LedgerError`.
        """
        future: Future = Future()
        if self._stopping:
            future.set_exception(StationBusy("the agent is stopping; nothing was recorded"))
            return future
        self._put(_Call(verb, future))
        return future

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="pipeline", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Finish every read queued so far, then stop."""
        self._put(_STOP)
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self) -> None:
        while True:
            try:
                item = self.queue.get(timeout=IDLE_REFRESH_S)
            except queue.Empty:
                with self._turn:
                    self.close_if_idle()
                    self.last_progress = time.monotonic()
                continue
            with self._turn:
                if item is _STOP:
                    self._refuse_calls_left()
                    return
                if isinstance(item, dict):
                    self.context = replace(self.context, **item)
                elif isinstance(item, _Call):
                    self.run_call(item)
                elif isinstance(item, _Failed):
                    raise item.problem
                else:
                    self.handle(item)
                self.close_if_idle()
                self.last_progress = time.monotonic()
                # Last: until now a source's read must not overtake this item.
                with self._waiting_lock:
                    self._waiting -= 1

    def _refuse_calls_left(self) -> None:
        """Stopping: a command queued after the stop is answered, not left waiting."""
        self._stopping = True
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _Call) and item.future.set_running_or_notify_cancel():
                item.future.set_exception(StationBusy("the agent is stopping; nothing was recorded"))

    def run_call(self, call: _Call) -> None:
        """Run one command (on the pipeline thread) and tell the sinks what it recorded."""
        if not call.future.set_running_or_notify_cancel():
            return
        try:
            decisions = call.verb()
        except (DocumentError, LedgerError) as problem:
            call.future.set_exception(problem)
            return
        except Exception as problem:
            log.exception("a station command failed")
            call.future.set_exception(problem)
            return
        self._document_active = time.monotonic()
        call.future.set_result(decisions)  # before the sinks: a failing sink must not keep the caller waiting
        self.announce(decisions)

    def close_if_idle(self, now: float | None = None) -> None:
        """Close the open document when it has had no scan for ``idle_close_s`` (pipeline thread)."""
        doc = self.ledger.document
        if doc is None or not self.idle_close_s:
            return
        now = time.monotonic() if now is None else now
        if now - self._document_active < self.idle_close_s:
            return
        read = Read(b"", source_kind="idle", source_id="idle_close")
        try:
            decisions = self.ledger.close_document(doc.id, closed_by="idle", read=read, operator=self.context.operator)
        except LedgerError as problem:
            log.error("could not close idle document %s: %s", doc.id, problem)
            self._document_active = now  # tried; again after another idle period
            return
        log.info("document %s closed after %.0f s without a scan", doc.id, self.idle_close_s)
        self.announce(decisions)

    def handle(self, read: Read) -> Decision:
        """Decide, record and announce one read (on the calling thread)."""
        parsed = codes.parse(read.raw, leading_digits=self.leading_digits, accept_gs1=self.accept_gs1)
        movement = read.movement or self.context.movement
        action = None if parsed.valid else self.station_codes.match(parsed.text)
        if action is not None and self.ledger.is_double_read(read, parsed.text):
            action = None  # the scanner reading a document barcode twice: recorded quietly, as any double read
        try:
            if action is not None and (self.ledger.lock is None or action[0] == "ack"):
                decision = self._station_scan(read, parsed, action)
                self.ledger.remember_read(read, parsed.text)
            else:
                decision = self.ledger.decide_and_record(
                    read, movement, parsed, operator=self.context.operator, bill=self.context.bill
                )
            if self.faulted:
                log.warning("ledger writable again")
            self.faulted = False
        except LedgerError as problem:
            if not self.faulted:
                log.error("%s", problem)
            self.faulted = True
            log.error("NOT RECORDED from %s: %s", read.source_id, codes.escape(read.raw))
            decision = Decision(
                verdict="fault",
                reason="ledger_unwritable",
                detail=str(problem),
                movement=movement,
                text=parsed.code if parsed.valid else parsed.text,
                parsed=parsed,
                read=read,
            )
        if self.ledger.document is not None:
            self._document_active = time.monotonic()  # after: a document just opened starts its idle time now
        self.announce([decision])
        return decision

    def _station_scan(self, read: Read, parsed: codes.Rejection, action: tuple[str, str]) -> Decision:
        """A scanned document barcode, close code or acknowledge code: its entry rows are
        announced here but for the last, which :meth:`handle` announces; a refusal is
        recorded as a rejected scan naming why."""
        verb, kind = action
        operator = self.context.operator
        try:
            if verb == "open":
                document = Document(id=parsed.text, kind=kind)
                decisions = self.ledger.open_document(document, on_new=self.on_new, read=read, operator=operator)
            elif verb == "close":
                doc = self.ledger.document
                if doc is None:
                    raise DocumentError("close_code", "no document is open")
                decisions = self.ledger.close_document(doc.id, closed_by="close_code", read=read, operator=operator)
            else:
                # Whoever holds the ack code acknowledged: not the operator whose scan locked it.
                decisions = self.ledger.acknowledge("supervisor", via="ack_code", read=read)
        except DocumentError as problem:
            refused = codes.Rejection("document_refused", parsed.text, str(problem), parsed.symbology)
            return self.ledger.decide_and_record(read, self.context.movement, refused, operator=operator)
        self.announce(decisions[:-1])
        return decisions[-1]

    def announce(self, decisions: Iterable[Decision]) -> None:
        """Tell every sink, in order (pipeline thread); a failing sink is logged and passed over."""
        for decision in decisions:
            for sink in self.sinks:
                try:
                    sink.decided(decision)
                except Exception:
                    log.exception("%s failed on a decision; the scan is recorded regardless", type(sink).__name__)
        if self.ledger.checkpointer is not None:
            self.ledger.checkpointer.wrote()  # after the sinks: the WAL's copy-back waits, the operator does not
