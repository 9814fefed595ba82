"""Receipts (issue 17, section 2): the back end confirms what it stored on ``{p}/receipt``;
the agent sends again what was delivered but not confirmed. Against a real mosquitto,
with the test playing the back end through paho."""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from agent.config import MqttConfig, parse_toml
from agent.ledger import SCHEMA_VERSION, Ledger, connect, verify
from agent.ledger.outbox import Outbox
from agent.ops import doctor
from agent.sinks.uplink import Uplink
from agent.sinks.uplink.health import Counters, Health
from agent.sinks.uplink.receipts import Receipts
from tests.support.agent import agent_config, start_agent
from tests.support.backlog import code, fill_ledger
from tests.support.mosquitto import Mosquitto
from tests.support.mqtt import Commander, Subscriber
from tests.support.net import wait_until

BASE = "trace/v1/site-1/kiosk-1"
V3 = Path(__file__).parent / "data" / "ledger-v3.db"


class BackEnd:
    """The test as the back end: publishes receipts for one device, retained, QoS 1."""

    def __init__(self, port: int, base: str = BASE) -> None:
        self.topic = f"{base}/receipt"
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"backend-{time.monotonic_ns()}")
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def receipt(self, payload: dict | bytes | str, *, retain: bool = True) -> None:
        body = json.dumps(payload) if isinstance(payload, dict) else payload
        self.client.publish(self.topic, body, qos=1, retain=retain).wait_for_publish(5)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def make_uplink(path, port, *, receipts=True, timeout_s=1.0, device_id="kiosk-1", site_id="site-1") -> Uplink:
    config = MqttConfig(
        enabled=True, host="127.0.0.1", port=port, receipts=receipts, receipt_timeout_s=timeout_s, backoff_max_s=1
    )
    return Uplink(config, db_path=path, device_id=device_id, site_id=site_id)


def depth(path) -> int:
    conn = connect(path)
    try:
        return conn.execute("SELECT (SELECT COUNT(*) FROM outbox) - (SELECT COUNT(*) FROM deliveries)").fetchone()[0]
    finally:
        conn.close()


def receipts_in(path) -> list[int]:
    conn = connect(path)
    try:
        return [r[0] for r in conn.execute("SELECT stored_through_seq FROM receipts ORDER BY id")]
    finally:
        conn.close()


def arrivals(sub: Subscriber) -> list[int]:
    """The seq of every event the subscriber got, in arrival order (resends included)."""
    return [event["seq"] for event in sub.events()]


def test_unconfirmed_events_are_sent_again_oldest_first_until_a_receipt_covers_them(tmp_path, broker):
    path = tmp_path / "ledger.db"
    fill_ledger(path, 20)
    sub = Subscriber(broker.port, f"{BASE}/events").start()
    backend = BackEnd(broker.port)
    backend.receipt({"stored_through_seq": 10})  # the back end has stored 1..10 only
    uplink = make_uplink(path, broker.port, timeout_s=1.0)
    uplink.start()
    try:
        wait_until(lambda: depth(path) == 0, timeout=20, what="all 20 delivered")
        wait_until(lambda: receipts_in(path) == [10], timeout=10, what="receipt 10 recorded")
        health = uplink.health()
        assert (health["stored_through_seq"], health["unconfirmed"]) == (10, 10)
        assert health["oldest_unconfirmed_age_s"] > 0
        # Unconfirmed 11..20 come again, and again while no receipt covers them.
        wait_until(lambda: Counter(arrivals(sub))[11] >= 3, timeout=30, what="two rounds of resends")
        seen = arrivals(sub)
        counts = Counter(seen)
        assert all(counts[seq] == 1 for seq in range(1, 11)), "confirmed events are never sent again"
        assert all(counts[seq] >= 2 for seq in range(11, 21))
        first_round = seen[20:30]
        assert first_round == list(range(11, 21)), "oldest first"

        backend.receipt({"stored_through_seq": 20})
        wait_until(lambda: uplink.health()["unconfirmed"] == 0, timeout=10, what="receipt 20 taken")
        wait_until(lambda: receipts_in(path) == [10, 20], timeout=10, what="receipt 20 recorded")
        assert uplink.health()["oldest_unconfirmed_age_s"] is None
        resent = uplink.receipts.resent
        after = len(arrivals(sub))
        time.sleep(3.5)  # past three timeouts: nothing more may come
        assert len(arrivals(sub)) == after and uplink.receipts.resent == resent
    finally:
        uplink.stop()
        backend.stop()
        sub.stop()
    conn = connect(path)
    assert verify(conn).ok
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM receipts")


