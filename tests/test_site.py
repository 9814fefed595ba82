"""Site-wide duplicates with real parts: real agents (``scan-agent run``) on a real mosquitto,
and the test's TCP proxy to cut one off."""

import json
import threading
import time

import pytest

from agent import codes
from agent.events import encode, event_from_row
from agent.ledger import Ledger, connect, peers, verify
from agent.read import Read
from tests.support.agent import agent_config, start_agent
from tests.support.backlog import code
from tests.support.mosquitto import Mosquitto
from tests.support.mqtt import Commander, Subscriber
from tests.support.net import wait_until
from tests.support.proxy import FaultyProxy

SITE = "trace/v1/site-1"


class Station:
    """One ``scan-agent run --json``: codes in on stdin, decisions out on stdout."""

    def __init__(self, tmp_path, name: str, port: int, *, lock_on: str = '"duplicate"'):
        self.name = name
        self.ledger = tmp_path / f"{name}.db"
        self.config = tmp_path / f"{name}.toml"
        tables = f'[codes]\nlifecycle = "off"\n\n[documents]\nlock_on = [{lock_on}]'
        agent_config(self.config, self.ledger, port, device=name, mqtt="keepalive_s = 5", tables=tables)
        self.decisions: list[dict] = []
        self.proc = None

    def start(self) -> "Station":
        self.proc = start_agent("run", "--config", str(self.config), "--json")
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.strip().startswith(b"{"):
                self.decisions.append(json.loads(line))

    def scan(self, *texts: bytes) -> None:
        self.proc.stdin.write(b"".join(t + b"\n" for t in texts))
        self.proc.stdin.flush()

    def decide(self, text: bytes, timeout: float = 20) -> dict:
        """Scan ``text`` and return its decision."""
        before = len(self.decisions)
        self.scan(text)
        return wait_until(
            lambda: next((d for d in self.decisions[before:] if d["code"] == text.decode()), None),
            timeout=timeout,
            what=f"{self.name} decides {text.decode()}",
        )

    def query(self, sql: str, *args) -> list:
        conn = connect(self.ledger)
        try:
            return [tuple(r) for r in conn.execute(sql, args)]
        finally:
            conn.close()

    def peer_events(self) -> int:
        return self.query("SELECT COUNT(*) FROM peer_events")[0][0] if self.ledger.exists() else 0

    def alarms(self, kind: str = "conflict") -> list[dict]:
        rows = self.query("SELECT record FROM alarms WHERE kind = ?", kind)
        return [json.loads(r[0]) for r in rows]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(20)
            except Exception:
                self.proc.kill()
                self.proc.wait()


def online(port: int, *names: str) -> None:
    """Wait until each station said ``online``: it subscribed (to the site's events too) before."""
    sub = Subscriber(port, f"{SITE}/+/status", persistent=False).start()
    try:
        for name in names:
            wait_until(
                lambda name=name: any(m.payload == b"online" for m in sub.on(f"/{name}/status")),
                timeout=30,
                what=f"{name} online",
            )
    finally:
        sub.stop()


@pytest.fixture
def stations(tmp_path, broker):
    made: list[Station] = []

    def make(name: str, port: int | None = None, **kw) -> Station:
        s = Station(tmp_path, name, port or broker.port, **kw).start()
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()


def test_a_code_dispensed_at_one_station_is_a_duplicate_at_the_others_naming_it(broker, stations):
    a, b, c = stations("kiosk-a"), stations("kiosk-b"), stations("kiosk-c")
    online(broker.port, "kiosk-a", "kiosk-b", "kiosk-c")
    first = a.decide(code(1))
    assert first["verdict"] == "accepted"
    wait_until(lambda: b.peer_events() >= 1 and c.peer_events() >= 1, timeout=20, what="a's sale heard")
    for station in (b, c):
        again = station.decide(code(1))
        assert (again["verdict"], again["reason"]) == ("duplicate", "already_dispensed")
        assert again["earlier"]["device_id"] == "kiosk-a"
        assert again["earlier"]["event_id"] == first["event_id"]
        assert again["earlier"]["ts"] == first["ts"]
    # The other way round: b sells, a refuses naming b; a code nobody sold is accepted everywhere.
    sold_at_b = b.decide(code(2))
    wait_until(lambda: a.peer_events() >= 1, timeout=20, what="b's sale heard")
    assert a.decide(code(2))["earlier"]["event_id"] == sold_at_b["event_id"]
    assert c.decide(code(3))["verdict"] == "accepted"
    for station in (a, b, c):
        station.stop()
        assert station.alarms() == []  # a duplicate refused is no conflict
        conn = connect(station.ledger)
        try:
            assert verify(conn).ok
        finally:
            conn.close()


