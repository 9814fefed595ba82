"""Copying the WAL back into the database, off the scan path, and seldom.

The pipeline's connection has automatic checkpoints off: a checkpoint inside a
scan's commit would add milliseconds to that one beep. :class:`Checkpointer`
does it on its own thread and connection instead, in batches: a checkpoint that
copies the whole WAL back makes the next commit restart the WAL, and a restart
writes and flushes the WAL's header before the commit's own flush, so that scan
waits for two flushes of the disk instead of one.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from pathlib import Path

from agent.ledger.sqlite import connect

log = logging.getLogger(__name__)

WAL_RESTART_PAGES = 4096  # 16 MB of 4 KiB pages
#: How long a restarting checkpoint may wait for readers (ms). While it waits, SQLite holds
#: off every new writer, the scan path's commit included: with the default 10 s, a scan
#: waited for as long as the uplink draining a backlog kept reading (seen in the power-cut
#: suite: no decision for 39 s, the uplink's own writes failing "database is locked").
RESTART_WAIT_MS = 50
#: Commits announced between checkpoints: about 1,100 WAL frames (4.4 MB) of scans, so a
#: restart's second flush falls on one scan in 300, out of the 99th percentile.
BATCH_COMMITS = 300
#: No commit announced for this long: the WAL is checkpointed as it stands.
QUIET_S = 600.0


class Checkpointer:
    """Checkpoints the ledger at ``path`` on a thread of its own, ``interval_s`` after
    :meth:`wrote` has announced ``batch`` commits since the last checkpoint, or once no
    commit was announced for ``quiet_s`` (a counter's pause: the next scan pays the WAL's
    restart then, one scan in a pause, where a checkpoint every second made every scan
    of a slow counter pay it).

    The pipeline calls :meth:`wrote` after each scan; the thread sleeps meanwhile, waking
    every ``idle_s`` to check for quiet, and to catch writes nobody announced
    (:class:`~agent.ledger.Ledger` used without a pipeline, as tests and benches do: then
    it checkpoints on every wake). :meth:`start` and :meth:`stop` are for the thread that
    owns the ledger; :meth:`wrote` is for any.
    """

    def __init__(
        self,
        path: str | Path,
        interval_s: float = 1.0,
        idle_s: float = 5.0,
        *,
        batch: int = BATCH_COMMITS,
        quiet_s: float = QUIET_S,
    ) -> None:
        self.path = path
        self.interval_s = interval_s
        self.idle_s = idle_s
        self.batch = batch
        self.quiet_s = quiet_s
        self._announced = 0  # commits announced since the last checkpoint
        self._last_announced = float("-inf")  # monotonic
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
        """Something was committed; a full batch is checkpointed within ``interval_s``.
        Cheap (no wake-up until the batch is full)."""
        self._last_announced = time.monotonic()
        self._announced += 1
        if self._announced >= self.batch and not self._written.is_set():
            self._written.set()

    @staticmethod
    def checkpoint(conn: sqlite3.Connection) -> bool:
        """A passive checkpoint; under a steady stream of scans a passive one never
        reaches the end of the WAL, which then only grows, so past a bound the WAL
        is restarted (the pipeline waits a few milliseconds, once per bound).

        The restart gives up after :data:`RESTART_WAIT_MS` if a reader still holds the
        WAL, and is tried again at the next checkpoint: False then, else True.
        """
        _busy, wal_pages, _done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if wal_pages <= WAL_RESTART_PAGES:
            return True
        (timeout,) = conn.execute("PRAGMA busy_timeout").fetchone()
        conn.execute(f"PRAGMA busy_timeout = {RESTART_WAIT_MS}")
        try:
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            conn.execute(f"PRAGMA busy_timeout = {timeout}")
        if busy:
            log.info("ledger: the WAL (%d pages) is still being read; restarting it at the next checkpoint", wal_pages)
        return not busy

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while True:
                # A full batch: let the scan's feedback and the next scans go first, gather their
                # pages. Woken by idle_s instead: checkpoint only once announced commits went quiet.
                if self._written.wait(self.idle_s):
                    if self._stop.wait(self.interval_s):
                        break
                elif time.monotonic() - self._last_announced < self.quiet_s:
                    continue
                if self._stop.is_set():
                    break
                self._written.clear()
                try:
                    # Opened on first use and again after a failure: a checkpointer that died
                    # on one error would leave the WAL to grow for as long as the agent runs.
                    conn = conn or self._connect()
                    self.checkpoint(conn)
                    self._announced = 0  # after a failure, the next write asks again
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