def test_bad_receipts_are_logged_and_ignored(tmp_path, broker, caplog):
    path = tmp_path / "ledger.db"
    fill_ledger(path, 5)
    backend = BackEnd(broker.port)
    uplink = make_uplink(path, broker.port, timeout_s=60)
    caplog.set_level(logging.WARNING, logger="agent.sinks.uplink.receipts")
    uplink.start()
    try:
        wait_until(lambda: depth(path) == 0, timeout=20, what="delivered")
        backend.receipt({"stored_through_seq": 3})
        wait_until(lambda: receipts_in(path) == [3], timeout=10, what="receipt 3 recorded")
        for bad in (
            b"{not json",
            b"[3]",
            {"stored_through_seq": "4"},
            {"stored_through_seq": -1},
            {"stored_through_seq": True},
            b"\xff\xfe",
            b"x" * 5000,
        ):
            backend.receipt(bad, retain=False)
        backend.receipt({"stored_through_seq": 99}, retain=False)  # never produced here (last seq 5)
        backend.receipt({"stored_through_seq": 2}, retain=False)  # backwards
        backend.receipt({"stored_through_seq": 3}, retain=False)  # the same again: not an error
        wait_until(lambda: uplink.receipts.ignored == 9, timeout=10, what="nine ignored")
        health = uplink.health()
        assert (health["stored_through_seq"], health["unconfirmed"], health["receipts_ignored"]) == (3, 2, 9)
        text = caplog.text
        assert 'not {"stored_through_seq": N}' in text
        assert "seq 99 was never produced here (last seq 5)" in text
        assert "seq 2 goes backwards (stored through 3)" in text
        backend.receipt({"stored_through_seq": 5})  # and a good one still counts
        wait_until(lambda: uplink.health()["unconfirmed"] == 0, timeout=10, what="receipt 5 taken")
    finally:
        uplink.stop()
        backend.stop()
    assert receipts_in(path) == [3, 5]


def test_receipts_off_is_todays_behaviour(tmp_path, broker):
    path = tmp_path / "ledger.db"
    fill_ledger(path, 5)
    sub = Subscriber(broker.port, f"{BASE}/events").start()
    backend = BackEnd(broker.port)
    backend.receipt({"stored_through_seq": 2})
    uplink = make_uplink(path, broker.port, receipts=False, timeout_s=1.0)
    uplink.start()
    try:
        wait_until(lambda: depth(path) == 0, timeout=20, what="delivered")
        time.sleep(2.5)  # past two timeouts
        assert uplink.receipts is None
        assert sorted(arrivals(sub)) == [1, 2, 3, 4, 5], "nothing sent again"
        assert "unconfirmed" not in uplink.health()
    finally:
        uplink.stop()
        backend.stop()
        sub.stop()
    assert receipts_in(path) == []
    log = broker.log.read_text(errors="replace")
    assert f"{BASE}/cmd/#" in log and f"{BASE}/receipt (QoS" not in log, "no subscription to receipts"


def test_receipts_on_subscribes(tmp_path, broker):
    path = tmp_path / "ledger.db"
    uplink = make_uplink(path, broker.port)
    Ledger.open(path, device_id="kiosk-1", site_id="site-1").close()
    uplink.start()
    try:
        wait_until(lambda: uplink.connected, timeout=10, what="connected")
    finally:
        uplink.stop()
    assert f"{BASE}/receipt (QoS 1)" in broker.log.read_text(errors="replace")


def write_config(path, ledger, port, *, receipts=True, timeout_s=1):
    mqtt = f"receipts = {'true' if receipts else 'false'}\nreceipt_timeout_s = {timeout_s}"
    return agent_config(path, ledger, port, mqtt=mqtt)


def test_receipts_survive_a_restart_of_the_agent(tmp_path, broker):
    ledger = tmp_path / "ledger.db"
    fill_ledger(ledger, 10)
    config = write_config(tmp_path / "agent.toml", ledger, broker.port, timeout_s=1)
    sub = Subscriber(broker.port, f"{BASE}/events").start()
    backend = BackEnd(broker.port)
    agent = start_agent("run", "--config", str(config))
    try:
        wait_until(lambda: depth(ledger) == 0, timeout=20, what="delivered")
        backend.receipt({"stored_through_seq": 6}, retain=False)  # live, so only the ledger keeps it
        wait_until(lambda: receipts_in(ledger) == [6], timeout=10, what="receipt 6 recorded")
        agent.stdin.close()
        assert agent.wait(20) == 0
    finally:
        agent.kill()
    before = len(arrivals(sub))

    agent = start_agent("run", "--config", str(config))
    commander = Commander(broker.port, BASE).start()
    try:
        health = commander.send("health", {}, timeout=20)["result"]
        assert (health["stored_through_seq"], health["unconfirmed"]) == (6, 4)
        wait_until(lambda: Counter(arrivals(sub)[before:])[10] >= 1, timeout=20, what="7..10 sent again")
        again = arrivals(sub)[before:]
        assert min(again) == 7 and again[:4] == [7, 8, 9, 10], "only the unconfirmed, oldest first"
        backend.receipt({"stored_through_seq": 10})
        wait_until(lambda: receipts_in(ledger) == [6, 10], timeout=10, what="receipt 10 recorded")
        agent.stdin.close()
        assert agent.wait(20) == 0
    finally:
        agent.kill()
        commander.stop()
        backend.stop()
        sub.stop()


