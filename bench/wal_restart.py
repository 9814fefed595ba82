"""What a WAL restart costs the scan that makes it: one commit after a checkpoint, one without.

    .venv/bin/python bench/wal_restart.py [--scans 400] [--gap 0.05] [--dir /var/tmp]

A checkpoint that copies the whole WAL back into the database makes the next commit start
the WAL over, and SQLite then writes the WAL's header and flushes it before it writes the
commit's pages and flushes again: that scan waits for two flushes. Here scans take turns:
every other one follows a checkpoint (made on another connection, as the agent's
checkpointer does), the others follow a scan. Both kinds run in the same minutes on the same
ledger (``synchronous=FULL``), so the difference is the restart. Prints p50 / p99 of
``decide_and_record`` for each kind, and a raw 32 KiB write + ``fdatasync`` probe.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent import codes
from agent.ledger import Checkpointer, Ledger, connect
from agent.read import Read
from bench.machine import header, pct, row
from bench.probes import fsync_probe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scans", type=int, default=400)
    ap.add_argument("--gap", type=float, default=0.05)
    ap.add_argument("--dir", default="/var/tmp", help="where the ledger goes (a real disk)")
    args = ap.parse_args()
    print(header())
    probe = fsync_probe(args.dir)
    times: dict[str, list[float]] = {"after a checkpoint (WAL restarted)": [], "after a scan (WAL appended)": []}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "ledger.db"
        ledger = Ledger.open(path, device_id="bench", site_id="bench", double_read_window_s=0)
        if ledger.checkpointer is not None:
            ledger.checkpointer.stop()  # this bench checkpoints by hand
        other = connect(path)
        for n in range(args.scans):
            restart = n % 2 == 0
            if restart:
                Checkpointer.checkpoint(other)
            time.sleep(args.gap)
            raw = b"8%019d\r" % (1_000_000_000 + n)
            read = Read(raw, "serial", "bench")
            t0 = time.monotonic()
            ledger.decide_and_record(read, "dispense", codes.parse(raw))
            times[next(iter(times)) if restart else list(times)[1]].append((time.monotonic() - t0) * 1000)
        other.close()
        ledger.close()
    probe += fsync_probe(args.dir)
    print(f"ledger in {args.dir}; {args.scans} scans {args.gap} s apart, taking turns")
    print(f"{'decide_and_record, ms':>36} {'p50':>7} {'p99':>7} {'max':>7}")
    for name, values in times.items():
        print(f"{name:>36} {pct(values, 50):7.3f} {pct(values, 99):7.3f} {max(values):7.3f}")
    print(row("fsync probe (32 KiB + fdatasync)", probe, 36))


if __name__ == "__main__":
    main()
