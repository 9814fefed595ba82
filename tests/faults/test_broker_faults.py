"""Broker crashes and network cuts while scans flow at a steady rate.

A real mosquitto (persistence on) is SIGKILLed and restarted, or a proxy
between agent and broker drops, stalls and slices the connection. Jepsen's
"no lost acknowledged write", for the uplink: every event the agent decided
(accepted, rejected or duplicate) reaches a durable subscriber (persistent
session, QoS 1) by event id; duplicates are allowed and counted; ``seq`` has
no gaps; the ledger's chain verifies.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter

from agent import ledger
from tests.faults.conftest import cycles
from tests.faults.ledgers import code
from tests.support.agent import start_agent
from tests.support.mosquitto import Mosquitto
from tests.support.mqtt import Subscriber
from tests.support.net import wait_until
from tests.support.proxy import FaultyProxy

DEVICE, SITE = "kiosk-b", "site-b"
EVENTS = f"trace/v1/{SITE}/{DEVICE}/events"


def write_config(tmp_path, db, port):
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f'[station]\ndevice_id = "{DEVICE}"\nsite_id = "{SITE}"\n'
        f'[ledger]\npath = "{db}"\n[feedback]\nbackend = "none"\n'
        f'[mqtt]\nenabled = true\nhost = "127.0.0.1"\nport = {port}\nkeepalive_s = 5\n'
        "backoff_max_s = 1\nhealth_interval_s = 3600\n"
    )
    return cfg


class ScanningAgent:
    """``scan-agent run --json`` fed a steady stream (about ``rate`` scans/s) of new, repeated and bad codes."""

    def __init__(self, cfg, rate: float = 50.0) -> None:
        self.proc = start_agent("run", "--config", str(cfg), "--json")
        self.rate = rate
        self.sent = 0
        self.decided: list[dict] = []
        self._feeding = threading.Event()
        self._feeding.set()
        self.errors: list[bytes] = []
        self._feeder = threading.Thread(target=self._feed, daemon=True)
        self._feeder.start()
        for target in (self._read, lambda: self.errors.extend(self.proc.stderr)):
            threading.Thread(target=target, daemon=True).start()

    def _feed(self) -> None:
        rng = random.Random(9)
        n = 0
        while self._feeding.is_set():
            roll = rng.random()
            if roll < 0.1 and n > 10:
                line = code(rng.randrange(n - 10))  # dispensed before: duplicate
            elif roll < 0.15:
                line = b"6901234%06d" % rng.randrange(10**6)  # product barcode: rejected
            else:
                n += 1
                line = code(n)
            self.proc.stdin.write(line + b"\n")
            self.proc.stdin.flush()
            self.sent += 1
            time.sleep(1 / self.rate)

    def _read(self) -> None:
        for raw in self.proc.stdout:
            self.decided.append(json.loads(raw))

    def event_ids(self) -> set[str]:
        return {d["event_id"] for d in list(self.decided) if d["seq"] is not None}

    def stderr_tail(self, lines: int = 30) -> str:
        return "\n".join(b"".join(self.errors).decode(errors="replace").splitlines()[-lines:])

    def stop_feeding(self) -> None:
        """Stop scanning and wait until every line sent is decided (the agent keeps running)."""
        self._feeding.clear()
        self._feeder.join(10)
        wait_until(lambda: len(self.decided) == self.sent, timeout=30, what="every scan decided")

    def finish(self) -> int:
        """End of input: the agent finishes and exits."""
        self.proc.stdin.close()
        return self.proc.wait(30)


def delivered(db) -> int:
    conn = ledger.connect(db)
    try:
        return conn.execute("SELECT (SELECT COUNT(*) FROM outbox) - (SELECT COUNT(*) FROM deliveries)").fetchone()[0]
    finally:
        conn.close()


def check_everything_arrived(agent: ScanningAgent, auditor: Subscriber, db, figures) -> None:
    """Stop scanning, let the outbox drain, then hold the auditor's copy against the decisions."""
    agent.stop_feeding()
    try:
        wait_until(lambda: delivered(db) == 0, timeout=60, what="outbox drained")
    except TimeoutError:
        raise AssertionError(f"outbox not drained; agent said: {agent.stderr_tail()}") from None
    decided = agent.event_ids()
    try:
        wait_until(lambda: decided <= auditor.event_ids(), timeout=30, what="every decided event at the auditor")
    except TimeoutError:
        missing = decided - auditor.event_ids()
        seqs = sorted(d["seq"] for d in agent.decided if d["event_id"] in missing)
        raise AssertionError(f"{len(missing)} of {len(decided)} decided events never arrived; seq {seqs}") from None
    assert agent.finish() == 0, b"".join(agent.errors)[-2000:]
    events = auditor.events()
    counts = Counter(e["event_id"] for e in events)
    seqs = sorted({e["seq"] for e in events})
    assert seqs == list(range(1, len(seqs) + 1)), "seq has a gap at the auditor"
    conn = ledger.connect(db)
    assert ledger.verify(conn).ok
    in_ledger = {r[0] for r in conn.execute("SELECT event_id FROM scans WHERE seq IS NOT NULL")}
    conn.close()
    assert decided <= in_ledger
    assert set(counts) == in_ledger  # nothing arrives that the ledger does not hold
    verdicts = Counter(d["verdict"] for d in agent.decided)
    assert verdicts["accepted"] and verdicts["duplicate"] and verdicts["rejected"], verdicts
    figures.sent = len(decided)
    figures.lost = len(decided - set(counts))
    figures.duplicated = sum(n - 1 for n in counts.values())


