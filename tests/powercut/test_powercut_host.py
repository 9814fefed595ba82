"""The power-cut suite's parts that run on the host, checked without a VM (the VM run is
``scripts/powercut-tests``): the control's switch, the ledger check, the scans fed."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

from tests.powercut import agent_main
from tests.powercut.feed import ACK, CLOSE, code, document_lines, lines
from tests.powercut.run import check_ledger
from tests.support.agent import ROOT, agent_env


def python(*args: str, stdin: bytes = b"", **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], input=stdin, capture_output=True, cwd=ROOT, env=agent_env(**env), timeout=60
    )


def test_the_switch_turns_synchronous_off_only_when_set():
    probe = "from tests.powercut import agent_main as m; import os; os.environ.get(m.SWITCH) and m.sync_off(); " \
        "print(m.synchronous())"  # fmt: skip
    assert python("-c", probe).stdout.strip() == b"2"  # FULL, as shipped
    assert python("-c", probe, SCAN_AGENT_POWERCUT_CONTROL="sync-off").stdout.strip() == b"0"


def test_the_switch_is_not_in_the_agent():
    hits = [p for p in (ROOT / "agent").rglob("*.py") if agent_main.SWITCH in p.read_text(encoding="utf-8")]
    assert hits == []


def test_an_unknown_switch_value_is_refused(tmp_path):
    result = python("-m", "tests.powercut.agent_main", "run", "--db", str(tmp_path / "l.db"),
                    SCAN_AGENT_POWERCUT_CONTROL="yes")  # fmt: skip
    assert result.returncode == 2 and b"only 'sync-off'" in result.stderr


def run_control(db: Path, codes: list[bytes]) -> list[dict]:
    result = python("-m", "tests.powercut.agent_main", "run", "--db", str(db), "--json",
                    stdin=b"".join(c + b"\n" for c in codes), SCAN_AGENT_POWERCUT_CONTROL="sync-off")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert b"synchronous=OFF (control)" in result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_check_counts_lost_and_unprinted(tmp_path):
    db = tmp_path / "ledger.db"
    printed = run_control(db, [code(1, 1), code(1, 2), b"6912345678901", code(1, 3), code(1, 1)])
    assert [d["verdict"] for d in printed] == ["accepted", "accepted", "rejected", "accepted", "duplicate"]
    received = {d["event_id"]: (d["verdict"], d["seq"]) for d in printed}

    ok = check_ledger(db, received)
    assert (ok["lost"], ok["unprinted"], ok["broken"], ok["stored"]) == (0, 0, False, 5)

    last = printed[-1]["event_id"]
    fewer = {k: v for k, v in received.items() if k != last}  # the cut came before this line was printed
    assert check_ledger(db, fewer)["unprinted"] == 1
    counted: set[str] = set()
    assert [check_ledger(db, fewer, counted)["unprinted"] for _ in range(2)] == [1, 0], "each row counted once"
    wrong = dict(received, **{last: ("accepted", printed[-1]["seq"])})  # printed one thing, stored another
    assert check_ledger(db, wrong)["lost"] == 1
    invented = dict(received, **{"01a00000-0000-7000-8000-000000000000": ("accepted", 99)})
    assert check_ledger(db, invented)["lost"] == 1


def test_check_reports_a_damaged_ledger(tmp_path):
    db = tmp_path / "ledger.db"
    printed = run_control(db, [code(2, i) for i in range(1, 400)])
    data = bytearray(db.read_bytes())
    data[4096 * 2 : 4096 * 3] = b"\xa5" * 4096
    db.write_bytes(bytes(data))
    result = check_ledger(db, {d["event_id"]: (d["verdict"], d["seq"]) for d in printed})
    assert result["broken"]
    assert check_ledger(None, {})["broken"]


def test_the_feed_mixes_new_repeated_and_wrong_codes():
    fed = lines(cycle=7, seed=7)
    first = [next(fed).strip() for _ in range(2000)]
    new = [c for c in first if c.startswith(b"8")]
    assert all(len(c) == 20 and c.startswith(b"80007") for c in new)
    seen: set[bytes] = set()
    repeats = 0
    for c in new:
        repeats += c in seen
        seen.add(c)
    assert repeats > 50
    assert sum(c.startswith(b"69") for c in first) > 100
    assert all(a != b for a, b in itertools.pairwise(first))  # never the same twice in a row


def test_the_document_feed_opens_prescriptions_and_acknowledges_each_lock():
    fed = [line.strip() for line in itertools.islice(document_lines(cycle=8, seed=8), 3000)]
    opened = [line for line in fed if line.startswith(b"RX")]
    assert len(opened) > 20 and len(set(opened)) == len(opened) and all(len(x) == 10 for x in opened)
    assert fed.count(CLOSE) >= len(opened) // 2
    for before, after in itertools.pairwise(fed):
        if after == ACK:
            assert before.startswith(b"8"), "the supervisor's code follows a code dispensed before"


def test_check_documents_compares_each_closed_record_with_the_ledger(tmp_path):
    db = tmp_path / "ledger.db"
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[ledger]\npath = "{db}"\n[feedback]\nbackend = "none"\n[codes]\ndouble_read_window_s = 0\n'
        '[documents]\npatterns = { prescription = "^RX[0-9]{8}$" }\nclose_code = "DOC-CLOSE"\n'
    )
    feed = [b"RX00010001", code(3, 1), code(3, 2), CLOSE, b"RX00010002", code(3, 3)]
    result = python("-m", "agent", "run", "--config", str(config), "--json", stdin=b"".join(x + b"\n" for x in feed))
    assert result.returncode == 0, result.stderr
    printed = [json.loads(line) for line in result.stdout.splitlines()]
    received = {d["event_id"]: (d["verdict"], d["seq"]) for d in printed}
    ok = check_ledger(db, received)
    assert (ok["documents_closed"], ok["documents_bad"], ok["document_open"], ok["broken"]) == (1, 0, True, False)

    import sqlite3

    from agent.ledger import row_hash

    # A closed record that lists a scan the ledger does not count: hashed again, so only the document check sees it.
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    conn.execute("DROP TRIGGER scans_no_update")
    row = dict(conn.execute("SELECT * FROM scans WHERE verdict = 'closed'").fetchone())
    record = json.loads(row["record"])
    record["scans"] = record["scans"][:1]
    row["record"] = json.dumps(record, sort_keys=True, separators=(",", ":"))
    row["hash"] = row_hash(row)
    conn.execute("UPDATE scans SET record = ?, hash = ? WHERE id = ?", (row["record"], row["hash"], row["id"]))
    conn.commit()
    conn.close()
    bad = check_ledger(db, received)
    assert bad["documents_bad"] == 1 and bad["broken"]