def test_a_schema_3_ledger_migrates_and_goes_on_with_receipts(tmp_path, broker):
    path = tmp_path / "ledger.db"
    shutil.copy(V3, path)
    conn = sqlite3.connect(path)
    scans_before = conn.execute("SELECT * FROM scans ORDER BY id").fetchall()
    last_seq = conn.execute("SELECT MAX(seq) FROM scans").fetchone()[0]
    conn.close()
    Ledger.open(path, device_id="kiosk-0001", site_id="site-01").close()  # the agent's start migrates
    base = "trace/v1/site-01/kiosk-0001"
    backend = BackEnd(broker.port, base)
    uplink = make_uplink(path, broker.port, device_id="kiosk-0001", site_id="site-01", timeout_s=60)
    uplink.start()
    try:
        wait_until(lambda: depth(path) == 0, timeout=20, what="the old events delivered")
        backend.receipt({"stored_through_seq": last_seq})
        wait_until(lambda: receipts_in(path) == [last_seq], timeout=10, what="receipt recorded")
        assert uplink.health()["unconfirmed"] == 0
    finally:
        uplink.stop()
        backend.stop()
    conn = connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION >= 6
    assert [tuple(r)[: len(scans_before[0])] for r in conn.execute("SELECT * FROM scans ORDER BY id")] == scans_before
    assert verify(conn).ok


def test_backlog_state_and_doctor_cover_unconfirmed_events(tmp_path):
    path = tmp_path / "ledger.db"
    fill_ledger(path, 4)
    outbox = Outbox.open(path)
    outbox.mark_delivered([1, 2, 3, 4])
    receipts = Receipts(60.0, device_id="kiosk-1")
    states: list[tuple[str, bool]] = []
    health = Health(
        Counters(),
        device_id="kiosk-1",
        site_id="site-1",
        connected=lambda: True,
        on_state=lambda name, on: states.append((name, on)),
        backlog_alert_s=0.0,
        receipts=receipts,
    )
    time.sleep(0.01)
    try:
        receipts.load(outbox)
        health.report_states(outbox)
        assert states[-1] == ("backlog", True), "delivered but unconfirmed is a backlog"
        report = health.report(outbox)
        assert (report["unconfirmed"], report["stored_through_seq"]) == (4, 0)

        cfg = parse_toml(
            f'[station]\ndevice_id = "kiosk-1"\n[ledger]\npath = "{path}"\n'
            "[feedback]\nbacklog_alert_s = 1\n[mqtt]\nenabled = true\nreceipts = true\n"
        )
        check = doctor.check_delivery(cfg)
        assert check.status == "ok" and "0 undelivered; 4 unconfirmed" in check.detail
        aged = doctor.check_delivery(replace(cfg, feedback=replace(cfg.feedback, backlog_alert_s=0.0)))
        assert aged.status == "warn" and "older than 0 s" in aged.detail and "receipts" in aged.fix

        outbox.record_receipt(4, "mqtt")
        receipts.load(outbox)
        health.report_states(outbox)
        assert states[-1] == ("backlog", False)
        assert "0 unconfirmed; stored through seq 4" in doctor.check_delivery(cfg).detail
    finally:
        outbox.close()


# -- the headline scenario, small: a broker without persistence, SIGKILLed and restarted empty


class Collector:
    """Plays the collector: stores events by event_id and, after each, publishes the
    highest contiguous seq stored as the retained receipt."""

    def __init__(self, port: int) -> None:
        self.stored: dict[str, int] = {}  # event_id -> seq
        self.arrivals = 0
        self._seqs: set[int] = set()
        self.through = 0
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="collector", clean_session=False)
        self.client.reconnect_delay_set(0.1, 1)
        self.client.on_connect = lambda client, *a: client.subscribe(f"{BASE}/events", qos=1)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client, userdata, message) -> None:
        event = json.loads(message.payload)
        self.arrivals += 1
        self.stored[event["event_id"]] = event["seq"]
        self._seqs.add(event["seq"])
        while self.through + 1 in self._seqs:
            self.through += 1
        if self.through:
            client.publish(f"{BASE}/receipt", json.dumps({"stored_through_seq": self.through}), qos=1, retain=True)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def broker_without_persistence(tmp_path) -> Mosquitto:
    broker = Mosquitto(tmp_path)
    broker.conf.write_text(broker.conf.read_text().replace("persistence true", "persistence false"))
    return broker


