"""The record of deliveries: a row in ``deliveries`` for each successful PUBACK, group-committed.

A PUBACK with a success reason code is the only thing that makes an event
delivered. Each one is written on the recorder's own ledger connection, off
the send path: the PUBACKs that arrive within :data:`RECORD_GATHER_S` share
one fsync'd commit.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from datetime import UTC, datetime

from agent.clock import iso
from agent.ledger.outbox import Outbox

from .health import Counters

log = logging.getLogger(__name__)

#: uplink-record gathers PUBACKs this long before committing them.
RECORD_GATHER_S = 0.02


class Recorder:
    """Writes deliveries in batches on its own thread, ``uplink-record``.

    Threads: :meth:`put` on uplink-net (for each successful PUBACK);
    :meth:`run` is the body of uplink-record; :meth:`stop` on any other
    thread, once: it records what was put before it, then ends :meth:`run`.

        recorder = Recorder(counters)
        threading.Thread(target=recorder.run, args=(Outbox.open(path), window.recorded)).start()
        recorder.put(scan_id, 0)  # on a PUBACK
        recorder.stop()
    """

    def __init__(self, counters: Counters | None = None) -> None:
        self.counters = counters or Counters()
        self._queue: queue.SimpleQueue[tuple[int, int] | None] = queue.SimpleQueue()
        self._stopping = threading.Event()

    def put(self, scan_id: int, reason_code: int) -> None:
        """Record this event as delivered, with the PUBACK's reason code."""
        self._queue.put((scan_id, reason_code))

    def stop(self) -> None:
        """Record what was put so far, then end :meth:`run`."""
        self._stopping.set()
        self._queue.put(None)

    def run(self, outbox: Outbox, release: Callable[[list[int]], None]) -> None:
        """Record deliveries until :meth:`stop`, then close ``outbox``.

        ``release(scan_ids)`` is called after each batch, recorded or not: a
        batch that could not be recorded is not delivered, and the next walk of
        the outbox sends it again.
        """
        stop = False
        while not stop:
            batch = [self._queue.get()]
            # Gather for a moment: one fsync'd commit per batch, not per PUBACK.
            # The rows stay busy meanwhile, so nothing is sent twice.
            self._stopping.wait(RECORD_GATHER_S)
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = None in batch
            done = [item for item in batch if item is not None]
            self._write(outbox, done)
            release([scan_id for scan_id, _ in done])
        outbox.close()

    def _write(self, outbox: Outbox, done: list[tuple[int, int]]) -> None:
        by_code: dict[int, list[int]] = {}
        for scan_id, code in done:
            by_code.setdefault(code, []).append(scan_id)
        try:
            for code, scan_ids in by_code.items():
                outbox.mark_delivered(scan_ids, code)
        except sqlite3.Error as problem:
            # Not recorded, so not delivered: the rows are sent again later.
            log.error("could not record %d deliveries: %s; they will be sent again", len(done), problem)
        else:
            self.counters.delivered += len(done)
            if done:
                self.counters.last_puback = iso(datetime.now(UTC))
