"""systemd's sd_notify protocol without libsystemd: one datagram per message.

Under ``Type=notify`` systemd hands the service ``$NOTIFY_SOCKET`` (a unix
datagram socket, ``@name`` meaning the abstract namespace) and, with
``WatchdogSec=``, ``$WATCHDOG_USEC``. Outside systemd neither is set and every
call here does nothing, so the agent runs the same from a terminal.

>>> n = Notifier(env={})
>>> n.enabled, n.notify("READY=1"), n.watchdog_interval()
(False, False, None)
"""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

log = logging.getLogger(__name__)


class Notifier:
    """Sends ``KEY=value`` lines to the service manager, if there is one."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        # systemd sets WATCHDOG_PID to the process it means; a child that
        # inherited the variables must not ping on its parent's behalf.
        pid = env.get("WATCHDOG_PID", "")
        usec = env.get("WATCHDOG_USEC", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_usec = int(usec) if usec.isdigit() and (not pid or pid == str(os.getpid())) else 0
        self.enabled = bool(address)
        self._sock: socket.socket | None = None

    def notify(self, *lines: str) -> bool:
        """Send one message (lines joined by newlines); True if it went out."""
        if not self.enabled:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(lines).encode(), self.address)
            return True
        except OSError as problem:
            # Never fatal: a lost notification at worst makes systemd restart us.
            log.warning("sd_notify %s failed: %s", lines[0] if lines else "", problem)
            return False

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def watchdog_interval(self) -> float | None:
        """Seconds between pings: half the watchdog timeout, as sd_watchdog_enabled(3) advises."""
        return self.watchdog_usec / 2e6 if self.enabled and self.watchdog_usec else None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class Watchdog:
    """Pings ``WATCHDOG=1`` every ``interval`` seconds while ``healthy()`` says so.

    When ``healthy`` turns false the pings stop, and systemd kills and restarts
    the agent once ``WatchdogSec`` has passed: a hung pipeline or a dead
    database is a restart, not a silent kiosk.

    >>> sent = []
    >>> class Fake:
    ...     def notify(self, line): sent.append(line)
    >>> w = Watchdog(Fake(), interval=0.01, healthy=lambda: True)
    >>> w.start(); time.sleep(0.1); w.stop()
    >>> sent[0]
    'WATCHDOG=1'
    """

    def __init__(
        self,
        notifier: Notifier,
        interval: float,
        healthy: Callable[[], bool],
        on_stop: Callable[[], None] | None = None,
    ) -> None:
        self.notifier = notifier
        self.interval = interval
        self.healthy = healthy
        self.on_stop = on_stop  # e.g. close the probe's database connection
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._was_healthy = True

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.on_stop is not None:
            self.on_stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                ok = self.healthy()
            except Exception:
                log.exception("health check failed")
                ok = False
            if ok:
                self.notifier.notify("WATCHDOG=1")
            elif self._was_healthy:
                log.error("agent unhealthy: watchdog pings stopped, systemd will restart the agent")
            self._was_healthy = ok
            self._stop.wait(self.interval)


class LedgerProbe:
    """The watchdog's look at the ledger: the database answers a query, and ``path`` still
    names the file the agent opened, not unlinked and not replaced by another file.

    A ledger unlinked or moved away under a running agent still takes writes, into a
    file nobody will ever read again; only a restart opens the real one. Made and
    used on one thread, the watchdog's (its connection is its own).
    """

    def __init__(self, conn: sqlite3.Connection, path: str | Path) -> None:
        self.conn = conn
        self.path = str(path)
        #: (device, inode) of the ledger when the probe was made; None for ``:memory:``.
        self.identity = None if self.path == ":memory:" else _file_identity(self.path)

    def healthy(self) -> bool:
        if self.identity is not None and _file_identity(self.path) != self.identity:
            return False
        try:
            # Reads the schema page: touches the file, cheap at any ledger size.
            self.conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except Exception:
            return False
        return True

    def close(self) -> None:
        self.conn.close()


def _file_identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def pipeline_healthy(
    pipeline, ledger: LedgerProbe, *, stall_s: float, clock: Callable[[], float] = time.monotonic
) -> bool:
    """True while the pipeline thread made progress within ``stall_s`` seconds and
    the ledger is healthy (:class:`LedgerProbe`).

    The pipeline refreshes ``last_progress`` every few seconds (``IDLE_REFRESH_S``) even when
    idle, so a stale value means its thread is stuck (in a sink, in SQLite...).
    A ledger that cannot write (``faulted``) is unhealthy too: a restart may
    clear a stale lock, and the operator hears fault tones meanwhile.
    """
    if clock() - pipeline.last_progress > stall_s or pipeline.faulted:
        return False
    return ledger.healthy()
