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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from agent import codes
from agent.domain import Decision, check_movement
from agent.ledger import Ledger, LedgerError
from agent.read import Read

log = logging.getLogger(__name__)

#: An idle pipeline wakes this often, only to refresh ``last_progress``: the watchdog
#: (:func:`agent.ops.systemd.pipeline_healthy`) calls a pipeline stuck after 10 s
#: without progress (``agent.runner.PIPELINE_STALL_S``), so this stays well under that.
IDLE_REFRESH_S = 2.5


class Sink(Protocol):
    """Anything told about each decision after it is committed (feedback, uplink, printers).

    ``decided`` must return quickly: it runs on the pipeline thread.
    """

    def decided(self, decision: Decision) -> None: ...


@dataclass(frozen=True)
class Context:
    """What the station is doing now; commands change it between scans."""

    movement: str = "dispense"
    operator: str = ""
    bill: str = ""


_STOP = object()


class Pipeline:
    """Owns the ledger's write connection and the order of decisions."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        context: Context | None = None,
        sinks: Sequence[Sink] = (),
        leading_digits: Iterable[str] = ("8",),
        accept_gs1: bool = False,
    ) -> None:
        self.ledger = ledger
        self.context = context or Context()
        self.sinks = list(sinks)
        self.leading_digits = tuple(leading_digits)
        self.accept_gs1 = accept_gs1
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.last_progress = time.monotonic()
        self.faulted = False
        self._thread: threading.Thread | None = None

    def submit(self, read: Read) -> None:
        """Queue a read; safe from any thread."""
        self.queue.put(read)

    def set_context(self, **changes: str) -> None:
        """Change movement, operator or bill for the reads queued after this call."""
        if "movement" in changes:
            check_movement(changes["movement"])
        self.queue.put(changes)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="pipeline", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Finish every read queued so far, then stop."""
        self.queue.put(_STOP)
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self) -> None:
        while True:
            try:
                item = self.queue.get(timeout=IDLE_REFRESH_S)
            except queue.Empty:
                self.last_progress = time.monotonic()
                continue
            if item is _STOP:
                return
            if isinstance(item, dict):
                self.context = replace(self.context, **item)
            else:
                self.handle(item)
            self.last_progress = time.monotonic()

    def handle(self, read: Read) -> Decision:
        """Decide, record and announce one read (on the calling thread)."""
        parsed = codes.parse(read.raw, leading_digits=self.leading_digits, accept_gs1=self.accept_gs1)
        movement = read.movement or self.context.movement
        try:
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
        for sink in self.sinks:
            try:
                sink.decided(decision)
            except Exception:
                log.exception("%s failed on a decision; the scan is recorded regardless", type(sink).__name__)
        if self.ledger.checkpointer is not None:
            self.ledger.checkpointer.wrote()  # after the sinks: the WAL's copy-back waits, the operator does not
        return decision
