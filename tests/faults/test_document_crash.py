"""Agent crashes inside an open document: SIGKILL while a prescription is being scanned.

Each cycle starts ``scan-agent run --json`` with a prescription open or opening, feeds it
codes on stdin and SIGKILLs it after a random number of decisions. The agent restarted on
the same ledger must hold the open document with everything it collected:

- every decision printed before the kill is in the ledger with the same verdict and seq,
  and every scan printed as accepted in the document is among the document's scans;
- the restarted agent's first scan continues the count: its ``progress`` is the ledger's
  count plus one, per line too (scans committed but killed before they were printed count);
- the document completes (the rest scanned, closed with the close code), the closed
  decision says ``complete`` and its codes are exactly the ledger's, so every printed one;
- ``scan-agent ledger verify`` passes, and ``seq`` has no gaps.

Two ways the prescription is opened:

- ``barcode``: ``RX…`` scanned on stdin, matching ``[documents] patterns``. A scanned barcode
  opens a document without lines (any code counts), so it is "complete" at the 60 codes the
  test aims for.
- ``lines``: 3 lines of 20 units, opened by an MQTT ``open_document`` command from a real
  mosquitto once the agent is online (a document's lines come only by command). Scans of
  another product are refused (``not_on_document``) and a line's 21st unit
  (``line_complete``), so they must not count.
"""

from __future__ import annotations

import json
import random
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent import ledger
from tests.faults.conftest import cycles
from tests.support.agent import decisions_until_killed, run_agent, start_agent
from tests.support.mqtt import Commander, Subscriber
from tests.support.net import wait_until

PRODUCTS = ("8123456", "8234567", "8345678")
#: A product on none of the prescription's lines.
OTHER = "8999999"
UNITS = 20
#: Codes a document holds when it is complete: 3 lines x 20 units (the barcode one has no lines).
TARGET = len(PRODUCTS) * UNITS
CLOSE = "CLOSE"
#: Longest the test waits for the agent's next decision before it kills it and fails.
STUCK_S = 60.0

BASE = "trace/v1/site-1/kiosk-1"
CONFIG = """\
[station]
device_id = "kiosk-1"
site_id = "site-1"
[ledger]
path = "{db}"
[feedback]
backend = "console"
[documents]
patterns = {{ prescription = "^RX[0-9]{{8}}$" }}
close_code = "CLOSE"
idle_close_s = 0
"""
MQTT = """\
[mqtt]
enabled = true
host = "127.0.0.1"
port = {port}
backoff_max_s = 2
"""


class Codes:
    """New trace codes, never one twice across the whole test (a second would be a duplicate)."""

    def __init__(self) -> None:
        self.serial = 0

    def new(self, product: str) -> str:
        self.serial += 1
        return f"{product}{self.serial:013d}"


def script(rng: random.Random, codes: Codes, length: int) -> list[str]:
    """What the operator scans before the kill: mostly the prescription's products, some
    codes of another product, product barcodes (EAN-13) and the scanner reading twice."""
    lines: list[str] = []
    while len(lines) < length:
        roll = rng.random()
        if roll < 0.08 and lines and len(lines[-1]) == 20:
            lines.append(lines[-1])  # at once: a double read
        elif roll < 0.16:
            lines.append(ean13(f"69{rng.randrange(10**10):010d}"))  # the product's barcode: rejected
        elif roll < 0.24:
            lines.append(codes.new(OTHER))
        else:
            lines.append(codes.new(rng.choice(PRODUCTS)))
    return lines


def ean13(first12: str) -> str:
    """``first12`` with its EAN-13 check digit (weights 1, 3, 1, 3, ... from the left)."""
    total = sum(int(d) * (3 if n % 2 else 1) for n, d in enumerate(first12))
    return first12 + str(-total % 10)


class Commands:
    """A real MQTT client that opens the prescription on the agent by command, once it is online."""

    def __init__(self, port: int) -> None:
        self.status = Subscriber(port, f"{BASE}/status", persistent=False).start()
        self.commander = Commander(port, BASE).start()

    def online(self) -> int:
        return sum(m.payload == b"online" for m in self.status.on("/status"))

    def wait_online(self, before: int) -> None:
        """Until the agent started when ``before`` online messages had come says it is online."""
        wait_until(lambda: self.online() > before, timeout=20, what="agent online")

    def open_prescription(self, doc_id: str, online_before: int) -> None:
        """Wait for the agent started after ``online_before`` to be online, then open ``doc_id``."""
        self.wait_online(online_before)
        lines = [{"product_id": p, "name": f"drug {p}", "expected": UNITS} for p in PRODUCTS]
        body = {"id": doc_id, "kind": "prescription", "ref": {"patient": "P-1"}, "lines": lines}
        reply = self.commander.send("open_document", body)
        assert reply["ok"], reply

    def stop(self) -> None:
        self.commander.stop()
        self.status.stop()