def test_a_partitioned_station_and_another_accept_the_same_code_both_raise_a_conflict(tmp_path, broker, stations):
    proxy = FaultyProxy(broker.port).start()
    alarms = Subscriber(broker.port, f"{SITE}/+/alarms").start()
    try:
        a = stations("kiosk-a", proxy.port, lock_on='"conflict"')
        b = stations("kiosk-b")
        online(broker.port, "kiosk-a", "kiosk-b")
        proxy.drop()  # a is cut off from the broker
        mine, theirs = a.decide(code(7)), b.decide(code(7))
        assert mine["verdict"] == theirs["verdict"] == "accepted"  # each decides on what it knows
        assert a.alarms() == b.alarms() == []
        healed = time.monotonic()
        proxy.set("pass")
        wait_until(lambda: a.alarms() and b.alarms(), timeout=60, what="a conflict raised on both")
        print(f"\nconflict raised on both {time.monotonic() - healed:.2f} s after the link healed")
        (at_a,), (at_b,) = a.alarms(), b.alarms()
        assert (at_a["local"]["event_id"], at_a["peer"]["event_id"]) == (mine["event_id"], theirs["event_id"])
        assert (at_b["local"]["event_id"], at_b["peer"]["event_id"]) == (theirs["event_id"], mine["event_id"])
        published = wait_until(lambda: len(alarms.on("/alarms")) >= 2 and alarms.on("/alarms"), timeout=20)
        bodies = {m.topic.split("/")[-2]: json.loads(m.payload) for m in published}
        assert bodies["kiosk-a"]["kind"] == "conflict" and bodies["kiosk-a"]["peer"]["device_id"] == "kiosk-b"
        assert bodies["kiosk-b"]["local"]["event_id"] == theirs["event_id"]
        # a has conflict in lock_on: it is locked, on its pipeline thread, until acknowledged; b is not.
        wait_until(lambda: a.query("SELECT reason FROM scans WHERE verdict = 'locked'") == [("conflict",)])
        assert a.decide(code(8))["reason"] == "station_locked"
        assert b.decide(code(8))["verdict"] == "accepted"
        health = Commander(broker.port, f"{SITE}/kiosk-b").start()
        try:
            report = health.send("health", {})["result"]
        finally:
            health.stop()
        assert report["peers"]["conflicts"] == 1
        assert [x["kind"] for x in report["alarms"]] == ["conflict"]
    finally:
        alarms.stop()
        proxy.stop()


def health_of(port: int, name: str) -> dict:
    commander = Commander(port, f"{SITE}/{name}").start()
    try:
        return commander.send("health", {}, timeout=20)["result"]
    finally:
        commander.stop()


def test_a_station_whose_session_was_lost_asks_the_peer_again_and_refuses_the_duplicate(tmp_path, stations):
    """a is cut off while b sells a code; the broker then dies and comes back empty, so the
    sale queued for a's session is gone. a catches up by ``cmd/resend`` to b, and refuses it."""
    broker = Mosquitto(tmp_path / "empty", persistence=False)
    broker.start()
    proxy = FaultyProxy(broker.port).start()
    try:
        a, b = stations("kiosk-a", proxy.port), stations("kiosk-b", broker.port)
        online(broker.port, "kiosk-a", "kiosk-b")
        assert b.decide(code(1))["verdict"] == "accepted"
        wait_until(lambda: a.peer_events() == 1, timeout=20, what="b's first sale heard at a")
        proxy.drop()
        sold = b.decide(code(2))
        assert (sold["verdict"], sold["seq"]) == ("accepted", 2)
        wait_until(lambda: b.query("SELECT COUNT(*) FROM deliveries")[0][0] >= 2, what="b's sale at the broker")
        broker.kill()  # the sale waited in a's session there: now it is nowhere but at b
        broker.start()
        proxy.set("pass")
        caught = time.monotonic()
        wait_until(lambda: a.peer_events() == 2, timeout=30, what="b's second sale caught up at a")
        print(f"\ncaught up {time.monotonic() - caught:.2f} s after the link healed")
        again = a.decide(code(2))
        assert (again["verdict"], again["reason"]) == ("duplicate", "already_dispensed")
        assert (again["earlier"]["device_id"], again["earlier"]["event_id"]) == ("kiosk-b", sold["event_id"])
        catch_up = health_of(broker.port, "kiosk-a")["peers"]["catch_up"]
        assert catch_up["probes"] >= 1 and catch_up["asked"] >= 1 and catch_up["gaps_open"] == 0
        # How far b was heard is on disk, for the next start: that start asks only for what is new.
        wait_until(lambda: a.query("SELECT device_id, through_seq FROM peer_floors") == [("kiosk-b", 2)])
        assert a.alarms() == [] and b.alarms() == []
    finally:
        proxy.stop()
        broker.stop()


