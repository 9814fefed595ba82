"""WAL pages one scan writes, per verdict: what each scan costs an SD card.

    python bench/pages.py                  # 2,000 scans of each kind on a fresh ledger
    python bench/pages.py --rows 1000000   # ... on a ledger pre-filled as bench/decide.py does

Every commit appends to the WAL one frame (a page plus a 24-byte header) per page it
changed. With automatic checkpoints off, the WAL's growth across one
``decide_and_record`` divided by the frame size is the number of pages that scan wrote.
Scans are counted in blocks of one verdict each: accepted (new codes), duplicate, rejected
(an EAN-13), double read. The figures are means over the block, so the occasional B-tree
page split and the header page (written whenever the database grows) are included.

Then documents: a block of new codes accepted inside an open document (a sale without
lines, as a scanned document barcode opens one, up to its 3,500 codes), and, for
information, the entry rows: a document opened, an empty one closed (means over 20),
and the close of the block's document, whose row lists all its codes and their hashes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from agent import codes
from agent.domain import DOCUMENT_LIMIT
from agent.ledger import Ledger
from agent.ledger.checkpoint import BATCH_COMMITS
from agent.ledger.documents import Document
from agent.read import Read
from bench.machine import header

#: Documents opened and closed empty, for the entry rows' means.
ENTRIES = 20


class WalCounter:
    """Frames appended to a ledger's WAL, read from the file's size."""

    def __init__(self, db: Path) -> None:
        self.wal = db.with_name(db.name + "-wal")
        self.page_size = 4096

    def frames(self) -> int:
        size = self.wal.stat().st_size if self.wal.exists() else 0
        return max(0, size - 32) // (self.page_size + 24)


def scans_of(verdict: str, n: int, start: int) -> list[tuple[bytes, float]]:
    """``n`` (raw, seconds since the previous scan) that the ledger decides as ``verdict``."""
    if verdict in ("accepted", "duplicate"):  # new codes, then the same codes again
        return [(f"8{start + i:019d}".encode(), 10.0) for i in range(n)]
    if verdict == "rejected":
        return [(b"6901234567892", 10.0)] * n  # the product barcode, apart enough not to be double reads
    return [(b"8" + b"7" * 19, 0.01)] * (n + 1)  # the first is accepted, the rest are double reads


def measure(path: Path, per_verdict: int) -> dict[str, float]:
    """Mean WAL pages per scan for each verdict, then for the document rows, on the ledger at ``path``."""
    ledger = Ledger.open(path, device_id="bench", site_id="site")
    if ledger.checkpointer is not None:
        ledger.checkpointer.stop()  # a checkpoint would reset the WAL under the count
    ledger.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    wal = WalCounter(path)
    start = 10**18 + ledger.conn.execute("SELECT COUNT(*) FROM scans").fetchone()[0] * 10
    t = 1_000_000.0
    pages: dict[str, float] = {}
    for verdict in ("accepted", "duplicate", "rejected", "double_read"):
        per_scan = []
        for raw, gap in scans_of(verdict, per_verdict, start):
            t += gap
            read = Read(raw, "serial", "usb:1", t_first=t, t_last=t)
            before = wal.frames()
            decision = ledger.decide_and_record(read, "dispense", codes.parse(read.raw))
            if decision.verdict == verdict:
                per_scan.append(wal.frames() - before)
        assert len(per_scan) == per_verdict, f"{verdict}: {len(per_scan)} of {per_verdict} decided so"
        pages[verdict] = statistics.mean(per_scan)
        ledger.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    pages |= documents(ledger, wal, min(per_verdict, DOCUMENT_LIMIT), start + 2 * per_verdict, t)
    ledger.close()
    return pages


def documents(ledger: Ledger, wal: WalCounter, scans: int, start: int, t: float) -> dict[str, float]:
    """Mean WAL pages of an accepted scan inside an open document, of opening one, of closing
    an empty one, and of closing the one that holds the ``scans`` codes."""
    entry = Read(b"", "bench", "bench")
    opened, closed = [], []
    for n in range(ENTRIES):
        before = wal.frames()
        ledger.open_document(Document(id=f"EMPTY-{start}-{n}", kind="sale"), read=entry)
        opened.append(wal.frames() - before)
        before = wal.frames()
        ledger.close_document(f"EMPTY-{start}-{n}", closed_by="bench", read=entry)
        closed.append(wal.frames() - before)
    ledger.open_document(Document(id=f"FULL-{start}", kind="sale"), read=entry)
    ledger.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    per_scan = []
    for i in range(scans):
        t += 10.0
        read = Read(f"8{start + i:019d}".encode(), "serial", "usb:1", t_first=t, t_last=t)
        before = wal.frames()
        decision = ledger.decide_and_record(read, "dispense", codes.parse(read.raw))
        assert decision.verdict == "accepted" and decision.document is not None, decision
        per_scan.append(wal.frames() - before)
    before = wal.frames()
    ledger.close_document(f"FULL-{start}", closed_by="bench", read=entry)
    close_full = wal.frames() - before
    ledger.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return {
        "in_document": statistics.mean(per_scan),
        "opened": statistics.mean(opened),
        "closed_empty": statistics.mean(closed),
        f"closed_{scans}": float(close_full),
    }


def storage_bytes() -> int:
    """Bytes this process caused to be sent to storage so far (Linux /proc/self/io)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