class Agent:
    """One ``scan-agent run --json`` asked one line at a time; SIGKILLed if it stops answering."""

    def __init__(self, cfg_path: Path) -> None:
        self.started = time.monotonic()
        self.proc = start_agent("run", "--config", str(cfg_path), "--json")
        self.err: list[bytes] = []
        threading.Thread(target=lambda: self.err.extend(self.proc.stderr), daemon=True).start()
        self.guard = threading.Timer(STUCK_S, self.proc.kill)
        self.guard.start()
        #: When its first decision came (monotonic): the restart's recovery ends there.
        self.first_answer: float | None = None

    def ask(self, line: str) -> dict:
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()
        raw = self.proc.stdout.readline()
        assert raw, f"no decision for {line!r}; stderr: {b''.join(self.err)[-2000:]!r}"
        if self.first_answer is None:
            self.first_answer = time.monotonic()
        return json.loads(raw)

    def finish(self) -> int:
        """Close stdin (the scanner's EOF) and wait for the agent to stop by itself."""
        self.proc.stdin.close()
        try:
            return self.proc.wait(STUCK_S)
        finally:
            self.guard.cancel()


def feed(proc: subprocess.Popen, lines: list[str]) -> None:
    """Write ``lines`` as a scanner would, a steady stream; stop quietly when the agent is killed."""
    try:
        for line in lines:
            proc.stdin.write(line.encode() + b"\n")
            proc.stdin.flush()
            time.sleep(0.001)
    except (BrokenPipeError, ValueError, OSError):
        pass


@dataclass
class Snapshot:
    """What the ledger holds, read after an agent stopped (its hash chain verified first)."""

    #: (verdict, seq) of every row, by event id.
    rows: dict[str, tuple[str, int | None]]
    #: The document's accepted scans: code -> product.
    codes: dict[str, str]
    #: The verdict of the document's last ``opened``/``closed`` row: is it still open?
    state: str | None

    def per_product(self) -> Counter:
        return Counter(self.codes.values())


def read_ledger(db: Path, doc_id: str) -> Snapshot:
    conn = ledger.connect(db)
    try:
        result = ledger.verify(conn)
        assert result.ok, result.problem
        rows = {
            r["event_id"]: (r["verdict"], r["seq"]) for r in conn.execute("SELECT event_id, verdict, seq FROM scans")
        }
        codes = dict(
            conn.execute(
                "SELECT code, product_id FROM scans WHERE document = ? AND verdict = 'accepted' AND record IS NULL",
                (doc_id,),
            ).fetchall()
        )
        last = conn.execute(
            "SELECT verdict FROM scans WHERE document = ? AND verdict IN ('opened', 'closed') ORDER BY id DESC LIMIT 1",
            (doc_id,),
        ).fetchone()
    finally:
        conn.close()
    return Snapshot(rows, codes, None if last is None else last["verdict"])


def missing(printed: list[dict], snapshot: Snapshot) -> list[dict]:
    """Printed decisions the ledger does not hold with the same verdict and seq."""
    return [d for d in printed if snapshot.rows.get(d["event_id"]) != (d["verdict"], d["seq"])]


def closed_codes(record: dict) -> set[str]:
    """The codes a ``closed`` row lists, on its lines or (a document without lines) at the top."""
    found = [c for line in record["lines"] for c in line["drugtracinfo"]] + record["drugtracinfo"]
    return {c["drug_trac_codg"] for c in found}


def in_document(decision: dict, doc_id: str) -> bool:
    """Whether ``decision`` was printed as a scan accepted into document ``doc_id``."""
    return decision["verdict"] == "accepted" and (decision["document"] or {}).get("id") == doc_id


def next_product(rng: random.Random, opened: str, have: Counter) -> str:
    """A product whose line has room; now and then, on a document with lines, a wrong drug."""
    if opened == "lines" and rng.random() < 0.1:
        return OTHER
    return rng.choice([p for p in PRODUCTS if opened == "barcode" or have[p] < UNITS])


