"""Agent crashes inside a case expansion: SIGKILL while a receiving dock scans case codes.

A case code (箱码) stands for its 600 units: one receive records one row and moves every
unit (and every middle pack, 中包码) under it to received, in one transaction. Each cycle
imports a supplier's manifest into the ledger (a real SQLite file; see below), starts
``scan-agent run --json`` with the receive movement, scans the delivery note's bill code
first in some cycles (a delivery document opens against the manifest), feeds the case
codes, and SIGKILLs the agent at a random moment, aimed at a case's expansion: right after
writing a case code, after a random delay drawn from how long this machine takes to decide
a case. Then, on the ledger as the kill left it:

- every pack is whole or absent: either its row exists and every unit and middle pack under
  it is received with ``in_id`` = that row, or there is no row and none of them moved
  (a pack partly received would be "torn");
- every decision the agent printed is in the ledger with the same verdict and seq;
- ``ledger.verify`` passes (hash chain, seq, the manifests' codes against their digest).

The agent restarted on the same ledger goes on: every pack not recorded is scanned again
and accepted (in the same delivery, still open), a recorded one again is a duplicate, the
delivery closes with nothing missing, and the agent stops cleanly at the scanner's EOF.

Each manifest comes in by the real ``scan-agent manifest import``: on the ledger directly
(no agent running), through the running agent, or through it with the agent SIGKILLed
during the import. Then the manifest must be in the ledger whole (its row and every code)
or not at all, and in it if the command said it was imported; the restarted agent imports
it (again: a no-op if it was). The same manifest imported again at the end of each cycle
records nothing.
"""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import statistics
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from agent import ledger
from tests.faults.conftest import cycles
from tests.support.agent import run_agent, start_agent
from tests.support.manifests import make_manifest

DEVICE, SITE = "dock-1", "site-1"
CLOSE = "CLOSE"
UNITS_PER_CASE = 600
#: Longest the test waits for a decision before it kills the agent and fails.
STUCK_S = 60.0
#: Write-to-decision time of a case until this run has measured one (seconds).
FIRST_GUESS_S = 0.03

# lock_on is empty: a duplicate in a delivery would otherwise lock the station, and the
# restart scans a recorded case again on purpose.
CONFIG = """\
[station]
device_id = "{device}"
site_id = "{site}"
movement = "receive"
[ledger]
path = "{db}"
[feedback]
backend = "console"
[documents]
patterns = {{ delivery = "^DN[0-9]{{8}}$" }}
close_code = "{close}"
idle_close_s = 0
lock_on = []
"""


@dataclass(frozen=True)
class Pack:
    """A case or middle-pack code the dock scans, and what the manifest says is inside."""

    code: str
    level: str
    units: tuple[str, ...]
    middles: tuple[str, ...]


def packs_to_scan(body: dict, split_first: bool) -> list[Pack]:
    """The manifest's cases, in order; with ``split_first`` the first case's middle packs
    are scanned one by one instead of it (a dock opening a case)."""
    children: dict[str | None, list[dict]] = defaultdict(list)
    for row in body["codes"]:
        children[row["parent"]].append(row)

    def inside(code: str) -> tuple[list[str], list[str]]:
        units, middles = [], []
        for child in children[code]:
            if child["level"] == "unit":
                units.append(child["code"])
            else:
                middles.append(child["code"])
                units += inside(child["code"])[0]
        return units, middles

    packs = []
    for top in children[None]:
        if top["level"] != "case":
            continue
        units, middles = inside(top["code"])
        if split_first and middles and not packs:
            packs += [Pack(m, "middle", tuple(sorted(inside(m)[0])), ()) for m in middles]
        else:
            packs.append(Pack(top["code"], "case", tuple(sorted(units)), tuple(sorted(middles))))
    return packs


