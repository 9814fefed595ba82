"""The power-cut suite's parts that run on the host, checked without a VM (the VM run is
``scripts/powercut-tests``): the control's switch, the ledger check (with documents and
packs), the scans fed, the manifest's import."""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from tests.powercut import agent_main
from tests.powercut.feed import (
    ACK,
    CASES_FLAT,
    CASES_WITH_MIDDLES,
    CLOSE,
    SCENARIOS,
    case_lines,
    cases_manifest,
    code,
    delivery,
    document_lines,
    lines,
    pack_contents,
    scenario,
)
from tests.powercut.run import Console, check_ledger, next_in_line
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


# The cases scenario: a receiving dock scanning 600-unit cases of a manifest imported first.

RECEIVE_CONFIG = """\
[station]
device_id = "powercut-real"
movement = "receive"
[ledger]
path = "{db}"
[feedback]
backend = "none"
[documents]
patterns = {{ prescription = "^RX[0-9]{{8}}$", delivery = "^DN[0-9]{{8}}$" }}
close_code = "DOC-CLOSE"
ack_code = "SUPERVISOR-ACK"
lock_on = []
"""


def test_the_scenarios_take_turns_and_four_cycles_cover_them_all():
    assert [scenario(c) for c in range(1, 5)] == ["plain", "documents", "cases", "receipts"]
    twelve = [scenario(c) for c in range(1, 13)]
    assert all(twelve.count(name) == 3 for name in SCENARIOS)
    assert [delivery(c) for c in range(1, 5)] == [True, False, True, False]


def test_the_cycle_manifest_is_the_same_everywhere_and_its_packs_are_known():
    body = cases_manifest(3)
    assert body == cases_manifest(3) and body["bill_code"] == "DN00000003"
    assert len({line["product_id"] for line in body["lines"]}) == len(body["lines"]) == 4
    contents = pack_contents(body)
    cases = [c for c in body["codes"] if c["level"] == "case"]
    assert len(cases) == CASES_WITH_MIDDLES + CASES_FLAT
    assert all(len(contents[c["code"]][0]) == 600 for c in cases)
    assert sum(len(contents[c["code"]][1]) == 4 for c in cases) == CASES_WITH_MIDDLES
    assert not set(contents) & set(pack_contents(cases_manifest(6))), "codes differ between cycles"


def test_the_case_feed_scans_every_pack_among_units_and_repeats():
    body = cases_manifest(8)
    contents = pack_contents(body)
    fed = [line.strip().decode() for line in itertools.islice(case_lines(cycle=8, seed=8), 600)]
    assert fed[0] == CLOSE.decode() and next(case_lines(cycle=3, seed=3)).strip() == b"DN00000003"
    assert not delivery(8) and delivery(3)
    cases = {c["code"] for c in body["codes"] if c["level"] == "case"}
    first = [line for i, line in enumerate(fed) if line in contents and line not in fed[:i]]
    opened = [c for c in cases if c not in first]  # the case whose middle packs are scanned instead
    assert len(opened) == 1 and set(contents[opened[0]][1]) <= set(first)
    assert len(first) == len(cases) - 1 + 4
    units = {u for units, _ in contents.values() for u in units}
    assert sum(line in units for line in fed) > 50
    assert sum(line.startswith("69") for line in fed) > 20
    assert all(a != b for a, b in itertools.pairwise(fed))


def received_cases(tmp_path: Path, cycle: int, count: int) -> tuple[Path, list[dict]]:
    """A ledger made as the VM makes it for a cases cycle: ``scan-agent run`` on nothing,
    the cycle's manifest imported by ``scan-agent manifest import``, then the first
    ``count`` lines of the feed. Returns the ledger and every decision printed."""
    db = tmp_path / "ledger.db"
    config = tmp_path / "agent.toml"
    config.write_text(RECEIVE_CONFIG.format(db=db))
    assert python("-m", "agent", "run", "--config", str(config)).returncode == 0
    source = tmp_path / "manifest.json"
    source.write_text(json.dumps(cases_manifest(cycle)))
    done = python("-m", "agent", "manifest", "import", str(source), "--config", str(config), "--json")
    assert done.returncode == 0, done.stderr
    printed = [json.loads(done.stdout)["rows"][0]]
    lines = b"".join(itertools.islice(case_lines(cycle, seed=cycle), count))
    result = python("-m", "agent", "run", "--config", str(config), "--json", stdin=lines)
    assert result.returncode == 0, result.stderr
    printed += [json.loads(line) for line in result.stdout.splitlines()]
    assert len(printed) == 1 + count, "one decision per line fed"
    return db, printed