def scans_through_broker_kills(tmp_path, *, receipts: bool, cycles: int = 5, per_cycle: int = 40) -> dict:
    """Scans arrive while the broker is SIGKILLed and restarted empty ``cycles`` times.
    Returns what the collector got of the ledger's events."""
    broker = broker_without_persistence(tmp_path)
    broker.start()
    ledger = tmp_path / "ledger.db"
    config = write_config(tmp_path / "agent.toml", ledger, broker.port, receipts=receipts, timeout_s=2)
    collector = Collector(broker.port)
    agent = start_agent("run", "--config", str(config), "--json")
    printed: list[bytes] = []
    reader = threading.Thread(target=lambda: printed.extend(agent.stdout), daemon=True)
    reader.start()
    threading.Thread(target=lambda: agent.stderr.read(), daemon=True).start()
    n = 0
    try:
        for _ in range(cycles):
            for _ in range(per_cycle):
                agent.stdin.write(code(n) + b"\n")
                agent.stdin.flush()
                n += 1
                time.sleep(0.01)
            broker.kill()
            time.sleep(0.3)
            broker.start()
        for _ in range(per_cycle):
            agent.stdin.write(code(n) + b"\n")
            agent.stdin.flush()
            n += 1
        wait_until(lambda: events_in(ledger) == n and depth(ledger) == 0, timeout=60, what="all recorded and delivered")
        expected = set(event_ids_in(ledger))
        if receipts:
            wait_until(lambda: expected <= set(collector.stored), timeout=90, what="every event at the collector")
        else:
            time.sleep(3)
        agent.stdin.close()
        assert agent.wait(20) == 0
    finally:
        agent.kill()
        collector.stop()
        broker.stop()
    reader.join(5)
    accepted = [json.loads(line)["verdict"] for line in printed].count("accepted")
    seqs = sorted(collector.stored.values())
    result = {
        "scans": n,
        "accepted": accepted,
        "events": len(expected),
        "lost": len(expected - set(collector.stored)),
        "duplicates": collector.arrivals - len(collector.stored),
        "contiguous": seqs == list(range(1, len(seqs) + 1)),
    }
    print(f"receipts={'on' if receipts else 'off'}, {cycles} broker kills: {result}")
    return result


def events_in(path) -> int:
    return len(event_ids_in(path))


def event_ids_in(path) -> list[str]:
    conn = connect(path)
    try:
        return [r[0] for r in conn.execute("SELECT event_id FROM scans WHERE seq IS NOT NULL")]
    finally:
        conn.close()


def test_every_accepted_scan_reaches_the_collector_through_broker_kills_with_receipts(tmp_path):
    result = scans_through_broker_kills(tmp_path, receipts=True)
    assert result["accepted"] == result["scans"] == result["events"]
    assert result["lost"] == 0 and result["contiguous"]


def test_without_receipts_the_same_run_may_lose_events(tmp_path):
    result = scans_through_broker_kills(tmp_path, receipts=False)
    assert result["accepted"] == result["scans"] == result["events"]  # lost or not, only printed


def test_the_round_after_a_covered_one_is_due_for_a_caller_that_reads_its_clock_first(tmp_path):
    """The uplink asks ``time.monotonic() >= receipts.next_due()``: once a receipt covers a
    round, the next must be due at once by that test (it never was while next_due read the
    clock itself after the caller had, and an idle kiosk's unconfirmed tail stayed unsent)."""
    from types import SimpleNamespace

    from agent import codes
    from agent.read import Read

    path = tmp_path / "ledger.db"
    ledger = Ledger.open(path, device_id="k", site_id="s")
    for n in range(3):
        read = Read(b"8123456789012345678%d" % n, "stdin", "stdin")
        ledger.decide_and_record(read, "dispense", codes.parse(read.raw))
    outbox = Outbox.open(path)
    receipts = Receipts(0.05, device_id="k")
    receipts.load(outbox)
    outbox.mark_delivered([1, 2, 3])
    receipts.connected()
    time.sleep(0.06)
    assert time.monotonic() >= receipts.next_due()
    assert [row["seq"] for row in receipts.due(outbox)] == [1, 2, 3]
    receipts.received(SimpleNamespace(payload=b'{"stored_through_seq": 1}'))
    receipts.settle(outbox)  # covers part of the round: no go-on yet
    receipts.received(SimpleNamespace(payload=b'{"stored_through_seq": 3}'))
    receipts.settle(outbox)  # covers the round: the next may start at once
    assert time.monotonic() >= receipts.next_due()
    assert receipts.due(outbox) == []  # nothing left unconfirmed; the go-on is spent
    assert time.monotonic() < receipts.next_due()  # back to waiting receipt_timeout_s
    outbox.close()
    ledger.close()
