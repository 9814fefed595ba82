"""Receiving (issue 16): a case scan, a manifest import, and a unit scan beside a million codes.

    python bench/receiving.py case    [--cases 200] [--rounds 5]     # 600-unit case scans
    python bench/receiving.py import  [--runs 5]                     # a 50,000-code manifest
    python bench/receiving.py unit    [--scans 1000] [--rounds 6]    # after 1,000,000 codes
    python bench/receiving.py agent   [--cases 200]                  # the same case scan, end to end
    python bench/receiving.py all

Every ledger is a file under ``bench/out/`` opened as the agent opens it (``Ledger.open``:
WAL, synchronous=FULL, its checkpointer thread running), never ``:memory:``.

- ``case``: ``decide_and_record`` of a receive of a 600-unit case code (the decision, the
  expansion into its units and their state rows, and the commit), p50/p99/max over
  ``--cases``, half of them loose and half inside an open delivery, in blocks taking turns
  (this VM's fsync drifts from one second to the next). Then WAL pages per case scan, on
  more cases with the checkpointer stopped (the WAL's growth over one commit / frame size).
- ``import``: a 50,000-code manifest from its JSON file on disk to committed: parse and
  validate (``read_manifest_file``), then the ledger write (``import_manifest``, one
  transaction), each into a fresh ledger.
- ``unit``: p99 of a unit scan on an empty ledger and on one holding 1,000,000 imported
  codes (20 manifests of 50,000, built once and kept): a receive of a unit code (on the
  full ledger one a manifest lists, inside a case not received), then a dispense of each
  unit just received. The two ledgers take turns in ``--rounds`` blocks; each p99 is over
  its blocks together, and the ratio is also printed round by round.
- ``agent``: the case scan as the dock sees it: a real ``scan-agent run --json`` (receive
  movement, stdin scanner), once it logs that it is up, each case code written and its
  decision line read back; the first is shown apart.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from agent import codes
from agent.ledger import Ledger
from agent.ledger.documents import Document
from agent.ledger.manifests import read_manifest, read_manifest_file
from agent.read import Read
from bench.machine import header
from tests.support.manifests import make_manifest

OUT = Path(__file__).resolve().parent / "out"
ENTRY = Read(b"", "bench", "bench")
#: 82 cases of 4 middle packs of 150 units (605 codes each) and 39 loose units of each of
#: 10 products: 49,610 + 390 = 50,000 codes.
BIG = {"products": 10, "cases": 82, "units_per_case": 600, "middle_per_case": 4, "loose": 39}
BIG_CODES = 50_000
#: Manifests of BIG in the full ledger of ``unit``: 1,000,000 codes.
FULL_MANIFESTS = 20


class Clock:
    """Read times 10 s apart, so no scan is a double read of the one before."""

    def __init__(self) -> None:
        self.t = 1_000_000.0

    def read(self, text: str) -> Read:
        self.t += 10.0
        return Read(text.encode(), "serial", "usb:bench", t_first=self.t, t_last=self.t)


def timed(ledger: Ledger, clock: Clock, movement: str, text: str, want: str = "accepted") -> float:
    """Milliseconds of one ``decide_and_record``; the decision must be ``want``."""
    read = clock.read(text)
    parsed = codes.parse(read.raw)
    t0 = time.perf_counter()
    decision = ledger.decide_and_record(read, movement, parsed)
    took = (time.perf_counter() - t0) * 1000
    assert decision.verdict == want, (text, decision.verdict, decision.reason, decision.detail)
    return took


def summary(times: list[float]) -> tuple[float, float, float]:
    """p50, p99, max."""
    return statistics.median(times), statistics.quantiles(times, n=100, method="inclusive")[98], max(times)


def row(name: str, times: list[float]) -> str:
    return f"{name:<52}" + "".join(f"{v:9.2f}" for v in summary(times)) + f"{len(times):8d}"


def import_body(ledger: Ledger, body: dict) -> None:
    decisions = ledger.import_manifest(read_manifest(body), read=ENTRY)
    assert [d.verdict for d in decisions] == ["manifest"], decisions


def case_codes(body: dict) -> list[str]:
    return [c["code"] for c in body["codes"] if c["level"] == "case"]


# -- case ------------------------------------------------------------------------------


def bench_case(cases: int, rounds: int) -> None:
    """600-unit case scans, loose and inside a delivery, in turn; then WAL pages per case scan."""
    per_block = max(1, cases // (2 * rounds))
    with tempfile.TemporaryDirectory(dir=OUT) as tmp:
        db = Path(tmp) / "cases.db"
        ledger = Ledger.open(db, device_id="bench", site_id="site")
        # Each block its own manifest: a delivery takes its bill's lines, and an id is never reused.
        bodies = [make_manifest(f"DN{n + 1:08d}", products=4, cases=per_block, seed=100 + n) for n in range(2 * rounds)]
        for body in bodies:
            import_body(ledger, body)
        clock = Clock()
        times: dict[str, list[float]] = {"loose": [], "delivery": []}
        for r in range(rounds):
            order = ("loose", "delivery") if r % 2 == 0 else ("delivery", "loose")
            for n, how in enumerate(order):
                body = bodies[2 * r + n]
                if how == "delivery":
                    ledger.open_document(Document(id=body["bill_code"], kind="delivery"), read=ENTRY)
                times[how] += [timed(ledger, clock, "receive", case) for case in case_codes(body)]
                if how == "delivery":
                    ledger.close_document(body["bill_code"], closed_by="bench", read=ENTRY)
        pages = case_pages(ledger, db, clock, per_block)
        ledger.close()
    print(f"\n600-unit case scan: decide, expand, commit (ms), {rounds} rounds of {per_block} cases each way")
    print(f"{'':<52}{'p50':>9}{'p99':>9}{'max':>9}{'n':>8}")
    print(row("loose receive", times["loose"]))
    print(row("inside an open delivery", times["delivery"]))
    print(row("both", times["loose"] + times["delivery"]))
    print(
        f"target: p99 <= 50 ms; WAL pages per case scan (checkpointer stopped, {len(pages)} cases):"
        f" mean {statistics.mean(pages):.1f}, min {min(pages)}, max {max(pages)}"
    )


def case_pages(ledger: Ledger, db: Path, clock: Clock, cases: int) -> list[int]:
    """WAL frames each of ``cases`` loose case scans appends (checkpointer stopped, WAL truncated first)."""
    body = make_manifest("DN99999999", products=4, cases=cases, seed=99)
    import_body(ledger, body)
    if ledger.checkpointer is not None:
        ledger.checkpointer.stop()
    ledger.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    wal = db.with_name(db.name + "-wal")
    frame = ledger.conn.execute("PRAGMA page_size").fetchone()[0] + 24

    def frames() -> int:
        return max(0, wal.stat().st_size - 32) // frame if wal.exists() else 0

    pages = []
    for case in case_codes(body):
        before = frames()
        timed(ledger, clock, "receive", case)
        pages.append(frames() - before)
    return pages


# -- import ----------------------------------------------------------------------------


def big_manifest(path: Path, bill: str, seed: int) -> dict:
    """A 50,000-code manifest, written to ``path`` as JSON; returns it."""
    body = make_manifest(bill, **BIG, seed=seed)
    assert len(body["codes"]) == BIG_CODES, len(body["codes"])
    path.write_text(json.dumps(body), encoding="utf-8")
    return body


def bench_import(runs: int) -> None:
    """A 50,000-code manifest, JSON file to committed, ``runs`` times, each into a fresh ledger."""
    rows = []
    with tempfile.TemporaryDirectory(dir=OUT) as tmp:
        for n in range(runs):
            source = Path(tmp) / f"manifest-{n}.json"
            big_manifest(source, f"DN{n + 1:08d}", seed=500 + n)
            ledger = Ledger.open(Path(tmp) / f"import-{n}.db", device_id="bench", site_id="site")
            t0 = time.perf_counter()
            manifest = read_manifest_file(source)
            t1 = time.perf_counter()
            decisions = ledger.import_manifest(manifest, read=ENTRY)
            t2 = time.perf_counter()
            assert [d.verdict for d in decisions] == ["manifest"]
            count = ledger.conn.execute("SELECT COUNT(*) FROM manifest_codes").fetchone()[0]
            assert count == BIG_CODES, count
            ledger.close()
            rows.append((t1 - t0, t2 - t1, t2 - t0))
            size = source.stat().st_size / 1e6
    print(f"\n50,000-code manifest ({size:.1f} MB of JSON) to committed, {runs} runs, fresh ledger each (s)")
    print(f"{'run':<6}{'parse+validate':>16}{'ledger write':>14}{'total':>8}")
    for n, (parse, write, total) in enumerate(rows, 1):
        print(f"{n:<6}{parse:16.2f}{write:14.2f}{total:8.2f}")
    totals = [r[2] for r in rows]
    print(f"total: median {statistics.median(totals):.2f} s, max {max(totals):.2f} s (target <= 5 s)")


# -- unit ------------------------------------------------------------------------------


def full_ledger() -> Path:
    """A ledger holding 1,000,000 imported codes (20 manifests of 50,000), built once in bench/out/."""
    path = OUT / f"receiving-{FULL_MANIFESTS * BIG_CODES}.db"
    if path.exists():
        return path
    partial = path.with_suffix(".partial")
    for leftover in OUT.glob(partial.name + "*"):
        leftover.unlink()
    print(f"building {path.name}: {FULL_MANIFESTS} manifests of {BIG_CODES:,} codes (once)", file=sys.stderr)
    ledger = Ledger.open(partial, device_id="bench", site_id="site")
    for n in range(FULL_MANIFESTS):
        import_body(ledger, make_manifest(f"DN{n + 1:08d}", **BIG, seed=700 + n))
    ledger.close()
    partial.rename(path)
    for suffix in ("-wal", "-shm"):
        Path(str(partial) + suffix).unlink(missing_ok=True)
    return path


def listed_units(ledger: Ledger, n: int) -> list[str]:
    """``n`` unit codes the manifests list that no scan has touched (inside cases not received)."""
    rows = ledger.conn.execute(
        "SELECT m.code FROM manifest_codes m WHERE m.level = 'unit' AND m.parent IS NOT NULL"
        " AND NOT EXISTS (SELECT 1 FROM code_state s WHERE s.code = m.code) LIMIT ?",
        (n,),
    )
    found = [r[0] for r in rows]
    assert len(found) == n, f"only {len(found)} unscanned listed units left"
    return found


def new_units(start: int, n: int) -> list[str]:
    """``n`` codes on no manifest (product 8000001), numbered from ``start``."""
    return [f"8000001{start + i:013d}" for i in range(n)]


def unit_block(path: Path, pick: Callable[[Ledger], list[str]], clock: Clock) -> tuple[list[float], list[float]]:
    """Receive the units ``pick`` chooses, then dispense each: (receive ms, dispense ms)."""
    ledger = Ledger.open(path, device_id="bench", site_id="site")
    try:
        units = pick(ledger)
        received = [timed(ledger, clock, "receive", unit) for unit in units]
        dispensed = [timed(ledger, clock, "dispense", unit) for unit in units]
    finally:
        ledger.close()
    return received, dispensed


def bench_unit(scans: int, rounds: int) -> None:
    """Unit scans on an empty ledger and on a full one, taking turns; p99 of each and their ratio."""
    full = full_ledger()
    clock = Clock()
    serial = iter(range(int(time.time()) % 10**6 * 10**6, 10**13, scans))  # codes of this run only
    times = {(ledger, kind): [] for ledger in ("empty", "full") for kind in ("receive", "dispense")}
    with tempfile.TemporaryDirectory(dir=OUT) as tmp:
        empty = Path(tmp) / "empty.db"
        picks: dict[str, tuple[Path, Callable[[Ledger], list[str]]]] = {
            "empty": (empty, lambda _ledger: new_units(next(serial), scans)),
            "full": (full, lambda ledger: listed_units(ledger, scans)),
        }
        for r in range(rounds):
            for name in ("empty", "full") if r % 2 == 0 else ("full", "empty"):
                path, pick = picks[name]
                received, dispensed = unit_block(path, pick, clock)
                times[(name, "receive")] += received
                times[(name, "dispense")] += dispensed
    print(
        f"\nunit scan after {FULL_MANIFESTS * BIG_CODES:,} codes imported vs an empty ledger (ms),"
        f" {rounds} rounds of {scans} scans each, taking turns"
    )
    print(f"{'':<52}{'p50':>9}{'p99':>9}{'max':>9}{'n':>8}")
    for (name, kind), values in times.items():
        print(row(f"{kind}, {name} ledger", values))
    for kind in ("receive", "dispense"):
        ratio = summary(times[("full", kind)])[1] / summary(times[("empty", kind)])[1]
        by_round = [
            summary(times[("full", kind)][r * scans : (r + 1) * scans])[1]
            / summary(times[("empty", kind)][r * scans : (r + 1) * scans])[1]
            for r in range(rounds)
        ]
        print(
            f"p99 {kind} full / empty = {ratio:.2f} (target <= 1.2); round by round "
            + ", ".join(f"{x:.2f}" for x in by_round)
        )


# -- agent ----------------------------------------------------------------------------


def bench_agent(cases: int) -> None:
    """Case codes through a real agent: write to decision printed, one at a time."""
    from tests.support.agent import start_agent

    body = make_manifest("DN00000001", products=4, cases=cases, seed=42)
    with tempfile.TemporaryDirectory(dir=OUT) as tmp:
        db, cfg = Path(tmp) / "agent.db", Path(tmp) / "agent.toml"
        ledger = Ledger.open(db, device_id="bench", site_id="site")
        import_body(ledger, body)
        ledger.close()
        cfg.write_text(f'[station]\nmovement = "receive"\n[ledger]\npath = "{db}"\n[feedback]\nbackend = "console"\n')
        proc = start_agent("run", "--config", str(cfg), "--json")
        log: list[bytes] = []
        threading.Thread(target=lambda: log.extend(proc.stderr), daemon=True).start()
        times = []
        try:
            # Timed from when it is up: before, a code waits for the agent's own start.
            while b"scan-agent up" not in b"".join(log):
                assert proc.poll() is None, b"".join(log)
                time.sleep(0.01)
            for case in case_codes(body):
                t0 = time.perf_counter()
                proc.stdin.write(case.encode() + b"\n")
                proc.stdin.flush()
                decision = json.loads(proc.stdout.readline())
                times.append((time.perf_counter() - t0) * 1000)
                assert decision["verdict"] == "accepted", decision
        finally:
            proc.stdin.close()
            proc.wait(60)
    print("\n600-unit case scan through scan-agent run --json (stdin), write to decision printed (ms)")
    print(f"{'':<52}{'p50':>9}{'p99':>9}{'max':>9}{'n':>8}")
    print(f"{'the first, once the agent is up':<52}{times[0]:9.2f}")
    print(row("the rest", times[1:]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("case", "import", "unit", "agent", "all"))
    parser.add_argument("--cases", type=int, default=200, help="case scans timed (case)")
    parser.add_argument("--runs", type=int, default=5, help="imports timed (import)")
    parser.add_argument("--scans", type=int, default=1000, help="unit scans per block (unit)")
    parser.add_argument("--rounds", type=int, default=6, help="blocks per ledger or way, taking turns")
    args = parser.parse_args(argv)
    OUT.mkdir(exist_ok=True)
    print(header())
    steps: dict[str, Callable[[], None]] = {
        "case": lambda: bench_case(args.cases, args.rounds),
        "import": lambda: bench_import(args.runs),
        "unit": lambda: bench_unit(args.scans, args.rounds),
        "agent": lambda: bench_agent(args.cases),
    }
    for name, step in steps.items():
        if args.what in (name, "all"):
            step()


if __name__ == "__main__":
    main()
