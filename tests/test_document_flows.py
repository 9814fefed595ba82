"""Documents end to end: ``scan-agent run --json`` as a subprocess, fed through its real
sources (stdin, and a serial scanner on a socat pty), the way a counter or a cart uses it."""

from __future__ import annotations

import json
import os
import queue
import signal
import threading
from pathlib import Path

import pytest

from tests.support.agent import run_agent, start_agent
from tests.support.net import wait_until

AMOX, IBU, PARA = "8123456", "8234567", "8345678"
PATTERNS = '{ prescription = "^RX[0-9]{8}$", ward_order = "^WO[0-9]{6}$", delivery = "^DN[0-9]{8}$" }'


def code(product: str, n: int) -> str:
    return f"{product}{n:013d}"


def write_config(tmp_path: Path, *, extra: str = "", lifecycle: str = "warn", idle_close_s: float = 600) -> Path:
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[station]\nmovement = "dispense"\noperator = "pharmacist-1"\n'
        f'[codes]\nlifecycle = "{lifecycle}"\ndouble_read_window_s = 0\n'
        f'[ledger]\npath = "{tmp_path / "ledger.db"}"\n[feedback]\nbackend = "none"\n'
        f'[documents]\npatterns = {PATTERNS}\nclose_code = "DOC-CLOSE"\nack_code = "SUPERVISOR-ACK"\n'
        f"idle_close_s = {idle_close_s}\n{extra}"
    )
    return config


class RunningAgent:
    """``scan-agent run --json`` with a pipe for a stdin scanner and its decisions one by one."""

    def __init__(self, config: Path):
        self.proc = start_agent("run", "--config", str(config), "--json")
        self.decisions: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            if line.strip().startswith(b"{"):
                self.decisions.put(json.loads(line))

    def scan(self, *texts: str) -> list[dict]:
        """Scan each text and return the decisions it caused (entries may add one each)."""
        out = []
        for text in texts:
            self.proc.stdin.write(text.encode() + b"\n")
            self.proc.stdin.flush()
            out.append(self.next())
        return out

    def next(self, timeout: float = 10) -> dict:
        try:
            return self.decisions.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("no decision printed in time") from None

    def stop(self) -> int:
        self.proc.stdin.close()
        return self.proc.wait(20)


@pytest.fixture
def agent_with(tmp_path):
    started = []

    def start(**kwargs) -> RunningAgent:
        agent = RunningAgent(write_config(tmp_path, **kwargs))
        started.append(agent)
        return agent

    yield start
    for agent in started:
        if agent.proc.poll() is None:
            agent.proc.kill()
            agent.proc.wait()
    db = tmp_path / "ledger.db"
    if db.exists():
        verified = run_agent("ledger", "verify", "--db", str(db))
        assert verified.returncode == 0, verified.stderr.decode()


def summary(decisions: list[dict]) -> list[tuple]:
    return [(d["verdict"], d["reason"]) for d in decisions]


def test_a_pharmacist_completes_a_prescription_by_scanning(agent_with):
    agent = agent_with(lifecycle="off")
    opened = agent.scan("RX00000001")[0]
    assert opened["verdict"] == "opened" and opened["document"] == {"id": "RX00000001", "kind": "prescription"}
    scans = agent.scan(code(AMOX, 1), code(IBU, 1), code(PARA, 1))
    assert [d["progress"]["collected"] for d in scans] == [1, 2, 3]
    assert all(d["document"]["id"] == "RX00000001" and d["movement"] == "dispense" for d in scans)
    closed = agent.scan("DOC-CLOSE")[0]
    assert (closed["verdict"], closed["reason"]) == ("closed", "complete")
    codes = [c["drug_trac_codg"] for c in closed["record"]["drugtracinfo"]]
    assert codes == [code(AMOX, 1), code(IBU, 1), code(PARA, 1)]
    after = agent.scan(code(AMOX, 2))[0]
    assert after["document"] is None and after["verdict"] == "accepted"
    assert agent.stop() == 0


def test_a_delivery_note_makes_the_scans_receipts(agent_with):
    agent = agent_with()
    agent.scan("DN00000001")
    received = agent.scan(code(AMOX, 1))[0]
    assert (received["verdict"], received["movement"], received["reason"]) == ("accepted", "receive", None)
    agent.scan("DOC-CLOSE")
    sold = agent.scan(code(AMOX, 1))[0]
    assert (sold["verdict"], sold["reason"]) == ("accepted", None), "received here, so no lifecycle flag"
    agent.stop()


def test_lifecycle_warn_flags_and_strict_rejects_through_stdin(agent_with, tmp_path):
    agent = agent_with(lifecycle="warn")
    assert summary(agent.scan(code(AMOX, 1))) == [("accepted", "never_received")]
    agent.stop()
    (tmp_path / "ledger.db").unlink()
    agent = agent_with(lifecycle="strict")
    assert summary(agent.scan(code(AMOX, 1))) == [("rejected", "never_received")]
    assert summary(agent.scan(code(AMOX, 2))) == [("rejected", "never_received")]
    agent.stop()