def test_check_packs_on_a_dock_that_received_cases_in_a_delivery(tmp_path):
    db, printed = received_cases(tmp_path, cycle=3, count=80)
    contents = pack_contents(cases_manifest(3))
    received = {d["event_id"]: (d["verdict"], d["seq"]) for d in printed}
    assert {"manifest", "opened", "accepted", "duplicate", "rejected"} <= {d["verdict"] for d in printed}
    ok = check_ledger(db, received, contents=contents)
    packs = [d for d in printed if "pack" in (d.get("record") or {})]
    assert len(packs) > 5 and ok["packs_stored"] == len(packs) and ok["pack_events"] == {d["event_id"] for d in packs}
    assert ok["units_stored"] == sum(len(d["record"]["pack"]["units"]) for d in packs)
    assert (ok["lost"], ok["torn"], ok["broken"], ok["document_open"]) == (0, 0, False, True)
    nxt = next_in_line(3, printed[:-1], contents)  # as if the last line's decision never came
    assert nxt is None or nxt == printed[-1]["code"]


def tamper(db: Path, sql: str, *args) -> None:
    """Change the ledger under its triggers (the check must see it; verify may not)."""
    conn = sqlite3.connect(db)
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        conn.execute(f'DROP TRIGGER "{name}"')
    conn.execute(sql, args)
    conn.commit()
    conn.close()


def test_check_packs_finds_a_torn_case(tmp_path):
    db, printed = received_cases(tmp_path, cycle=7, count=60)
    contents = pack_contents(cases_manifest(7))
    received = {d["event_id"]: (d["verdict"], d["seq"]) for d in printed}
    case = next(d for d in printed if (d.get("record") or {}).get("pack", {}).get("level") == "case")
    unit = case["record"]["pack"]["units"][7]
    assert check_ledger(db, received, contents=contents)["torn"] == 0

    half = tmp_path / "half.db"  # the row is there, one of its units is not received
    half.write_bytes(db.read_bytes())
    tamper(half, "UPDATE code_state SET in_held = 0, in_id = NULL WHERE code = ?", unit)
    result = check_ledger(half, received, contents=contents)
    assert result["torn"] == 1 and result["broken"] and "1 codes not received" in result["torn_examples"][0]

    rowless = tmp_path / "rowless.db"  # units received by a row that is not there
    rowless.write_bytes(db.read_bytes())
    tamper(rowless, "DELETE FROM scans WHERE seq = ?", case["seq"])
    result = check_ledger(rowless, received, contents=contents)
    moved = 1 + len(case["record"]["pack"]["units"]) + len(case["record"]["pack"]["middles"])
    assert result["torn"] == 1 and result["lost"] == 1 and result["broken"]
    assert f"{moved} codes received by row" in result["torn_examples"][0], result["torn_examples"]

    short = tmp_path / "short.db"  # a row that lists fewer units than the manifest puts in its case
    short.write_bytes(db.read_bytes())
    assert check_ledger(short, received, contents={**contents, case["code"]: ((), ())})["torn"] == 1


def test_the_vm_imports_the_manifest_with_the_cli_and_prints_its_decision(tmp_path, monkeypatch):
    from tests.powercut import vm_agents

    monkeypatch.setattr(vm_agents, "WORK", tmp_path)
    db = tmp_path / "real" / "ledger" / "ledger.db"
    db.parent.mkdir(parents=True)
    (tmp_path / "real.toml").write_text(RECEIVE_CONFIG.format(db=db))
    port = tmp_path / "port"
    fd = os.open(port, os.O_WRONLY | os.O_CREAT)
    try:
        vm_agents.import_manifest("real", 9, fd)  # a new disk: the ledger is made first
        vm_agents.import_manifest("real", 9, fd)  # the same bill again: nothing printed
    finally:
        os.close(fd)
    (decision,) = [json.loads(line) for line in port.read_text().splitlines()]
    assert (decision["verdict"], decision["seq"], decision["document"]["id"]) == ("manifest", 1, "DN00000009")
    ok = check_ledger(db, {decision["event_id"]: ("manifest", 1)}, contents=pack_contents(cases_manifest(9)))
    assert (ok["lost"], ok["unprinted"], ok["broken"], ok["packs_stored"]) == (0, 0, False, 0)


# The receipts scenario: the outbox drains to mosquitto -> scan-collector -> PostgreSQL.


