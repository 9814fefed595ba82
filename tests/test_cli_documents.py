"""``scan-agent documents``: real agents, real command lines, one real SQLite ledger.

With an agent running, the writing commands go through its control socket and its
pipeline (the agent prints their rows as it prints scans); with none, they write
the ledger themselves under its lock; either way the chain verifies afterwards.
"""

import csv
import io
import json
import queue
import sqlite3
import threading

import pytest

from tests.support.agent import run_agent, start_agent

AMOX = "8123456"  # product ids of two drugs
IBU = "8234567"
DOC = "RX00000001"
LINES = [
    {"product_id": AMOX, "name": "Amoxicillin 500 mg", "expected": 2},
    {"product_id": IBU, "name": "Ibuprofen 200 mg", "expected": 1},
]


def code(product: str, n: int) -> str:
    return f"{product}{n:013d}"


def write_config(tmp_path, **documents) -> tuple:
    """A config in ``tmp_path`` (ledger beside it, no feedback, stdin scanner); (config, ledger)."""
    ledger = tmp_path / "ledger.db"
    extra = "".join(f"{key} = {json.dumps(value)}\n" for key, value in documents.items())
    config = tmp_path / "agent.toml"
    config.write_text(
        '[station]\ndevice_id = "kiosk-7"\nsite_id = "site-3"\n'
        '[codes]\nlifecycle = "off"\n'
        f'[ledger]\npath = "{ledger}"\n'
        '[feedback]\nbackend = "none"\n'
        f"[documents]\nidle_close_s = 0\n{extra}"
    )
    return config, ledger


class Agent:
    """``scan-agent run --json`` on a config; scans go in on stdin, decisions come out on stdout."""

    def __init__(self, config) -> None:
        self.proc = start_agent("run", "--config", str(config), "--json")
        self.decisions: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for raw in self.proc.stdout:
            self.decisions.put(json.loads(raw))

    def next(self, match, timeout: float = 20.0) -> dict:
        """The next decision printed that ``match`` accepts (earlier ones are passed over)."""
        while True:
            decision = self.decisions.get(timeout=timeout)
            if match(decision):
                return decision

    def scan(self, text: str) -> dict:
        """Scan ``text`` and return its decision; once one is back, the control socket is up."""
        self.proc.stdin.write(text.encode() + b"\n")
        self.proc.stdin.flush()
        return self.next(lambda d: d["code"] == text and d["record"] is None)

    def stop(self) -> tuple[int, str]:
        """End stdin (the agent finishes and exits); its exit status and stderr."""
        if not self.proc.stdin.closed:
            self.proc.stdin.close()
        status = self.proc.wait(timeout=30)
        return status, self.proc.stderr.read().decode()


@pytest.fixture
def setup(tmp_path):
    return write_config(tmp_path)


@pytest.fixture
def agent(setup):
    config, _ = setup
    running = Agent(config)
    yield running
    if running.proc.poll() is None:
        running.proc.kill()
        running.proc.wait()


def documents(config, *args: str, input: bytes | None = None):
    return run_agent("documents", *args, "--config", str(config), input=input)


def count_rows(ledger) -> int:
    conn = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT COUNT(*) FROM scans").fetchone()[0]
    finally:
        conn.close()


def entry_rows(ledger) -> list[dict]:
    conn = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM scans WHERE record IS NOT NULL ORDER BY id")]
    finally:
        conn.close()


def verify(config):
    result = run_agent("ledger", "verify", "--config", str(config))
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


def open_prescription(config, tmp_path):
    lines = tmp_path / "lines.json"
    lines.write_text(json.dumps(LINES))
    return documents(
        config, "open", "--id", DOC, "--kind", "prescription", "--ref", "patient=P-17", "--lines", str(lines)
    )