def saved_after(broker: Mosquitto, moment: float) -> bool:
    saved = broker.dir / "mosquitto.db"
    return saved.exists() and saved.stat().st_mtime > moment


def test_broker_sigkill_restart_cycles(tmp_path, broker, figures):
    db = tmp_path / "ledger.db"
    subscribed = time.time()
    auditor = Subscriber(broker.port, EVENTS, client_id="auditor", persistent=True).start()
    # Mosquitto saves sessions every autosave_interval (1 s here), not on each change:
    # a kill before the first save would lose the auditor's session, which is the
    # broker's durability window, not the agent's. Start killing once it is saved.
    wait_until(lambda: saved_after(broker, subscribed + 0.01), timeout=10, what="auditor session saved")
    agent = ScanningAgent(write_config(tmp_path, db, broker.port))
    rng = random.Random(9)
    runs = cycles(5)
    try:
        wait_until(lambda: len(auditor.events()) >= 10, timeout=20, what="events flowing")
        for _ in range(runs):
            time.sleep(rng.uniform(0.2, 1.0))
            broker.kill()
            time.sleep(rng.uniform(0.1, 0.5))
            broker.start()
            back, before = time.monotonic(), len(auditor.events())
            wait_until(lambda before=before: len(auditor.events()) > before, timeout=30, what="events after restart")
            figures.recovered(back)
        check_everything_arrived(agent, auditor, db, figures)
    finally:
        agent.proc.kill()
        auditor.stop()
    figures.fault = "broker SIGKILL + restart (mosquitto, persistence)"
    figures.cycles = runs
    figures.note = "recovery = broker back to next event at the auditor"


def test_network_drop_stall_slice(tmp_path, broker, figures):
    db = tmp_path / "ledger.db"
    proxy = FaultyProxy(broker.port).start()
    auditor = Subscriber(broker.port, EVENTS, client_id="auditor", persistent=True).start()
    agent = ScanningAgent(write_config(tmp_path, db, proxy.port))
    rng = random.Random(10)
    runs = cycles(6)
    try:
        wait_until(lambda: len(auditor.events()) >= 10, timeout=20, what="events flowing")
        for n in range(runs):
            fault = ("drop", "stall", "slice")[n % 3]
            proxy.set(fault)
            time.sleep(rng.uniform(0.3, 1.5))
            proxy.set("pass")
            back, before = time.monotonic(), len(auditor.events())
            wait_until(lambda before=before: len(auditor.events()) > before, timeout=30, what=f"events after {fault}")
            figures.recovered(back)
        check_everything_arrived(agent, auditor, db, figures)
    finally:
        agent.proc.kill()
        auditor.stop()
        proxy.stop()
    assert proxy.connections > 1  # the drops really cut the agent off
    figures.fault = "network drop / stall / slice (TCP proxy)"
    figures.cycles = runs
    figures.note = "recovery = link back to next event at the auditor"
