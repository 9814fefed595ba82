"""How long `scan-agent doctor` spends on the ledger check (PRAGMA integrity_check
plus the hash-chain verify) as the ledger grows, and what one watchdog health
probe costs.

    .venv/bin/python bench/doctor_ledger.py [ROWS ...]     (default 10000 100000)
"""

from __future__ import annotations

import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent import codes
from agent.ledger import Ledger, connect
from agent.ops.doctor import check_ledger
from agent.ops.systemd import pipeline_healthy
from agent.read import Read
from bench.machine import describe


def build(path: Path, rows: int) -> None:
    ledger = Ledger.open(path, device_id="bench", site_id="bench")
    ledger.conn.execute("PRAGMA synchronous=OFF")  # building only: the check reads it afterwards
    for i in range(rows):
        read = Read(f"8{i:019d}".encode(), "stdin", "bench")
        ledger.decide_and_record(read, "dispense", codes.parse(read.raw))
    ledger.close()


class Idle:
    last_progress = time.monotonic()
    faulted = False


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [10_000, 100_000]
    print(f"machine: {describe()}")
    print(f"date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    with tempfile.TemporaryDirectory() as tmp:
        for rows in sizes:
            db = Path(tmp) / f"ledger-{rows}.db"
            build(db, rows)
            start = time.perf_counter()
            check = check_ledger(db)
            took = time.perf_counter() - start
            size_mb = db.stat().st_size / 1e6
            print(f"ledger check, {rows:>7} scans ({size_mb:.1f} MB): {took:.2f} s -> {check.status}")
        probe = connect(Path(tmp) / f"ledger-{sizes[0]}.db")
        n = 2000
        start = time.perf_counter()
        for _ in range(n):
            Idle.last_progress = time.monotonic()
            assert pipeline_healthy(Idle, probe, stall_s=10)
        print(f"watchdog health probe: {(time.perf_counter() - start) / n * 1e6:.0f} us each")


if __name__ == "__main__":
    main()
