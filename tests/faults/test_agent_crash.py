"""Agent crashes: cycles of SIGKILL and restart of ``scan-agent run`` while scans flow.

Jepsen's "no lost acknowledged write": every decision the agent printed (and
every accept it showed the operator) is in the ledger with the same verdict
and seq; after every cycle the hash chain verifies and seq has no gaps.
"""

from __future__ import annotations

import functools
import random
import threading
import time

from agent import ledger
from tests.faults.conftest import cycles
from tests.faults.ledgers import code
from tests.support.agent import decisions_until_killed, start_agent


class Traffic:
    """New codes, re-dispensed earlier codes (duplicates) and garbage (rejects), never twice in a row."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.next_code = 0
        self.sent = 0

    def line(self) -> bytes:
        self.sent += 1
        roll = self.rng.random()
        if roll < 0.1 and self.next_code > 10:
            return code(self.rng.randrange(self.next_code - 10)) + b"\n"  # dispensed before: duplicate
        if roll < 0.2:
            return b"69%011d\n" % self.rng.randrange(10**11)  # a product barcode: rejected
        self.next_code += 1
        return code(self.next_code) + b"\n"


def drain(stream, into: list[bytes]) -> threading.Thread:
    thread = threading.Thread(target=lambda: into.extend(stream), daemon=True)
    thread.start()
    return thread


def test_sigkill_restart_cycles(tmp_path, figures):
    db = tmp_path / "ledger.db"
    rng = random.Random(9)
    traffic = Traffic(seed=9)
    printed: list[dict] = []
    shown_ok: list[str] = []
    runs = cycles(20)
    for _ in range(runs):
        started = time.monotonic()
        proc = start_agent("run", "--db", str(db), "--json")
        err: list[bytes] = []
        err_thread = drain(proc.stderr, err)

        def feed(proc=proc):
            try:
                while True:
                    proc.stdin.write(traffic.line())
                    proc.stdin.flush()
                    time.sleep(0.001)  # a steady stream, not one burst
            except (BrokenPipeError, ValueError, OSError):
                pass  # killed under us, as intended

        threading.Thread(target=feed, daemon=True).start()
        this_run = decisions_until_killed(proc, rng.randrange(5, 60), functools.partial(figures.recovered, started))
        proc.wait()
        err_thread.join(5)
        printed += this_run
        shown_ok += [line.split()[-1] for line in b"".join(err).decode().splitlines() if line.startswith("[ OK ]")]

        conn = ledger.connect(db)
        result = ledger.verify(conn)
        assert result.ok, result.problem
        stored = {
            r["event_id"]: (r["verdict"], r["seq"]) for r in conn.execute("SELECT event_id, verdict, seq FROM scans")
        }
        accepted_codes = {r[0] for r in conn.execute("SELECT code FROM scans WHERE verdict = 'accepted'")}
        conn.close()
        lost = [d for d in printed if stored.get(d["event_id"]) != (d["verdict"], d["seq"])]
        assert lost == [], lost[:3]
        assert set(shown_ok) <= accepted_codes  # no accept the operator saw is missing

    verdicts = {d["verdict"] for d in printed}
    assert {"accepted", "duplicate", "rejected"} <= verdicts, verdicts
    seqs = sorted(s for _, s in stored.values() if s is not None)
    assert seqs == list(range(1, len(seqs) + 1))

    figures.fault = "agent SIGKILL + restart (stdin)"
    figures.cycles, figures.sent = runs, len(printed)
    figures.note = f"{traffic.sent} lines written; recovery = process start to first decision"