def test_a_prescription_through_a_running_agent(setup, agent, tmp_path):
    config, ledger = setup
    assert agent.scan(code(IBU, 99))["verdict"] == "accepted"  # a loose scan; the agent is up

    opened = open_prescription(config, tmp_path)
    assert opened.returncode == 0, opened.stderr.decode()
    assert opened.stdout.decode().startswith(f"opened: prescription {DOC} opened")
    # The agent's pipeline recorded it: the agent printed the row as it prints a scan.
    printed = agent.next(lambda d: d["verdict"] == "opened")
    assert printed["document"] == {"id": DOC, "kind": "prescription"}

    scans = [agent.scan(c) for c in (code(AMOX, 1), code(IBU, 1), code(AMOX, 2))]
    assert [s["verdict"] for s in scans] == ["accepted"] * 3
    assert scans[-1]["progress"]["collected"] == 3

    shown = documents(config, "show", DOC, "--json")
    assert shown.returncode == 0, shown.stderr.decode()
    doc = json.loads(shown.stdout)
    assert doc["status"] == "open" and doc["ref"] == {"patient": "P-17"}
    assert doc["progress"] == {"collected": 3, "expected": 3, "complete": True}
    assert [(line["product_id"], line["collected"]) for line in doc["lines"]] == [(AMOX, 2), (IBU, 1)]
    assert [(c["drug_trac_codg"], c["event_id"]) for c in doc["codes"]] == [(s["code"], s["event_id"]) for s in scans]
    assert doc["opened"]["source_kind"] == "cli"
    text = documents(config, "show", DOC).stdout.decode()
    assert f"prescription {DOC}: open" in text and "collected 3/3, complete" in text
    assert f"line {AMOX} Amoxicillin 500 mg: 2/2" in text

    closed = documents(config, "close", DOC)
    assert closed.returncode == 0, closed.stderr.decode()
    assert "closed complete" in closed.stdout.decode()
    assert agent.next(lambda d: d["verdict"] == "closed")["reason"] == "complete"

    listed = documents(config, "list").stdout.decode().splitlines()
    assert listed[0].split() == ["id", "kind", "opened", "closed", "status", "collected"]
    (row,) = [line.split() for line in listed[1:]]
    assert (row[0], row[1], row[4], row[5]) == (DOC, "prescription", "complete", "3/3")
    (as_json,) = [json.loads(line) for line in documents(config, "list", "--json").stdout.splitlines()]
    assert as_json["closed_ts"] == row[3] and as_json["opened_ts"] == row[2]

    exported = list(csv.DictReader(io.StringIO(documents(config, "export").stdout.decode())))
    assert [(r["document"], r["kind"], r["status"]) for r in exported] == [(DOC, "prescription", "complete")] * 3
    assert [(r["product_id"], r["drug_trac_codg"], r["trdn_flag"], r["event_id"]) for r in exported] == [
        (s["product_id"], s["code"], "0", s["event_id"]) for s in scans
    ]
    jsonl = [json.loads(line) for line in documents(config, "export", "--format", "jsonl").stdout.splitlines()]
    assert [r["drug_trac_codg"] for r in jsonl] == [s["code"] for s in scans]
    assert jsonl[0]["name"] == "Amoxicillin 500 mg" and jsonl[0]["trdn_flag"] == 0

    status, stderr = agent.stop()
    assert status == 0, stderr
    # The commands' rows name the command line and its user; the station's settings are the agent's.
    rows = entry_rows(ledger)
    assert [(r["verdict"], r["source_kind"], r["device_id"]) for r in rows] == [
        ("opened", "cli", "kiosk-7"),
        ("closed", "cli", "kiosk-7"),
    ]
    assert "ledger intact: 6 scans" in verify(config)