def test_check_uplink_holds_a_real_agent_and_catches_an_uplink_ahead_of_its_ledger(tmp_path):
    from tests.collector.procs import Kiosk
    from tests.powercut.uplink import Backend, check_uplink
    from tests.support.net import wait_until

    device = "powercut-real-1"
    with Backend(tmp_path / "backend") as backend:
        kiosk = Kiosk(
            tmp_path, backend.port, device=device, site="powercut-real", mqtt="receipts = true\nreceipt_timeout_s = 1\n"
        )
        try:
            kiosk.scan(0, 30)
            wait_until(lambda: kiosk.confirmed() >= 30, timeout=60, what="receipts through seq 30 in the ledger")
        finally:
            kiosk.stop()
        received = backend.received(device)
        assert len(received["events"]) == 30 and received["stored_through"] == 30
        ok = check_uplink(kiosk.ledger, received)
        assert (ok["delivered"], ok["receipted_through"], ok["collector_received"], ok["ahead"]) == (30, 30, 30, 0)
        assert ok["last_seq"] == backend.stored_through(device) == 30

        # The ledger as a cut without fsync would leave it: its last 5 scans gone, the
        # uplink's rows and what the collector got from them still there.
        torn = tmp_path / "torn.db"
        torn.write_bytes(kiosk.ledger.read_bytes())
        tamper(torn, "DELETE FROM scans WHERE seq > 25")
        bad = check_uplink(torn, received)
        assert (bad["delivered_ahead"], bad["received_ahead"], bad["stored_ahead"]) == (5, 5, 1)
        assert bad["receipted_ahead"] >= 1 and bad["ahead"] == 11 + bad["receipted_ahead"]
        assert "receipt through seq 30, the ledger's last seq is 25" in bad["ahead_examples"]

        # Same event id, another hash: not the event the ledger holds.
        other = dict(received, events=dict(received["events"]))
        eid = next(iter(other["events"]))
        other["events"][eid] = "0" * 64
        assert check_uplink(kiosk.ledger, other)["received_ahead"] == 1


def test_check_uplink_finds_a_receipt_beyond_a_hand_made_ledger(tmp_path):
    from tests.powercut.uplink import check_uplink

    db = tmp_path / "ledger.db"
    printed = run_control(db, [code(5, i) for i in range(1, 4)])
    assert [d["seq"] for d in printed] == [1, 2, 3]
    assert check_uplink(db)["ahead"] == 0
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO receipts (ts, stored_through_seq, source) VALUES ('2026-11-30T00:00:00.000Z', 4, 'mqtt')")
    conn.commit()
    conn.close()
    bad = check_uplink(db)
    assert (bad["receipted_ahead"], bad["receipted_through"], bad["ahead"]) == (1, 4, 1)
    assert check_ledger(db, {d["event_id"]: (d["verdict"], d["seq"]) for d in printed})["broken"] is False


def test_a_stopped_run_still_reports_the_cycles_it_checked(tmp_path, capsys):
    from tests.powercut import report

    def cycle(role, scenario, n, decisions, lost=0, unprinted=0):
        return {"role": role, "scenario": scenario, "cycle": n, "decisions": decisions, "lost": lost,
                "unprinted": unprinted, "broken": False, "recovery_s": 20.0 + n}  # fmt: skip

    results = [cycle("plain", "plain", 1, 10, unprinted=1), cycle("control", "plain", 1, 12, lost=3)]
    results += [cycle("plain", "plain", 2, 15), cycle("control", "documents", 2, 9)]
    (tmp_path / "cycles.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))
    assert report.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("2 boots checked")
    assert "| power cut (qemu SIGKILL), plain dispensing | 2 | 25 | 0 | 1 | 0 | 22 s |" in out
    assert "| power cut, control: ledger with synchronous=OFF | 1 | 12 | 3 (in 1 cycles) | 0 | 0 | 21 s |" in out
    assert "| power cut, control, documents; 0 of 1 cuts with one open | 1 | 9 | 0 | 0 | 0 | 22 s |" in out


def test_recovery_is_the_last_agent_up_before_the_first_decision(tmp_path):
    """A dock's agent is up twice in its first boot (the new ledger's run, then the agent):
    its recovery is the second, the one before its first decision."""
    up = "[cases] INFO agent.runner: scan-agent up: /tmp/powercut/cases.toml"
    proc = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    console = Console(proc, tmp_path / "console", time.monotonic())
    for line in (up, "[plain] INFO agent.runner: scan-agent up: x", "imported", up, "decided"):
        proc.stdin.write(f"{line}\n".encode())
        proc.stdin.flush()
        time.sleep(0.05)  # apart in time, as the guest's lines come
    proc.stdin.close()
    proc.wait()
    console.join()
    at = [t for t, _ in console.lines]
    assert [line for _, line in console.lines][2] == "imported"
    assert console.agent_up("cases", None) == at[3]
    assert console.agent_up("cases", at[4]) == at[3]
    assert console.agent_up("cases", at[2]) == at[0]
    assert console.agent_up("control", None) is None
