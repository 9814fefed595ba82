"""SIGKILL mid-stream: every decision printed as accepted is in the ledger, and the chain verifies."""

import sqlite3
import threading

from agent import ledger
from tests.support.agent import decisions_until_killed, start_agent


def test_sigkill_loses_no_printed_acceptance(tmp_path):
    db = tmp_path / "ledger.db"
    proc = start_agent("run", "--db", str(db), "--json")

    def feed():
        try:
            for i in range(20000):
                proc.stdin.write(f"8{i:019d}\n".encode())
                if i % 50 == 0:
                    proc.stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            pass  # the agent was killed under us, as intended

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    printed = decisions_until_killed(proc, 300)
    proc.wait()
    feeder.join(5)

    accepted = [d for d in printed if d["verdict"] == "accepted"]
    assert len(accepted) >= 300
    conn = ledger.connect(db)
    stored = {row["event_id"]: row["verdict"] for row in conn.execute("SELECT event_id, verdict FROM scans")}
    missing = [d["event_id"] for d in accepted if stored.get(d["event_id"]) != "accepted"]
    assert missing == []
    assert ledger.verify(conn).ok
    # The ledger opens and goes on after the crash.
    with sqlite3.connect(db) as again:
        assert again.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
