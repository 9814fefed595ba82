"""The power-cut suite's parts that run on the host, checked without a VM (the VM run is
``scripts/powercut-tests``): the control's switch, the ledger check, the scans fed."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

from tests.powercut import agent_main
from tests.powercut.feed import code, lines
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