def test_a_sold_code_received_again_is_a_duplicate_and_locks_until_acknowledged(agent_with):
    agent = agent_with(lifecycle="warn")
    agent.scan("DN00000001", code(AMOX, 1), "DOC-CLOSE")
    agent.scan("RX00000001", code(AMOX, 1), "DOC-CLOSE")
    agent.scan("DN00000002")
    back = agent.scan(code(AMOX, 1))[0]
    assert (back["verdict"], back["reason"], back["locks"]) == ("duplicate", "dispensed_before", True)
    assert back["earlier"]["movement"] == "dispense"
    assert summary(agent.scan(code(IBU, 1), "DOC-CLOSE")) == [("rejected", "station_locked")] * 2
    ack = agent.scan("SUPERVISOR-ACK")[0]
    assert ack["verdict"] == "acknowledged" and ack["record"]["via"] == "ack_code"
    assert summary(agent.scan(code(IBU, 1))) == [("accepted", None)]
    agent.stop()


def test_a_ward_order_scanned_at_the_bedside_is_use(agent_with):
    agent = agent_with(lifecycle="off")
    # A ward order opened by scanning carries no lines (the HIS sends lines by command);
    # without lines any code counts, once:
    agent.scan("WO000001")
    first, twice = agent.scan(code(AMOX, 1), code(AMOX, 1))
    assert first["movement"] == "use" and first["verdict"] == "accepted"
    assert (twice["verdict"], twice["reason"], twice["locks"]) == ("rejected", "in_document", False)
    assert summary(agent.scan(code(AMOX, 2))) == [("accepted", None)], "a counting slip does not lock the cart"
    agent.stop()


def test_an_idle_document_closes_itself(agent_with):
    agent = agent_with(lifecycle="off", idle_close_s=1)
    agent.scan("RX00000002", code(AMOX, 1))
    closed = agent.next(timeout=15)
    assert (closed["verdict"], closed["reason"]) == ("closed", "incomplete"), (
        "nobody said a document without lines was done"
    )
    assert closed["record"]["closed_by"] == "idle"
    agent.stop()


def test_a_refused_document_barcode_is_recorded_as_rejected(agent_with):
    agent = agent_with(lifecycle="off")
    agent.scan("RX00000003", "DOC-CLOSE")
    again = agent.scan("RX00000003")[0]
    assert (again["verdict"], again["reason"]) == ("rejected", "document_refused")
    assert "already closed" in again["detail"]
    nothing_open = agent.scan("DOC-CLOSE")[0]
    assert (nothing_open["verdict"], nothing_open["reason"]) == ("rejected", "document_refused")
    agent.stop()


def serial_agent(tmp_path: Path, pty_pair):
    """``scan-agent run --json`` with a serial scanner on ``pty_pair``, once it has opened the
    port; returns the process and a queue of its decisions."""
    config = write_config(
        tmp_path,
        lifecycle="off",
        extra=f'[[scanners]]\nkind = "serial"\nname = "counter"\nport = "{pty_pair.host}"\nterminator = "cr"\n',
    )
    proc = start_agent("run", "--config", str(config), "--json")
    decisions: queue.Queue = queue.Queue()
    ready = threading.Event()
    threading.Thread(target=lambda: [decisions.put(json.loads(x)) for x in proc.stdout], daemon=True).start()
    threading.Thread(
        target=lambda: [ready.set() for x in proc.stderr if f"opened {pty_pair.host}".encode() in x], daemon=True
    ).start()
    if not ready.wait(15):
        proc.kill()
        raise AssertionError("the agent never opened the serial port")
    return proc, decisions, config


def test_a_prescription_through_a_serial_scanner(tmp_path, pty_pair):
    proc, decisions, _ = serial_agent(tmp_path, pty_pair)
    try:
        fd = pty_pair.open_device()
        reads = ["]C0RX00000004", f"]C0{code(AMOX, 1)}", f"]C0{code(IBU, 1)}", "DOC-CLOSE"]
        os.write(fd, "".join(r + "\r" for r in reads).encode())
        got = [decisions.get(timeout=15) for _ in reads]
        os.close(fd)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    assert [d["verdict"] for d in got] == ["opened", "accepted", "accepted", "closed"]
    assert got[2]["progress"]["collected"] == 2 and got[3]["reason"] == "complete"
    assert got[1]["source"] == str(pty_pair.host)
    assert run_agent("ledger", "verify", "--db", str(tmp_path / "ledger.db")).returncode == 0