def wear(path: Path, scans: int, every: int = 1) -> float:
    """Bytes sent to storage per accepted scan: each scan committed, its event's delivery
    recorded (as the uplink does on a PUBACK), and the WAL checkpointed into the database
    after every ``every`` scans (and at the end). With ``every=1`` no page is shared with
    the next scan: the upper bound. The checkpointer batches ``BATCH_COMMITS`` scans."""
    from agent.ledger import Checkpointer, connect
    from agent.ledger.outbox import Outbox

    ledger = Ledger.open(path, device_id="bench", site_id="site")
    if ledger.checkpointer is not None:
        ledger.checkpointer.stop()
    outbox, checkpoints = Outbox(connect(path)), connect(path)
    base = 2 * 10**18 + ledger.conn.execute("SELECT COUNT(*) FROM scans").fetchone()[0] * 10
    Checkpointer.checkpoint(checkpoints)
    before = storage_bytes()
    for i in range(scans):
        read = Read(f"8{base + i:019d}".encode(), "serial", "usb:1", t_first=i * 10.0, t_last=i * 10.0)
        decision = ledger.decide_and_record(read, "dispense", codes.parse(read.raw))
        outbox.mark_delivered([decision.scan_id])
        if (i + 1) % every == 0 or i + 1 == scans:
            Checkpointer.checkpoint(checkpoints)
    written = storage_bytes() - before
    outbox.close()
    checkpoints.close()
    ledger.close()
    return written / scans


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scans", type=int, default=2000, help="scans of each verdict")
    parser.add_argument("--rows", type=int, default=0, help="pre-fill this many scans first (bench/decide.py's way)")
    parser.add_argument("--dir", default="/var/tmp", help="where the ledger goes (a real disk, for the bytes written)")
    args = parser.parse_args()
    print(header())
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "pages.db"
        if args.rows:
            from bench.decide import prefill

            prefill(path, args.rows)
        pages = measure(path, args.scans)
        per_scan = wear(path, min(args.scans, 500))
        batched = wear(path, 2 * BATCH_COMMITS, every=BATCH_COMMITS)
    print(f"\nWAL pages per scan, mean of {args.scans} each, ledger of {args.rows:,} scans before")
    for verdict, mean in pages.items():
        print(f"{verdict:<14}{mean:6.2f}")
    print(f"\naccepted: {pages['accepted']:.2f} pages (target <= 4)")
    print(f"a scan inside an open document: {pages['in_document']:.2f} pages (target <= 5)")
    print(f"(opened and closed_empty: means of {ENTRIES}; closed_N: one close of a document of N codes)")
    print(
        f"\nbytes to storage per accepted scan (WAL, a checkpoint after each, its delivery): {per_scan / 1024:.1f} KiB"
    )
    year = per_scan * 10_000 * 365
    print(f"a busy counter, 10,000 scans a day: {per_scan * 10_000 / 1e6:.0f} MB a day, {year / 1e9:.0f} GB a year")
    print(f"with a checkpoint every {BATCH_COMMITS} scans, as the checkpointer does: {batched / 1024:.1f} KiB a scan,")
    print(f"  {batched * 10_000 / 1e6:.0f} MB a day, {batched * 10_000 * 365 / 1e9:.0f} GB a year")


if __name__ == "__main__":
    main()