def complete_document(agent: Agent, codes: Codes, rng: random.Random, doc_id: str, opened: str, have: Counter):
    """Scan the rest of the document on the restarted agent and close it; returns its decisions.

    Every decision's progress is the ledger's count so far plus what this run accepted,
    per line too: so the first continues from the ledger. A wrong drug adds nothing."""
    decisions = []
    total = sum(have.values())
    while total < TARGET:
        product = next_product(rng, opened, have)
        decision = agent.ask(codes.new(product))
        decisions.append(decision)
        if product == OTHER:
            assert (decision["verdict"], decision["reason"]) == ("rejected", "not_on_document"), decision
        else:
            assert in_document(decision, doc_id), decision
            have[product] += 1
            total += 1
        progress = decision["progress"]
        assert progress["collected"] == total, (progress, total)
        if opened == "lines":
            assert [(x["product_id"], x["collected"]) for x in progress["lines"]] == [(p, have[p]) for p in PRODUCTS]
    closed = agent.ask(CLOSE)
    decisions.append(closed)
    assert (closed["verdict"], closed["reason"]) == ("closed", "complete"), closed
    assert closed["document"]["id"] == doc_id and closed["record"]["collected"] == TARGET
    return decisions


@pytest.mark.parametrize("opened", ["barcode", "lines"])
def test_sigkill_inside_an_open_document(tmp_path, request, figures, opened):
    db = tmp_path / "ledger.db"
    cfg_path = tmp_path / "agent.toml"
    commands = None
    if opened == "lines":
        commands = Commands(request.getfixturevalue("broker").port)
        request.addfinalizer(commands.stop)
    cfg_path.write_text(CONFIG.format(db=db) + ("" if commands is None else MQTT.format(port=commands.status.port)))
    rng = random.Random(23 if opened == "barcode" else 29)
    codes = Codes()
    printed: list[dict] = []
    unprinted = 0
    runs = cycles(5)
    for cycle in range(runs):
        doc_id = f"RX{cycle + 1:08d}"
        before = script(rng, codes, rng.randrange(10, 50))
        if commands is None:
            before.insert(0, doc_id)

        # The prescription opened, scanning, then SIGKILL after a random number of decisions.
        online = 0 if commands is None else commands.online()
        proc = start_agent("run", "--config", str(cfg_path), "--json")
        threading.Thread(target=lambda p=proc: p.stderr.read(), daemon=True).start()
        guard = threading.Timer(STUCK_S, proc.kill)
        guard.start()
        if commands is not None:
            commands.open_prescription(doc_id, online)
        threading.Thread(target=feed, args=(proc, before), daemon=True).start()
        decisions = len(before) + (commands is not None)  # a command's opened row is one more
        this_run = decisions_until_killed(proc, rng.randrange(1, decisions + 1))
        proc.wait()
        guard.cancel()
        printed += this_run
        assert (this_run[0]["verdict"], this_run[0]["document"]["id"]) == ("opened", doc_id), this_run[0]

        killed = read_ledger(db, doc_id)
        assert missing(this_run, killed) == [], missing(this_run, killed)[:3]
        assert killed.state == "opened", f"{doc_id} should be open after the kill, is {killed.state}"
        shown = {d["code"] for d in this_run if in_document(d, doc_id)}
        assert shown <= set(killed.codes), sorted(shown - set(killed.codes))[:3]
        unprinted += len(killed.codes) - len(shown)

        # Restart on the same ledger: the document goes on from the ledger's count, and completes.
        online = 0 if commands is None else commands.online()
        agent = Agent(cfg_path)
        after = complete_document(agent, codes, rng, doc_id, opened, killed.per_product())
        figures.recovery_s.append(agent.first_answer - agent.started)
        if commands is not None:
            commands.wait_online(online)  # its "online" counted now, not as the next agent's
        assert agent.finish() == 0
        printed += after

        done = read_ledger(db, doc_id)
        assert done.state == "closed"
        assert missing(after, done) == [], missing(after, done)[:3]
        assert closed_codes(after[-1]["record"]) == set(done.codes) >= set(killed.codes)
        verify = run_agent("ledger", "verify", "--db", str(db))
        assert verify.returncode == 0, verify.stderr.decode()

    seqs = sorted(seq for _, seq in done.rows.values() if seq is not None)
    assert seqs == list(range(1, len(seqs) + 1))
    seen = {d["verdict"] for d in printed} | {d["reason"] for d in printed if d["verdict"] == "rejected"}
    wanted = {"opened", "accepted", "rejected", "product_barcode", "double_read", "closed"}
    wanted |= {"not_on_document"} if opened == "lines" else set()
    assert wanted <= seen, seen

    how = "scanned RX barcode, no lines" if opened == "barcode" else "3 lines x 20, opened by MQTT command"
    figures.fault = f"agent SIGKILL inside an open document ({how})"
    figures.cycles, figures.sent = runs, len(printed)
    figures.note = (
        f"{runs} documents completed after restart; {unprinted} scans committed but killed before printing, "
        "counted; recovery = restart to the first decision"
    )