def test_wrong_drug_over_count_void_rescan_and_exception_with_the_documents_command(agent_with, tmp_path):
    agent = agent_with(lifecycle="off")
    config = str(tmp_path / "agent.toml")
    lines = json.dumps([{"product_id": AMOX, "expected": 2}, {"product_id": IBU, "expected": 1}])
    (tmp_path / "lines.json").write_text(lines)
    wait_until(lambda: (tmp_path / "ledger.db").exists(), what="the agent's ledger")
    opened = run_agent(
        "documents", "open", "--id", "RX00000005", "--kind", "prescription", "--lines", str(tmp_path / "lines.json"),
        "--config", config,
    )  # fmt: skip
    assert opened.returncode == 0, opened.stderr.decode()
    assert agent.next()["verdict"] == "opened"
    first, second = agent.scan(code(AMOX, 1), code(AMOX, 2))
    assert second["progress"]["collected"] == 2
    wrong, over = agent.scan(code(PARA, 1), code(AMOX, 9))
    assert (wrong["verdict"], wrong["reason"]) == ("rejected", "not_on_document"), "the wrong drug (串码)"
    assert (over["verdict"], over["reason"]) == ("rejected", "line_complete"), "a third box on a line of two"
    assert over["progress"]["lines"][0] == {"product_id": AMOX, "name": "", "expected": 2, "collected": 2}
    voided = run_agent(
        "documents", "void", first["event_id"], "--reason", "box for another patient", "--config", config
    )
    assert voided.returncode == 0, voided.stderr.decode()
    void = agent.next()
    assert void["verdict"] == "void" and void["progress"]["collected"] == 1
    assert void["earlier"]["event_id"] == first["event_id"]
    again = run_agent("documents", "void", first["event_id"], "--reason", "twice", "--config", config)
    assert again.returncode == 1 and b"event_id" in again.stderr
    rescan = agent.scan(code(AMOX, 3))[0]
    assert rescan["verdict"] == "accepted" and rescan["progress"]["collected"] == 2
    excepted = run_agent(
        "documents", "exception", "RX00000005", "--line", IBU, "--kind", "uncoded", "--reason", "no code on the box",
        "--approver", "chief-pharmacist", "--config", config,
    )  # fmt: skip
    assert excepted.returncode == 0, excepted.stderr.decode()
    exception = agent.next()
    assert exception["verdict"] == "exception" and exception["progress"]["complete"]
    closed = agent.scan("DOC-CLOSE")[0]
    assert (closed["verdict"], closed["reason"]) == ("closed", "complete_with_exceptions")
    amox = closed["record"]["lines"][0]["drugtracinfo"]
    assert [c["drug_trac_codg"] for c in amox] == [code(AMOX, 2), code(AMOX, 3)]
    shown = run_agent("documents", "show", "RX00000005", "--json", "--config", config)
    assert shown.returncode == 0, shown.stderr.decode()
    assert agent.stop() == 0


def test_a_three_line_prescription_completed_through_a_serial_scanner(tmp_path, pty_pair):
    proc, decisions, config = serial_agent(tmp_path, pty_pair)
    lines = [
        {"product_id": AMOX, "name": "Amoxicillin 500 mg", "expected": 2},
        {"product_id": IBU, "name": "Ibuprofen 200 mg", "expected": 1},
        {"product_id": PARA, "name": "Paracetamol 500 mg", "expected": 1, "split_units": 2},
    ]
    try:
        opened = run_agent(
            "documents", "open", "--id", "RX00000006", "--kind", "prescription", "--ref", "patient=P-7",
            "--lines", "-", "--config", str(config), input=json.dumps(lines).encode(),
        )  # fmt: skip
        assert opened.returncode == 0, opened.stderr.decode()
        assert decisions.get(timeout=15)["verdict"] == "opened"
        fd = pty_pair.open_device()
        reads = [code(AMOX, 1), code(IBU, 1), code(AMOX, 2), code(PARA, 1), "DOC-CLOSE"]
        os.write(fd, "".join(f"]C0{r}\r" for r in reads).encode())
        got = [decisions.get(timeout=15) for _ in reads]
        os.close(fd)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    assert [d["verdict"] for d in got] == ["accepted"] * 4 + ["closed"]
    assert [d["progress"]["collected"] for d in got[:4]] == [1, 2, 3, 4]
    assert got[3]["progress"]["complete"] and got[4]["reason"] == "complete"
    record = got[4]["record"]
    assert record["ref"] == {"patient": "P-7"}
    assert {line["product_id"]: [c["drug_trac_codg"] for c in line["drugtracinfo"]] for line in record["lines"]} == {
        AMOX: [code(AMOX, 1), code(AMOX, 2)],
        IBU: [code(IBU, 1)],
        PARA: [code(PARA, 1)],
    }
    assert record["lines"][2]["drugtracinfo"][0]["trdn_flag"] == 1, "a split line's code is a 拆零 unit"
    assert run_agent("ledger", "verify", "--db", str(tmp_path / "ledger.db")).returncode == 0