def test_voids_before_the_close_and_reversals_after_it(setup, agent, tmp_path):
    config, _ = setup
    agent.scan(code(IBU, 99))
    assert open_prescription(config, tmp_path).returncode == 0
    wrong, kept = agent.scan(code(AMOX, 1)), agent.scan(code(AMOX, 2))
    voided = documents(config, "void", wrong["event_id"], "--reason", "wrong patient", "--approver", "pharmacist-2")
    assert voided.returncode == 0, voided.stderr.decode()
    assert voided.stdout.decode().startswith(f"void: void of {wrong['event_id']}: wrong patient")
    doc = json.loads(documents(config, "show", DOC, "--json").stdout)
    assert doc["progress"]["collected"] == 1
    assert [c["drug_trac_codg"] for c in doc["codes"]] == [kept["code"]]
    assert [(v["kind"], v["voided"], v["approver"]) for v in doc["voids"]] == [
        ("void", wrong["event_id"], "pharmacist-2")
    ]

    assert documents(config, "close", DOC).returncode == 0
    reversed_ = documents(config, "void", kept["event_id"], "--reason", "refund at the counter", "--json")
    assert reversed_.returncode == 0, reversed_.stderr.decode()
    (reversal,) = json.loads(reversed_.stdout)["rows"]
    assert reversal["verdict"] == "reversal"

    doc = json.loads(documents(config, "show", DOC, "--json").stdout)
    assert doc["status"] == "incomplete" and doc["progress"]["collected"] == 1  # as it closed
    assert [(c["drug_trac_codg"], c["reversed_by"]) for c in doc["codes"]] == [(kept["code"], reversal["event_id"])]
    assert [v["kind"] for v in doc["voids"]] == ["void", "reversal"]
    assert "incomplete (1 reversed)" in documents(config, "list").stdout.decode()
    (row,) = csv.DictReader(io.StringIO(documents(config, "export").stdout.decode()))
    assert (row["drug_trac_codg"], row["reversed_by"]) == (kept["code"], reversal["event_id"])
    assert agent.stop()[0] == 0
    verify(config)


def test_with_no_agent_the_commands_write_the_ledger_themselves(setup, tmp_path):
    config, ledger = setup
    made = run_agent("run", "--config", str(config), input=f"{code(IBU, 99)}\n".encode())
    assert made.returncode == 0, made.stderr  # the agent made the ledger, and has exited

    assert open_prescription(config, tmp_path).returncode == 0
    excepted = documents(
        config, "exception", DOC, "--line", IBU, "--kind", "uncoded", "--reason", "no code", "--approver", "chief"
    )
    assert excepted.returncode == 0, excepted.stderr.decode()
    assert "collected 1/3" in excepted.stdout.decode()
    # Written here, under the config's settings: the station's device id, the user's name.
    rows = entry_rows(ledger)
    assert [(r["verdict"], r["source_kind"], r["device_id"]) for r in rows] == [
        ("opened", "cli", "kiosk-7"),
        ("exception", "cli", "kiosk-7"),
    ]
    assert "ledger intact: 3 scans" in verify(config)

    # An agent started now takes the open document over where the command line left it.
    later = Agent(config)
    try:
        assert later.scan(code(AMOX, 1))["progress"]["collected"] == 2
        assert later.scan(code(AMOX, 2))["progress"]["complete"] is True
    finally:
        assert later.stop()[0] == 0

    closed = documents(config, "close", DOC, "--json")
    assert closed.returncode == 0, closed.stderr.decode()
    (row,) = json.loads(closed.stdout)["rows"]
    assert (row["verdict"], row["reason"]) == ("closed", "complete_with_exceptions")
    doc = json.loads(documents(config, "show", DOC, "--json").stdout)
    assert doc["status"] == "complete_with_exceptions" and doc["closed"]["closed_by"] == "cli"
    assert [(e["line"], e["kind"], e["approver"]) for e in doc["exceptions"]] == [(IBU, "uncoded", "chief")]
    assert [c["drug_trac_codg"] for c in doc["codes"]] == [code(AMOX, 1), code(AMOX, 2)]
    assert "ledger intact: 6 scans" in verify(config)


def test_a_second_agent_on_the_same_ledger_is_refused(setup, agent):
    config, ledger = setup
    agent.scan(code(IBU, 99))
    before = count_rows(ledger)
    second = run_agent("run", "--config", str(config), input=f"{code(IBU, 98)}\n".encode())
    assert second.returncode == 2
    stderr = second.stderr.decode()
    assert "REFUSING TO START: another scan-agent or a documents command is using" in stderr
    assert str(ledger) in stderr
    assert second.stdout == b""  # it decided nothing
    assert count_rows(ledger) == before
    # The first agent runs on undisturbed.
    assert agent.scan(code(IBU, 97))["verdict"] == "accepted"
    assert agent.stop()[0] == 0