def test_an_alarm_whose_publish_a_crash_lost_is_published_at_the_next_start_and_only_once(tmp_path, broker):
    """The conflict is in the ledger (raised in the transaction that stored the peer's row)
    but the station died before publishing it: the next start publishes it, records the
    broker's PUBACK, and the start after that sends nothing again."""
    ledger = Ledger.open(tmp_path / "kiosk-a.db", device_id="kiosk-a", site_id="site-1", lifecycle="off")
    read = Read(code(9), "stdin", "stdin")
    mine = ledger.decide_and_record(read, "dispense", codes.parse(read.raw))
    theirs = {
        "event_id": "kiosk-b-0001",
        "device_id": "kiosk-b",
        "site_id": "site-1",
        "seq": 1,
        "ts": "2026-11-30T07:00:00.000Z",
        "movement": "dispense",
        "verdict": "accepted",
        "code": code(9).decode(),
        "product_id": mine.parsed.product_id,
        "hash": "ab" * 32,
    }
    _, (conflict,) = peers.store(ledger.conn, [theirs], device_id="kiosk-a", received_ts="2026-11-30T07:00:01.000Z")
    ledger.close()
    alarms = Subscriber(broker.port, f"{SITE}/+/alarms", persistent=False).start()
    station = Station(tmp_path, "kiosk-a", broker.port)
    try:
        station.start()
        (message,) = wait_until(lambda: alarms.on("/alarms"), timeout=30, what="the alarm published")
        body = json.loads(message.payload)
        assert message.topic == f"{SITE}/kiosk-a/alarms"
        assert (body["schema"], body["kind"], body["alarm_id"]) == ("alarm/1", "conflict", conflict.alarm_id)
        assert (body["local"]["event_id"], body["peer"]["event_id"]) == (mine.event_id, "kiosk-b-0001")
        assert body["code"] == code(9).decode() and body["detail"] == conflict.detail()
        wait_until(lambda: station.query("SELECT alarm_id FROM alarm_deliveries") == [(conflict.alarm_id,)])
        station.stop()
        station.start()
        online(broker.port, "kiosk-a")
        time.sleep(3)  # a round of the alarm sender runs at connect: it finds nothing to send
        assert len(alarms.on("/alarms")) == 1
    finally:
        station.stop()
        alarms.stop()


def test_bad_peer_events_are_logged_counted_and_ignored(tmp_path, broker, stations):
    a = stations("kiosk-a")
    online(broker.port, "kiosk-a")
    # A real event of another station's ledger, and spoiled copies of it.
    other = Ledger.open(tmp_path / "x.db", device_id="kiosk-x", site_id="site-1")
    read = Read(code(5), "stdin", "stdin")
    other.decide_and_record(read, "dispense", codes.parse(read.raw))
    good = event_from_row(other.conn.execute("SELECT * FROM scans").fetchone())
    other.close()
    pub = Commander(broker.port, f"{SITE}/kiosk-x").start()
    try:
        topic = f"{SITE}/kiosk-x/events"
        for payload in (
            b"{not json",
            encode({**good, "code": "81111111111111111111"}),  # altered: the hash does not match
            encode({**good, "site_id": "site-2"}),  # another site's
            b'{"schema": "scan-event/1"}',
        ):
            pub.client.publish(topic, payload, qos=1)
        pub.client.publish(f"{SITE}/kiosk-y/events", encode(good), qos=1)  # kiosk-x's event under kiosk-y
        pub.client.publish(topic, encode(good), qos=1)
        wait_until(lambda: a.peer_events() == 1, timeout=20, what="the good event stored")
        health = Commander(broker.port, f"{SITE}/kiosk-a").start()
        try:
            peers = wait_until(
                lambda: (p := health.send("health", {})["result"]["peers"])["ignored"] >= 5 and p, timeout=20
            )
        finally:
            health.stop()
    finally:
        pub.stop()
    assert peers["ignored_by_kind"] == {"malformed": 2, "bad_hash": 1, "other_site": 1, "other_device": 1}
    assert a.query("SELECT device_id, code FROM peer_events") == [("kiosk-x", code(5).decode())]
    d = a.decide(code(5))
    assert (d["verdict"], d["earlier"]["device_id"]) == ("duplicate", "kiosk-x")


@pytest.mark.slow
def test_ten_thousand_distinct_codes_across_three_stations_no_false_duplicate_or_conflict(broker, stations):
    trio = [stations(f"kiosk-{n}") for n in "abc"]
    online(broker.port, *(s.name for s in trio))
    total = 10_000
    started = time.monotonic()
    for i, station in enumerate(trio):
        station.scan(*(code(n) for n in range(i, total, 3)))
    wait_until(lambda: sum(len(s.decisions) for s in trio) >= total, timeout=300, what="every code decided")
    decided = time.monotonic() - started
    wait_until(lambda: all(s.peer_events() == total - len(s.decisions) for s in trio), timeout=300)
    print(
        f"\n{total} codes decided in {decided:.1f} s; every peer event stored after {time.monotonic() - started:.1f} s"
    )
    verdicts = {d["verdict"] for s in trio for d in s.decisions}
    assert verdicts == {"accepted"}
    assert all(s.alarms() == [] for s in trio)
