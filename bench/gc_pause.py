"""How long a full garbage collection stops every thread of the agent, before and after
the runner's ``settle_heap()`` (gc.collect, then gc.freeze).

    .venv/bin/python bench/gc_pause.py [--scans 2000] [--rounds 5]

While CPython collects it holds the GIL, so the HID, serial and camera reader threads
stand still. The script imports what ``scan-agent run`` imports, opens a ledger on
disk, decides ``--scans`` scans through a pipeline, and times ``gc.collect()``: first
as the heap is, then after ``settle_heap()`` and another ``--scans`` scans (objects made
after the freeze are still collected, so that pause is what a running agent sees).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import agent.cli  # noqa: F401  (everything `scan-agent run` loads)
from agent.ledger import Ledger
from agent.pipeline import Pipeline
from agent.read import Read
from agent.runner import settle_heap
from bench.machine import header


def pauses(rounds: int) -> list[float]:
    """Milliseconds of ``rounds`` full collections."""
    out = []
    for _ in range(rounds):
        started = time.perf_counter()
        gc.collect()
        out.append((time.perf_counter() - started) * 1000)
    return out


def decide(db: Path, first: int, count: int) -> None:
    """Decide ``count`` new codes through a pipeline, as scans would arrive."""
    ledger = Ledger.open(db, device_id="bench", site_id="bench")
    pipeline = Pipeline(ledger)
    pipeline.start()
    for n in range(first, first + count):
        pipeline.submit(Read(f"8{n:019d}".encode(), "stdin", "stdin"))
    pipeline.stop()  # finishes every queued scan
    ledger.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(header())
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "ledger.db"
        decide(db, 0, args.scans)
        before = pauses(args.rounds)
        tracked = len(gc.get_objects())
        settle_heap()
        decide(db, args.scans, args.scans)
        after = pauses(args.rounds)
    print(f"objects tracked before the freeze: {tracked}; frozen: {gc.get_freeze_count()}")
    for name, ms in (("as the heap is", before), ("after settle_heap()", after)):
        print(f"full gc.collect(), {name:>19}: median {statistics.median(ms):6.2f} ms, max {max(ms):6.2f} ms")


if __name__ == "__main__":
    main()
