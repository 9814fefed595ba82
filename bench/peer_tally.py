"""What the peers' share of a decision costs: :func:`agent.ledger.peers.tally` on a full site.

    .venv/bin/python -m bench.peer_tally [--peer-rows 200000] [--pack-codes 600000] [--lookups 20000]

A ledger holds ``--peer-rows`` peer rows (dispenses of distinct codes, and case receives
whose ``--pack-codes`` inner codes are in ``peer_packs``). Each decision calls ``tally``
once for its code: timed here for a code no peer moved (the usual case: a miss), a code a
peer dispensed, and a unit inside a case a peer received; beside it the query of schema 7
(``peer_events`` alone) for the miss, which is what the ``peer_packs`` probe adds to.
Printed in microseconds, p50 and p99, in memory-cached pages (a warm kiosk).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.ledger import Ledger, peers
from bench.machine import header

OLD = "SELECT id, movement, verdict FROM peer_events WHERE code = ? ORDER BY id"


def code(n: int, kind: int) -> str:
    return f"8{kind}{n:018d}"


def fill(ledger: Ledger, rows: int, pack_codes: int) -> None:
    cases = max(1, rows // 10)
    per_case = max(1, pack_codes // cases)
    batch = []
    for n in range(rows):
        case = n < cases
        batch.append(
            {
                "event_id": f"peer-{n}",
                "device_id": f"kiosk-{n % 4}",
                "site_id": "site-1",
                "seq": n // 4 + 1,
                "ts": "2026-11-30T08:00:00.000Z",
                "movement": "receive" if case else "dispense",
                "verdict": "accepted",
                "code": code(n, 1 if case else 2),
                "product_id": "8123456",
                "hash": "ab" * 32,
                "pack_codes": [code(n * per_case + u, 3) for u in range(per_case)] if case else [],
            }
        )
        if len(batch) == 5000:
            peers.store(ledger.conn, batch, device_id="kiosk-9", received_ts="2026-11-30T08:00:01.000Z")
            batch = []
    if batch:
        peers.store(ledger.conn, batch, device_id="kiosk-9", received_ts="2026-11-30T08:00:01.000Z")


def timed(fn, codes: list[str]) -> tuple[float, float]:
    spent = []
    for c in codes:
        t = time.perf_counter_ns()
        fn(c)
        spent.append((time.perf_counter_ns() - t) / 1000)
    spent.sort()
    return statistics.median(spent), spent[int(len(spent) * 0.99)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer-rows", type=int, default=200_000)
    parser.add_argument("--pack-codes", type=int, default=600_000)
    parser.add_argument("--lookups", type=int, default=20_000)
    args = parser.parse_args()
    print(header())
    with tempfile.TemporaryDirectory() as tmp:
        ledger = Ledger.open(Path(tmp) / "ledger.db", device_id="kiosk-9", site_id="site-1")
        started = time.monotonic()
        fill(ledger, args.peer_rows, args.pack_codes)
        packs = ledger.conn.execute("SELECT COUNT(*) FROM peer_packs").fetchone()[0]
        print(
            f"{args.peer_rows} peer rows, {packs} codes inside peers' packs"
            f" (filled in {time.monotonic() - started:.1f} s)"
        )
        n = args.lookups
        cases = max(1, args.peer_rows // 10)
        miss = [code(10**12 + i, 2) for i in range(n)]
        sold = [code(cases + i % (args.peer_rows - cases), 2) for i in range(n)]
        inside = [code(i % packs, 3) for i in range(n)]
        conn = ledger.conn
        for name, fn, codes in (
            ("schema 7 query, a miss", lambda c: conn.execute(OLD, (c,)).fetchall(), miss),
            ("tally, a miss", lambda c: peers.tally(conn, c), miss),
            ("tally, a peer's dispense", lambda c: peers.tally(conn, c), sold),
            ("tally, a unit in a peer's case", lambda c: peers.tally(conn, c), inside),
        ):
            timed(fn, codes[:1000])  # warm
            p50, p99 = timed(fn, codes)
            print(f"{name:<34} p50 {p50:6.1f} µs   p99 {p99:6.1f} µs   ({n} lookups)")
        ledger.close()


if __name__ == "__main__":
    main()