class Agent:
    """One ``scan-agent run --json`` fed on stdin; SIGKILLed if it stops answering."""

    def __init__(self, cfg_path: Path) -> None:
        self.proc = start_agent("run", "--config", str(cfg_path), "--json")
        self.err: list[bytes] = []
        threading.Thread(target=lambda: self.err.extend(self.proc.stderr), daemon=True).start()
        self.guard = threading.Timer(STUCK_S, self.proc.kill)
        self.guard.start()
        self.printed: list[dict] = []

    def wait_up(self) -> None:
        """Until the agent holds the ledger's lock (it logs "up" after taking it): a command
        sent before then finds the lock free and writes the ledger itself."""
        deadline = time.monotonic() + STUCK_S
        while b"scan-agent up" not in b"".join(self.err):
            assert self.proc.poll() is None and time.monotonic() < deadline, b"".join(self.err)[-2000:]
            time.sleep(0.01)

    def write(self, line: str) -> None:
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def answer(self) -> dict:
        raw = self.proc.stdout.readline()
        assert raw, f"no decision; stderr: {b''.join(self.err)[-2000:]!r}"
        self.printed.append(json.loads(raw))
        return self.printed[-1]

    def ask(self, line: str) -> dict:
        self.write(line)
        return self.answer()

    def kill(self) -> None:
        """SIGKILL, then keep what it had printed already (still in the pipe: it counts)."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.guard.cancel()
        rest = self.proc.stdout.read().splitlines()
        self.printed += [json.loads(line) for line in rest if line.strip().endswith(b"}")]

    def finish(self) -> int:
        """Close stdin (the scanner's EOF) and wait for the agent to stop by itself."""
        self.proc.stdin.close()
        try:
            return self.proc.wait(STUCK_S)
        finally:
            self.guard.cancel()


def manifest_import(cfg_path: Path, source: Path, agent: Agent | None = None) -> dict:
    """``scan-agent manifest import``: through ``agent``'s control socket when it runs (its
    ``manifest`` decision is printed too, and must be the same row), else on the ledger
    directly. Returns the command's JSON answer."""
    done = run_agent("manifest", "import", str(source), "--config", str(cfg_path), "--json")
    assert done.returncode == 0, done.stderr.decode()
    answer = json.loads(done.stdout)
    if agent is not None and answer["imported"]:
        printed = agent.answer()
        assert (printed["verdict"], printed["event_id"]) == ("manifest", answer["rows"][0]["event_id"]), printed
    return answer


def import_killed(cfg_path: Path, source: Path, agent: Agent, delay_s: float) -> bool:
    """Start ``scan-agent manifest import`` through ``agent`` and SIGKILL the agent ``delay_s``
    later, maybe inside the import's transaction. The command may still finish on the
    ledger directly (the lock is free once the agent is dead). Returns whether it said
    it imported."""
    command = start_agent("manifest", "import", str(source), "--config", str(cfg_path), "--json")
    time.sleep(delay_s)
    agent.kill()
    out, _ = command.communicate(timeout=STUCK_S)
    return command.returncode == 0 and json.loads(out)["imported"]


def manifest_held(db: Path, bill: str) -> tuple[int, int]:
    """``(manifest rows, code rows)`` the ledger holds for ``bill``."""
    conn = ledger.connect(db)
    try:
        rows = conn.execute("SELECT COUNT(*) FROM scans WHERE verdict = 'manifest' AND document = ?", (bill,))
        codes = conn.execute("SELECT COUNT(*) FROM manifest_codes WHERE bill_code = ?", (bill,))
        return rows.fetchone()[0], codes.fetchone()[0]
    finally:
        conn.close()


@dataclass
class PackState:
    """What the ledger holds of one pack: its accepted rows, and its codes' receive state."""

    rows: list[int]
    #: code -> (in_held, in_id) for the pack, its units and its middles that have state.
    states: dict[str, tuple[int, int | None]]


def pack_state(conn: sqlite3.Connection, pack: Pack) -> PackState:
    rows = [r[0] for r in conn.execute("SELECT id FROM scans WHERE code = ? AND verdict = 'accepted'", (pack.code,))]
    codes = (pack.code, *pack.units, *pack.middles)
    states = {}
    for start in range(0, len(codes), 500):  # under SQLite's host-parameter limit
        chunk = codes[start : start + 500]
        query = f"SELECT code, in_held, in_id FROM code_state WHERE code IN ({','.join('?' * len(chunk))})"
        states.update({r[0]: (r[1], r[2]) for r in conn.execute(query, chunk)})
    return PackState(rows, states)


def whole_or_none(conn: sqlite3.Connection, pack: Pack) -> str:
    """``"whole"``, ``"none"``, or a description of how ``pack`` is torn."""
    found = pack_state(conn, pack)
    received = {code for code, (held, _) in found.states.items() if held}
    if not found.rows:
        return "none" if not received else f"no row, yet {len(received)} of its codes received"
    if len(found.rows) > 1:
        return f"{len(found.rows)} accepted rows"
    (row_id,) = found.rows
    record = json.loads(conn.execute("SELECT record FROM scans WHERE id = ?", (row_id,)).fetchone()[0])["pack"]
    if (sorted(record["units"]), sorted(record["middles"])) != (list(pack.units), list(pack.middles)):
        return f"row {row_id} lists {len(record['units'])} units, the manifest {len(pack.units)}"
    wrong = [c for c in (pack.code, *pack.units, *pack.middles) if found.states.get(c) != (1, row_id)]
    return "whole" if not wrong else f"row {row_id}, yet {len(wrong)} codes not received by it, e.g. {wrong[0]}"


def check_ledger(db: Path, packs: list[Pack], printed: list[dict]) -> dict[str, str]:
    """Verify the ledger and every printed decision in it; returns each pack's state."""
    conn = ledger.connect(db)
    try:
        result = ledger.verify(conn)
        assert result.ok, result.problem
        stored = {r[0]: (r[1], r[2]) for r in conn.execute("SELECT event_id, verdict, seq FROM scans")}
        lost = [d for d in printed if stored.get(d["event_id"]) != (d["verdict"], d["seq"])]
        assert lost == [], lost[:3]
        seqs = sorted(seq for _, seq in stored.values() if seq is not None)
        assert seqs == list(range(1, len(seqs) + 1))
        return {pack.code: whole_or_none(conn, pack) for pack in packs}
    finally:
        conn.close()


class Timing:
    """How long this machine takes from writing a case code to its decision: the kill's
    delay is drawn from it, so the kill lands inside the expansion as often as not."""

    def __init__(self) -> None:
        self.samples: list[float] = []

    def guess(self) -> float:
        return statistics.median(self.samples[-20:]) if self.samples else FIRST_GUESS_S


def scan_until_kill(agent: Agent, packs: list[Pack], rng: random.Random, timing: Timing) -> list[Pack]:
    """Scan packs one at a time up to a random one, write it (or a burst of the next few)
    and SIGKILL after a random delay. Returns the packs written before the kill."""
    kill_at = rng.randrange(len(packs))
    for pack in packs[:kill_at]:
        started = time.monotonic()
        decision = agent.ask(pack.code)
        timing.samples.append(time.monotonic() - started)
        assert decision["verdict"] == "accepted", decision
    burst = packs[kill_at : kill_at + (rng.choice((1, 1, 2, 3)))]
    for pack in burst:
        agent.write(pack.code)
    time.sleep(rng.uniform(0, 1.3 * len(burst) * timing.guess()))
    agent.kill()
    return packs[: kill_at + len(burst)]


def restart_and_finish(cfg_path: Path, packs: list[Pack], states: dict[str, str], bill: str | None) -> list[dict]:
    """A new agent on the same ledger: the packs not recorded are accepted now, a recorded
    one again is a duplicate, the delivery (if one is open) closes with nothing missing."""
    agent = Agent(cfg_path)
    for pack in packs:
        if states[pack.code] == "none":
            decision = agent.ask(pack.code)
            assert decision["verdict"] == "accepted", decision
            assert len(decision["record"]["pack"]["units"]) == len(pack.units), decision["detail"]
            assert (decision["document"] or {}).get("id") == bill, decision
    recorded = [pack for pack in packs if states[pack.code] == "whole"]
    if recorded:
        again = agent.ask(recorded[0].code)
        assert again["verdict"] == "duplicate", again
    if bill is not None:
        closed = agent.ask(CLOSE)
        assert (closed["verdict"], closed["document"]["id"]) == ("closed", bill), closed
        reconciliation = closed["record"]["reconciliation"]
        assert reconciliation["missing"] == [], reconciliation["missing"][:3]
        expected = sum(len(p.units) for p in packs)
        assert reconciliation["units"] == {"expected": expected, "received": expected}, reconciliation["units"]
    assert agent.finish() == 0, b"".join(agent.err)[-2000:]
    return agent.printed


class Imports:
    """How each cycle's manifest comes in, by ``scan-agent manifest import`` (the real CLI):
    on the ledger directly with no agent running, through the running agent, or through it
    with the agent SIGKILLed during the import (then imported again by the restarted one)."""

    WAYS = ("running", "running", "direct", "direct", "killed", "killed")

    def __init__(self, cfg_path: Path, db: Path, rng: random.Random) -> None:
        self.cfg_path, self.db, self.rng = cfg_path, db, rng
        #: Seconds one import through the running agent took, command start to answer.
        self.took: list[float] = []
        self.killed = self.answered_before_kill = 0
        self.printed: list[dict] = []

    def way(self, cycle: int) -> str:
        return self.WAYS[cycle % len(self.WAYS)]  # the first is "running": no ledger yet

    def bring(self, cycle: int, source: Path, bill: str, codes: int) -> Agent:
        """Import ``source`` the cycle's way; returns the agent that will scan (started)."""
        way = self.way(cycle)
        if way == "direct":
            assert manifest_import(self.cfg_path, source)["imported"]
            agent = Agent(self.cfg_path)
            agent.wait_up()  # a kill aimed at a case must not land in the agent's own start
            return agent
        agent = Agent(self.cfg_path)
        agent.wait_up()
        if way == "killed":
            # The agent's transaction ends just before the command's answer: aim at the
            # last half of the command's usual run.
            guess = statistics.median(self.took) if self.took else 0.3
            said = import_killed(self.cfg_path, source, agent, self.rng.uniform(0.5 * guess, 1.05 * guess))
            self.printed += agent.printed
            check_ledger(self.db, [], agent.printed)
            held = manifest_held(self.db, bill)
            assert held in ((0, 0), (1, codes)), f"{bill} half imported: {held}"
            assert held[0] or not said, f"the command said {bill} was imported, the ledger has no row"
            self.killed += 1
            self.answered_before_kill += any(d["verdict"] == "manifest" for d in agent.printed)
            agent = Agent(self.cfg_path)
            agent.wait_up()
            assert manifest_import(self.cfg_path, source, agent)["imported"] == (held[0] == 0)
            return agent
        started = time.monotonic()
        assert manifest_import(self.cfg_path, source, agent)["imported"]
        self.took.append(time.monotonic() - started)
        return agent


def test_sigkill_inside_a_case_expansion(tmp_path, figures):
    db = tmp_path / "ledger.db"
    cfg_path = tmp_path / "agent.toml"
    cfg_path.write_text(CONFIG.format(device=DEVICE, site=SITE, db=db, close=CLOSE))
    rng = random.Random(16)
    timing = Timing()
    printed: list[dict] = []
    totals = {"packs": 0, "units": 0, "torn": 0, "in_flight": 0, "committed_unprinted": 0, "rolled_back": 0}
    seen_codes: set[str] = set()
    imports = Imports(cfg_path, db, rng)
    runs = cycles(6)
    for cycle in range(runs):
        # Deterministic per cycle, so the default 6 cycles cover each pairing of
        # (delivery open or not) x (middle packs or not).
        with_document, with_middles = cycle % 2 == 1, cycle % 3 != 0
        bill = f"DN{cycle + 1:08d}"
        body = make_manifest(
            bill,
            products=2,
            cases=rng.randrange(3, 6),
            units_per_case=UNITS_PER_CASE,
            middle_per_case=4 if with_middles else 0,
            seed=1000 + cycle,
        )
        codes = {row["code"] for row in body["codes"]}
        assert not codes & seen_codes, "the generator repeated a code across bills"
        seen_codes |= codes
        packs = packs_to_scan(body, split_first=with_middles and rng.random() < 0.5)
        source = tmp_path / f"{bill}.json"
        source.write_text(json.dumps(body))

        agent = imports.bring(cycle, source, bill, len(body["codes"]))
        if with_document:
            opened = agent.ask(bill)
            assert (opened["verdict"], opened["document"]["id"]) == ("opened", bill), opened
        written = scan_until_kill(agent, packs, rng, timing)
        printed += agent.printed

        states = check_ledger(db, packs, agent.printed)
        torn = {code: state for code, state in states.items() if state not in ("whole", "none")}
        totals["torn"] += len(torn)
        assert torn == {}, torn
        shown = {d["code"] for d in agent.printed if d["verdict"] == "accepted"}
        assert shown <= {code for code, state in states.items() if state == "whole"}
        unprinted = [p for p in written if p.code not in shown]
        totals["in_flight"] += len(unprinted)
        totals["committed_unprinted"] += sum(states[p.code] == "whole" for p in unprinted)
        totals["rolled_back"] += sum(states[p.code] == "none" for p in unprinted)
        assert all(states[p.code] == "none" for p in packs[len(written) :]), "a pack never written is recorded"

        after = restart_and_finish(cfg_path, packs, states, bill if with_document else None)
        printed += after
        final = check_ledger(db, packs, after)
        assert set(final.values()) == {"whole"}, {c: s for c, s in final.items() if s != "whole"}
        assert not manifest_import(cfg_path, source)["imported"], "the same manifest again must be a no-op"
        totals["packs"] += len(packs)
        totals["units"] += sum(len(p.units) for p in packs)

    verify = run_agent("ledger", "verify", "--db", str(db))
    assert verify.returncode == 0, verify.stderr.decode()
    # The kill must have landed between a case's write and its decision, not only between cases.
    assert totals["in_flight"] > 0, totals

    figures.fault = "agent SIGKILL inside a case expansion (600-unit cases, middle packs, delivery open or not)"
    figures.cycles, figures.sent = runs, len(printed) + len(imports.printed)
    figures.note = (
        f"{totals['packs']} case/middle-pack scans ({totals['units']:,} units) all received after restart;"
        f" torn (partly received): {totals['torn']}; {totals['in_flight']} packs written but unanswered at the kill:"
        f" {totals['committed_unprinted']} committed, {totals['rolled_back']} left no trace and were accepted"
        f" on restart; {imports.killed} more kills during a manifest import through the agent:"
        f" {imports.answered_before_kill} after the agent had answered, the rest before; each manifest whole"
        f" or absent after the kill;"
        f" kill delay drawn from 0-1.3x the median write-to-decision of a case,"
        f" {statistics.median(timing.samples or [0]) * 1000:.0f} ms"
    )
