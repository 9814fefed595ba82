"""The processes of an end-to-end run: ``scan-collector run`` and a ``scan-agent run`` fed on stdin."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

from tests.support.agent import ROOT, agent_config, agent_env, start_agent
from tests.support.backlog import code
from tests.support.net import wait_until


class CollectorProc:
    """``python -m collector run`` as a subprocess; its log in ``log``."""

    def __init__(self, workdir: Path, port: int, dsn: str, *args: str, name: str = "collector-1") -> None:
        self.log = Path(workdir) / f"{name}.log"
        self.cmd = [
            sys.executable,
            "-m",
            "collector",
            "run",
            "--broker",
            f"127.0.0.1:{port}",
            "--dsn",
            dsn,
            "--client-id",
            name,
            *args,
        ]
        self.proc: subprocess.Popen | None = None

    def start(self, wait: bool = True) -> CollectorProc:
        """Start it; with ``wait``, return once it is subscribed (a message before that is for nobody)."""
        seen = self.text().count("collector.intake: subscribed") if self.log.exists() else 0
        out = open(self.log, "ab")  # noqa: SIM115 -- the child keeps it
        self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=out, env=agent_env(), cwd=ROOT)
        out.close()
        if wait:
            wait_until(
                lambda: self.text().count("collector.intake: subscribed") > seen or self.proc.poll() is not None,
                timeout=30,
                what="the collector subscribed",
            )
            assert self.proc.poll() is None, self.text()
        return self

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(20)
        finally:
            self.proc.kill()
            self.proc = None

    def text(self) -> str:
        return self.log.read_text(errors="replace")


class Kiosk:
    """A real agent whose scanner is its stdin: :meth:`scan` writes codes, one a line.

    Threads: :meth:`scan` from one thread at a time; a reader thread of its own collects
    the printed decisions, another its stderr; the ledger queries from any thread (each opens its own connection).
    """

    def __init__(
        self, workdir: Path, port: int, *, device: str = "kiosk-1", site: str = "site-1", mqtt: str = ""
    ) -> None:
        self.ledger = Path(workdir) / f"{device}.db"
        self.config = agent_config(
            Path(workdir) / f"{device}.toml", self.ledger, port, device=device, site=site, mqtt=mqtt
        )
        self.proc = start_agent("run", "--config", str(self.config), "--json")
        self.device = device
        self.decisions: list[bytes] = []
        # Its stderr goes to a file as it comes, so that a long run never blocks on a full pipe.
        self.log = Path(workdir) / f"{device}.log"
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        with open(self.log, "ab") as out:
            for line in self.proc.stderr:
                out.write(line)
                out.flush()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.decisions.append(line)

    def scan(self, first: int, count: int = 1) -> None:
        self.proc.stdin.write(b"".join(code(n) + b"\n" for n in range(first, first + count)))
        self.proc.stdin.flush()

    def stop(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(30)
        finally:
            self.proc.kill()

    def _query(self, sql: str) -> list[tuple]:
        """Read the agent's ledger (read-only: never make it before the agent does)."""
        if not self.ledger.exists():
            return []
        conn = sqlite3.connect(f"file:{self.ledger}?mode=ro", uri=True, timeout=10)
        try:
            return conn.execute(sql).fetchall()
        except sqlite3.OperationalError:
            return []  # not made yet
        finally:
            conn.close()

    def event_ids(self) -> set[str]:
        """Every event the ledger made (its rows with a seq)."""
        return {r[0] for r in self._query("SELECT event_id FROM scans WHERE seq IS NOT NULL")}

    def delivered(self) -> int:
        """Events the broker acknowledged (PUBACK), as the agent recorded them."""
        rows = self._query("SELECT count(*) FROM deliveries")
        return rows[0][0] if rows else 0

    def confirmed(self) -> int:
        """The highest ``stored_through_seq`` of the receipts the agent recorded (0: none)."""
        rows = self._query("SELECT COALESCE(MAX(stored_through_seq), 0) FROM receipts")
        return rows[0][0] if rows else 0

    def accepted(self) -> int:
        """Decisions printed with the verdict ``accepted``."""
        return sum(json.loads(line).get("verdict") == "accepted" for line in list(self.decisions))

    def last_seq(self) -> int:
        rows = self._query("SELECT COALESCE(MAX(seq), 0) FROM scans")
        return rows[0][0] if rows else 0
