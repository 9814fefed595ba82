"""Copying the WAL back into the database, off the scan path.

The pipeline's connection has automatic checkpoints off: a checkpoint inside a
scan's commit would add milliseconds to that one beep. :class:`Checkpointer`
does it on its own thread and connection instead.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from pathlib import Path

from agent.ledger.sqlite import connect

log = logging.getLogger(__name__)

WAL_RESTART_PAGES = 4096  # 16 MB of 4 KiB pages


class Checkpointer:
    """Checkpoints the ledger at ``path`` on a thread of its own, ``interval_s`` after
    :meth:`wrote` says a transaction was committed (at most once per ``interval_s``).

    The pipeline calls :meth:`wrote` after each scan; while nothing is written the
    thread sleeps, waking every ``idle_s`` only to catch writes nobody announced
    (:class:`~agent.ledger.Ledger` used without a pipeline, as tests and benches do).
    :meth:`start` and :meth:`stop` are for the thread that owns the ledger;
    :meth:`wrote` is for any.
    """

    def __init__(self, path: str | Path, interval_s: float = 1.0, idle_s: float = 5.0) -> None:
        self.path = path
        self.interval_s = interval_s
        self.idle_s = idle_s
        self._stop = threading.Event()
        self._written = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ledger-checkpoint", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._written.set()
        self._thread.join(10)

    def wrote(self) -> None:
        """Something was committed: checkpoint within ``interval_s``. Cheap (no wake-up while one is due)."""
        if not self._written.is_set():
            self._written.set()

    @staticmethod
    def checkpoint(conn: sqlite3.Connection) -> None:
        """A passive checkpoint; under a steady stream of scans a passive one never
        reaches the end of the WAL, which then only grows, so past a bound the WAL
        is restarted (the pipeline waits a few milliseconds, once per bound)."""
        _busy, wal_pages, _done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if wal_pages > WAL_RESTART_PAGES:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while True:
                # Announced: let the scan's feedback and the next scans go first, gather their
                # pages. Not announced within idle_s: look anyway, at once (usually nothing to do).
                if self._written.wait(self.idle_s) and self._stop.wait(self.interval_s):
                    break
                if self._stop.is_set():
                    break
                self._written.clear()
                try:
                    # Opened on first use and again after a failure: a checkpointer that died
                    # on one error would leave the WAL to grow for as long as the agent runs.
                    conn = conn or self._connect()
                    self.checkpoint(conn)
                except sqlite3.Error as problem:
                    log.warning("ledger checkpoint failed: %s", problem)
                    conn = self._close(conn)
            conn = conn or self._connect()
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as problem:
            log.warning("ledger checkpoint failed: %s", problem)
        finally:
            self._close(conn)

    def _connect(self) -> sqlite3.Connection:
        conn = connect(self.path)
        conn.execute(f"PRAGMA journal_size_limit = {WAL_RESTART_PAGES * 4096}")
        return conn

    @staticmethod
    def _close(conn: sqlite3.Connection | None) -> None:
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