@pytest.mark.parametrize("running", [True, False], ids=["agent", "no-agent"])
def test_a_refused_command_names_the_field_and_records_nothing(setup, tmp_path, running):
    config, ledger = setup
    agent = Agent(config)
    agent.scan(code(IBU, 99))
    assert documents(config, "open", "--id", "S-1", "--kind", "sale").returncode == 0
    assert documents(config, "close", "S-1").returncode == 0
    if not running:
        assert agent.stop()[0] == 0
    before = count_rows(ledger)
    zero = tmp_path / "zero.json"
    zero.write_text(json.dumps([{"product_id": AMOX, "expected": 0}]))

    refused = {
        "kind": documents(config, "open", "--id", "S-2", "--kind", "invoice"),
        "lines[0].expected": documents(config, "open", "--id", "S-2", "--kind", "sale", "--lines", str(zero)),
        "id": documents(config, "open", "--id", "S-1", "--kind", "sale"),  # closed already
        "lines": documents(config, "open", "--id", "S-2", "--kind", "sale", "--lines", "-", input=b"[{"),
        "station": documents(config, "acknowledge", "--by", "chief"),  # nothing is locked
    }
    for field, result in refused.items():
        assert result.returncode == 1, (field, result.stderr)
        assert result.stderr.decode().startswith(f"scan-agent documents: {field}: "), result.stderr
        assert result.stdout == b""
    closed_again = documents(config, "close", "S-1")
    assert closed_again.stderr.decode() == "scan-agent documents: id: S-1 is not open; no document is open\n"
    assert count_rows(ledger) == before
    if running:
        assert agent.stop()[0] == 0
    verify(config)


def test_usage_errors_exit_2(setup):
    config, _ = setup
    assert documents(config, "open", "--id", "S-1").returncode == 2  # no --kind
    bad_ref = documents(config, "open", "--id", "S-1", "--kind", "sale", "--ref", "patient")
    assert bad_ref.returncode == 2 and b"KEY=VALUE" in bad_ref.stderr
    missing = documents(config, "open", "--id", "S-1", "--kind", "sale", "--lines", "/nonexistent.json")
    assert missing.returncode == 2 and b"lines: cannot read /nonexistent.json" in missing.stderr


def test_commands_need_an_existing_ledger(setup):
    config, ledger = setup
    opened = documents(config, "open", "--id", "S-1", "--kind", "sale")
    assert opened.returncode == 1
    assert opened.stderr.decode().startswith(f"scan-agent documents: ledger: no ledger at {ledger}")
    assert not ledger.exists()  # a mistyped --db does not start a second ledger
    shown = documents(config, "show", "S-1")
    assert shown.returncode == 1 and not ledger.exists()


def test_show_and_export_of_an_unknown_document(setup):
    config, _ = setup
    run_agent("run", "--config", str(config), input=b"")
    for args in (("show", "NOPE"), ("export", "--id", "NOPE")):
        result = documents(config, *args)
        assert result.returncode == 1
        assert result.stderr.decode() == "scan-agent documents: id: no document has id NOPE\n"
    assert documents(config, "list").stdout.decode().splitlines() == ["id  kind  opened  closed  status  collected"]


def test_a_damaged_ledger_is_not_written_by_a_command(setup):
    config, ledger = setup
    ledger.write_bytes(b"this is not a database" * 100)
    opened = documents(config, "open", "--id", "S-1", "--kind", "sale")
    assert opened.returncode == 1
    assert opened.stderr.decode().startswith(f"scan-agent documents: ledger: {ledger} is damaged (")
    assert ledger.read_bytes() == b"this is not a database" * 100
    listed = documents(config, "list")
    assert listed.returncode == 1 and listed.stderr.decode().startswith("scan-agent documents: ledger: ")


def test_a_command_without_a_config_goes_on_under_the_ledgers_own_device(tmp_path):
    from agent import codes as code_parser
    from agent.ledger import Ledger
    from agent.read import Read

    db = tmp_path / "ledger.db"
    ledger = Ledger.open(db, device_id="kiosk-42", site_id="site-9")
    read = Read(b"81234567890123456789", "stdin", "stdin")
    ledger.decide_and_record(read, "dispense", code_parser.parse(read.raw))
    ledger.close()
    opened = run_agent("documents", "open", "--id", "S-42", "--kind", "sale", "--db", str(db))
    assert opened.returncode == 0, opened.stderr.decode()
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT device_id, site_id, seq, verdict FROM scans ORDER BY id").fetchall()
    conn.close()
    assert rows[-1] == ("kiosk-42", "site-9", 2, "opened")
    assert run_agent("ledger", "verify", "--db", str(db)).returncode == 0
