"""How long one scan takes to decide and record, durably, on a fresh and on a full ledger.

    python bench/decide.py                 # 10 million pre-filled scans (built once, kept in bench/out/)
    python bench/decide.py --rows 1000000  # a smaller full ledger
    python bench/decide.py --scans 9000 --rounds 9   # a steadier document comparison

Prints p50/p99/max of ``Ledger.decide_and_record`` (synchronous=FULL, WAL) over
``--scans`` new scans (a tenth of them duplicates), for a fresh ledger and one
pre-filled with ``--rows`` scans, each a distinct code with its movement state
and delivery. The pre-fill is a bulk SQL insert: its hashes are not
a valid chain, which the timing does not depend on.

Then the same scans on the full ledger inside an open document filling up to
near its 3,500 codes (untimed scans first, so the last timed scan finds about
3,400), without lines (as a scanned document barcode opens one) and with a line
covering the product, each as a p99 ratio to the full ledger without a document.
This VM's fsync moves p99 by 2x from one second to the next, so the three run in
``--rounds`` blocks each, taking turns (the order rotated every round), and each
case's p99 is over its blocks together. ``--synchronous OFF`` leaves fsync out,
to see what a document itself costs a scan (not durable: never the kiosk's setting).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from agent import codes
from agent.domain import DOCUMENT_LIMIT
from agent.ledger import Ledger, connect
from agent.ledger.documents import Document, Line
from agent.read import Read
from bench.machine import header

OUT = Path(__file__).resolve().parent / "out"
#: Codes an open document holds at its last timed scan: near the limit, with room to spare.
DOCUMENT_END = DOCUMENT_LIMIT - 100


def prefill(path: Path, rows: int) -> None:
    """Bulk-insert ``rows`` accepted dispense scans, each a distinct code, in SQL."""
    Ledger.open(path, device_id="bench", site_id="site").close()
    conn = connect(path)
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-1000000")
    step = 1_000_000
    started = time.monotonic()
    for low in range(0, rows, step):
        high = min(rows, low + step)
        conn.execute("BEGIN")
        conn.execute(
            """
            WITH RECURSIVE n(i) AS (SELECT :low + 1 UNION ALL SELECT i + 1 FROM n WHERE i < :high)
            INSERT INTO scans (id, seq, event_id, device_id, site_id, ts, clock_synced, movement, verdict,
                               reason, detail, code, raw, kind, product_id, serial, symbology, ais,
                               source_kind, source_id, operator, bill, earlier_id, prev_hash, hash)
            SELECT i, i, printf('%08x-0000-7000-8000-%012x', i / 1000, i), 'bench', 'site',
                   strftime('%Y-%m-%dT%H:%M:%fZ', 1700000000 + i / 10, 'unixepoch'), 1, 'dispense', 'accepted',
                   NULL, '', printf('7%019d', i), printf('7%019d', i), 'nmpa20', substr(printf('7%019d', i), 1, 7),
                   substr(printf('7%019d', i), 8, 9), ']C0', NULL, 'serial', 'usb:bench', '', '', NULL,
                   printf('%064x', i - 1), printf('%064x', i)
            FROM n
            """,
            {"low": low, "high": high},
        )
        conn.execute(
            "INSERT INTO code_state (code, out_count, out_id, in_held) SELECT code, 1, id, 0 FROM scans WHERE id > ?",
            (low,),
        )
        conn.execute(
            "INSERT INTO deliveries (scan_id, ts, reason_code) SELECT id, ts, 0 FROM scans WHERE id > ?", (low,)
        )
        conn.execute("COMMIT")
        print(f"  pre-filled {high:,} scans ({time.monotonic() - started:.0f} s)", file=sys.stderr)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def measure(path: Path, scans: int, document: str = "", warmup: int = 0, synchronous: str = "FULL") -> list[float]:
    """Milliseconds per decide_and_record for ``scans`` new scans (every tenth a duplicate),
    after ``warmup`` untimed ones; with ``document`` ("bare" or "lines"), all inside a
    document opened first."""
    ledger = Ledger.open(path, device_id="bench", site_id="site")
    ledger.conn.execute(f"PRAGMA synchronous={synchronous}")
    if ledger.document is not None:  # left open by an interrupted run: not the loose case
        close(ledger)
    base = 10**18 + int(time.time() * 1000) % 10**12 * 1000
    reads = (scan(base, i) for i in itertools.count())
    if document:
        open_document(ledger, document, product_id=codes.parse(scan(base, 0).raw).product_id)
    for read in itertools.islice(reads, warmup):
        ledger.decide_and_record(read, "dispense", codes.parse(read.raw))
    held = 0 if ledger.document is None else len(ledger.document.scans)
    times = []
    for read in itertools.islice(reads, scans):
        parsed = codes.parse(read.raw)
        t0 = time.perf_counter()
        ledger.decide_and_record(read, "dispense", parsed)
        times.append((time.perf_counter() - t0) * 1000)
    if document:
        print(f"  document ({document}): {held:,} -> {len(ledger.document.scans):,} codes timed", file=sys.stderr)
        close(ledger)
    ledger.close()
    return times


#: The document comparison's cases: no document, a document without lines, one with a line.
CASES = ("", "bare", "lines")


def compare_documents(path: Path, scans: int, rounds: int, synchronous: str) -> dict[str, list[float]]:
    """Times of each case in :data:`CASES`, ``rounds`` blocks of ``scans // rounds`` each, in turn.

    Every block starts with the same untimed scans, enough that a document holds about
    :data:`DOCUMENT_END` codes at its block's last scan (nine in ten scans are new codes);
    so no document, too, is timed on a WAL as full."""
    block = scans // rounds
    warmup = (DOCUMENT_END - block * 9 // 10) * 10 // 9
    times: dict[str, list[float]] = {case: [] for case in CASES}
    for r in range(rounds):
        for case in CASES[r % len(CASES) :] + CASES[: r % len(CASES)]:
            times[case] += measure(path, block, document=case, warmup=warmup, synchronous=synchronous)
    return times


def scan(base: int, i: int) -> Read:
    """The ``i``-th scan of a run: a new code, or every tenth the code of nine scans before."""
    text = f"8{base + (i - i % 10 if i % 10 == 9 else i):019d}"[-20:]
    return Read(text.encode(), "serial", "usb:bench", t_first=float(i * 10), t_last=float(i * 10))


def open_document(ledger: Ledger, kind: str, *, product_id: str) -> None:
    """Open a sale: without lines ("bare"), or with one line for ``product_id`` of the limit's units.

    Its id is as long as a POS's sale number (the id is in each of its scans' rows);
    numbered after the documents the ledger has had, since an id is never reused."""
    lines = (Line(product_id, "bench drug", expected=DOCUMENT_LIMIT),) if kind == "lines" else ()
    opened = ledger.conn.execute("SELECT COUNT(*) FROM scans WHERE record IS NOT NULL AND verdict = 'opened'")
    doc_id = f"SL{opened.fetchone()[0] + 1:08d}"
    ledger.open_document(Document(id=doc_id, kind="sale", lines=lines), read=Read(b"", "bench", "bench"))


def close(ledger: Ledger) -> None:
    ledger.close_document(ledger.document.id, closed_by="bench", read=Read(b"", "bench", "bench"))


def summary(times: list[float]) -> tuple[float, float, float]:
    cuts = statistics.quantiles(times, n=100)
    return statistics.median(times), cuts[98], max(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000, help="scans in the full ledger")
    parser.add_argument("--scans", type=int, default=3000, help="scans timed on each ledger")
    parser.add_argument("--rounds", type=int, default=3, help="blocks of each case in the document comparison")
    parser.add_argument("--synchronous", choices=("FULL", "OFF"), default="FULL", help="OFF: without fsync")
    args = parser.parse_args()
    block = args.scans // max(args.rounds, 1)
    if not 100 <= block <= DOCUMENT_END * 10 // 9:
        parser.error(f"--scans / --rounds: 100 to {DOCUMENT_END * 10 // 9:,} scans a block (a document holds 3,500)")

    print(header())
    OUT.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=OUT) as tmp:
        fresh = measure(Path(tmp) / "fresh.db", args.scans, synchronous=args.synchronous)

    full_path = OUT / f"full-{args.rows}.db"
    if not full_path.exists():
        print(f"building a ledger of {args.rows:,} scans in {full_path} (once)", file=sys.stderr)
        partial = full_path.with_suffix(".partial")
        for leftover in OUT.glob(partial.name + "*"):
            leftover.unlink()
        prefill(partial, args.rows)
        partial.rename(full_path)
    size_gb = full_path.stat().st_size / 1e9
    # Timed scans are appended to the kept ledger: a few thousand more on
    # millions change nothing, and each run uses codes of its own.
    full = measure(full_path, args.scans, synchronous=args.synchronous)
    compared = compare_documents(full_path, args.scans, args.rounds, args.synchronous)

    print(f"\ndecide_and_record, synchronous={args.synchronous}, {args.scans} scans each (ms)")
    print(f"{'ledger':<44}{'p50':>8}{'p99':>8}{'max':>8}")
    rows_fresh, rows_full = summary(fresh), summary(full)
    print(f"{'fresh':<44}" + "".join(f"{v:8.3f}" for v in rows_fresh))
    print(f"{f'{args.rows:,} scans ({size_gb:.1f} GB)':<44}" + "".join(f"{v:8.3f}" for v in rows_full))
    print(f"\np99 full / p99 fresh = {rows_full[1] / rows_fresh[1]:.2f} (target <= 1.2); p99 target < 2 ms")

    print_comparison(compared, args.rounds, block)


def print_comparison(compared: dict[str, list[float]], rounds: int, block: int) -> None:
    """Each case's p50/p99/max over its blocks, and its p99 against no document's, pooled and round by round."""
    print(f"\nthe same ledger, {rounds} rounds of {block} scans per case, in turn (ms)")
    names = {"": "no document", "bare": "in a document without lines", "lines": "in a document with a line"}
    rows = {case: summary(times) for case, times in compared.items()}
    for case, row in rows.items():
        print(f"{names[case]:<44}" + "".join(f"{v:8.3f}" for v in row))
    print()
    for case in CASES[1:]:
        by_round = [
            summary(compared[case][r * block : (r + 1) * block])[1]
            / summary(compared[""][r * block : (r + 1) * block])[1]
            for r in range(rounds)
        ]
        print(
            f"p99 {names[case]} / p99 no document = {rows[case][1] / rows[''][1]:.2f} (target <= 1.2); "
            f"round by round {', '.join(f'{x:.2f}' for x in by_round)}"
        )


if __name__ == "__main__":
    main()
