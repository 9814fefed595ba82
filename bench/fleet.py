"""A fleet of kiosks on one broker: events/s, scan → subscriber latency, lost, cost per kiosk.

    .venv/bin/python -m bench.fleet [--kiosks 200] [--procs 4] [--broker mosquitto|nats|both]
                                    [--seconds 60] [--site-size 5] [--dock 5]

Each simulated kiosk is what a kiosk runs between its scanner and the broker: a real
:class:`agent.ledger.Ledger` (its own SQLite file under ``bench/out/fleet/``, WAL,
``synchronous=FULL``, its checkpointer thread), the real :class:`agent.pipeline.Pipeline`
(the one writer) with the real :class:`agent.sinks.uplink.Uplink` as its sink, built as
:func:`agent.wiring.make_uplink` builds it (``[site] peers`` on: its own MQTT client,
subscribed to its site's events, storing them in ``peer_events``). A whole
:class:`agent.runner.Runner` per kiosk is not used: it adds a source thread, feedback,
the watchdog, the control socket and config loading, none of which touch the broker,
and its stdin source would need a pipe per kiosk; the reads go to ``Pipeline.submit``
as a source would put them. That is 6 threads and 4 SQLite connections per kiosk.

Kiosks run ``--procs`` worker processes (``python -m bench.fleet --worker``), several
kiosks each, grouped into sites of ``--site-size`` stations (each station's events go to
every other station of its site). The main process starts the broker, a QoS 1
subscriber on ``trace/v1/+/+/events`` (persistent session; on a node that is not
killed) that timestamps each arrival, and the workers; then:

- **counters**: every kiosk but the dock ones scans one code (dispense) every
  ``--interval`` s (2 s), at a random phase, for ``--seconds``;
- **dock burst**: ``--dock`` kiosks (the first station of the first sites) receive
  ``--dock-codes`` codes (600) in ``--dock-seconds`` (30 s), from a third of the way in.

Brokers: (a) one mosquitto; (b) a three-node NATS cluster (JetStream, MQTT 3.1.1; the
kiosks' ``[mqtt] hosts`` are the three nodes, each kiosk starting on a different one),
node 0 SIGKILLed ``--kill-at`` of the way into the run.

Printed: offered and delivered events/s; scan (``Pipeline.submit``) → subscriber arrival
latency p50/p99/max, for counters and dock; lost (every kiosk's ledger events with a seq
that the subscriber never got, deduplicated by ``event_id``, after it asked each kiosk
``cmd/resend`` for the seqs it missed, as a back end does (``--no-resend``: no asks); must
be 0); duplicates;
peer rows stored against expected; per-kiosk RSS (worker RSS / kiosks) and CPU (worker
utime+stime from ``/proc`` over the feed window / kiosks); broker CPU from
``/proc/<pid>/stat`` of each broker process over the same window. The machine's load
average is printed before and after: the workers, broker and subscriber share its cores.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as mqtt  # noqa: E402

from bench.machine import header  # noqa: E402

OUT = ROOT / "bench" / "out" / "fleet"
PREFIX = "trace/v1"
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def code(kiosk: int, n: int, dock: bool = False) -> bytes:
    """A code no other kiosk scans: 8, dock flag, kiosk, count (20 digits)."""
    return b"8%d%05d%013d" % (1 if dock else 0, kiosk, n)


# -- /proc -----------------------------------------------------------------------------


def cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads), seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_mb(pid: int) -> float:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE / 1e6


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# -- a worker: several kiosks in one process ---------------------------------------------


class Kiosk:
    """A ledger, its pipeline, and the uplink as the pipeline's sink (peers on)."""

    def __init__(self, spec: dict, out: Path) -> None:
        from agent.config import MqttConfig
        from agent.ledger import Ledger
        from agent.pipeline import Pipeline
        from agent.sinks.uplink import Uplink

        self.spec = spec
        self.device = spec["device"]
        self.path = out / f"{self.device}.db"
        hosts = tuple((h, p) for h, p in spec["hosts"])
        config = MqttConfig(
            enabled=True,
            protocol=spec["protocol"],
            hosts=hosts,
            host=hosts[0][0],
            port=hosts[0][1],
            keepalive_s=10,
            backoff_max_s=2,
            health_interval_s=3600,
        )
        self.ledger = Ledger.open(self.path, device_id=self.device, site_id=spec["site"])
        self.pipeline = Pipeline(self.ledger)
        self.uplink = Uplink(config, db_path=self.path, device_id=self.device, site_id=spec["site"], peers=True)
        self.pipeline.sinks.append(self.uplink)

    def start(self) -> None:
        self.pipeline.start()
        self.uplink.start()

    def depth(self) -> int:
        from agent.ledger.outbox import Outbox

        outbox = Outbox.open(self.path)
        try:
            return outbox.depth()
        finally:
            outbox.close()

    def events(self) -> list[list]:
        from agent.ledger import connect

        conn = connect(self.path)
        try:
            rows = conn.execute("SELECT event_id, seq, code FROM scans WHERE seq IS NOT NULL ORDER BY seq")
            return [list(r) for r in rows]
        finally:
            conn.close()

    def peer_rows(self) -> int:
        from agent.ledger import connect

        conn = connect(self.path)
        try:
            return conn.execute("SELECT COUNT(*) FROM peer_events").fetchone()[0]
        finally:
            conn.close()

    def stop(self) -> None:
        self.pipeline.stop(10)
        self.uplink.stop(grace_s=0.5)
        self.ledger.close()


def schedule(specs: list[dict], args: dict) -> list[tuple[float, int, bytes, str]]:
    """(seconds after go, kiosk index in this worker, code, movement), in time order."""
    rng = random.Random(args["seed"])
    plan = []
    for i, spec in enumerate(specs):
        k = spec["index"]
        if spec["dock"]:
            start, span, n = args["dock_start"], args["dock_seconds"], args["dock_codes"]
            plan += [(start + span * j / n, i, code(k, j, dock=True), "receive") for j in range(n)]
        else:
            t, j = rng.uniform(0, args["interval"]), 0
            while t < args["seconds"]:
                plan.append((t, i, code(k, j), "dispense"))
                t, j = t + args["interval"], j + 1
    plan.sort()
    return plan


def worker(spec_file: Path) -> None:
    """Run the kiosks of ``spec_file``; talk to the main process on stdin/stdout."""
    from agent.read import Read

    spec = json.loads(spec_file.read_text())
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(threadName)s %(name)s: %(message)s")
    out = Path(spec["out"])
    if not spec["args"].get("catch_up", True):  # the before of the peer catch-up: it tracks, never asks
        from agent.sinks.uplink.catchup import CatchUp

        CatchUp.due = lambda self, now: []
        CatchUp.next_due = lambda self: None
    kiosks = [Kiosk(k, out) for k in spec["kiosks"]]
    for kiosk in kiosks:
        kiosk.start()
    deadline = time.monotonic() + 300
    while not all(k.uplink.connected for k in kiosks) and time.monotonic() < deadline:
        time.sleep(0.1)
    print(f"ready {sum(k.uplink.connected for k in kiosks)}", flush=True)

    go = float(sys.stdin.readline().split()[1])
    plan = schedule(spec["kiosks"], spec["args"])
    submitted: dict[str, float] = {}
    late = []
    for at, i, raw, movement in plan:
        wait = go + at - time.time()
        if wait > 0:
            time.sleep(wait)
        else:
            late.append(-wait)
        now = time.time()
        mono = time.monotonic()
        submitted[raw.decode()] = now
        kiosks[i].pipeline.submit(Read(raw, "stdin", "fleet", t_first=mono, t_last=mono, movement=movement))
    print("fed", flush=True)

    deadline = time.monotonic() + spec["args"]["drain_s"]
    while time.monotonic() < deadline and any(not k.pipeline.queue.empty() for k in kiosks):
        time.sleep(0.1)
    left = sum(k.depth() for k in kiosks)
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = sum(k.depth() for k in kiosks)
    time.sleep(spec["args"].get("settle_s", 2))  # the last peer events (and catch-up asks) reach their stations
    result = {
        "outbox_left": left,
        "late_feeds": len([x for x in late if x > 0.1]),
        "late_max_s": max(late, default=0.0),
        "submitted": submitted,
        "kiosks": [
            {
                "device": k.device,
                "events": k.events(),
                "peer_rows": k.peer_rows(),
                "published": k.uplink.published,
                "delivered": k.uplink.delivered,
                "failures": k.uplink.failures,
                "connection_errors": k.uplink.connection_errors,
                "broker": k.uplink.counters.broker,
                "verdicts": dict(k.uplink.verdicts),
            }
            for k in kiosks
        ],
    }
    (out / f"worker-{spec['worker']}.json").write_text(json.dumps(result))
    print("done", flush=True)
    sys.stdin.readline()  # "stop"
    threads = [threading.Thread(target=k.stop) for k in kiosks]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    print("stopped", flush=True)


# -- the main process ------------------------------------------------------------------


class Arrivals:
    """A QoS 1 subscriber (MQTT 3.1.1, persistent session) timestamping each event's arrival."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.got: list[tuple[float, bytes]] = []
        self.subscribed = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"fleet-audit-{uuid.uuid4().hex[:6]}",
            protocol=mqtt.MQTTv311,
            clean_session=False,
        )
        self.client.reconnect_delay_set(0.1, 1)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{PREFIX}/+/+/events", qos=1)
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = lambda c, u, m: self.got.append((time.time(), m.payload))

    def start(self) -> None:
        self.client.connect("127.0.0.1", self.port, keepalive=10)
        self.client.loop_start()
        if not self.subscribed.wait(30):
            raise TimeoutError("the subscriber got no SUBACK")

    def event_ids(self) -> set[str]:
        return {json.loads(payload)["event_id"] for _, payload in list(self.got)}

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Brokers:
    """mosquitto, or a three-node NATS cluster; ``hosts(i)`` for kiosk ``i``."""

    def __init__(self, kind: str, work: Path) -> None:
        self.kind = kind
        if kind == "mosquitto":
            from tests.support.mosquitto import Mosquitto

            self.broker = Mosquitto(work, persistence=False)
        else:
            from tests.support.nats import NatsCluster

            self.broker = NatsCluster(work, name="fleet-bench")
        self.protocol = "5" if kind == "mosquitto" else "3.1.1"

    def start(self) -> None:
        self.broker.start()

    def stop(self) -> None:
        self.broker.stop()

    def ports(self) -> list[int]:
        return [self.broker.port] if self.kind == "mosquitto" else self.broker.mqtt_ports

    def hosts(self, i: int) -> list[list]:
        ports = self.ports()
        first = i % len(ports)
        return [["127.0.0.1", p] for p in ports[first:] + ports[:first]]

    def pids(self) -> dict[str, int]:
        if self.kind == "mosquitto":
            return {"mosquitto": self.broker.proc.pid}
        return {n.name: n.proc.pid for n in self.broker.nodes if n.proc is not None}

    def subscriber_ports(self) -> list[int]:
        """Where the audit subscribers are: every node but node 0, the one killed."""
        return self.ports()[-2:] if self.kind == "nats" else self.ports()


def pct(values: list[float]) -> str:
    if len(values) < 2:
        return "n/a"
    cuts = statistics.quantiles(values, n=100)
    return f"p50 {cuts[49]:.1f} ms  p99 {cuts[98]:.1f} ms  max {max(values):.1f} ms  (n={len(values)})"


def run(kind: str, args: argparse.Namespace) -> dict:
    work = OUT / kind
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    brokers = Brokers(kind, work)
    brokers.start()
    procs: list[subprocess.Popen] = []
    audits: list[Arrivals] = []
    try:
        for port in brokers.subscriber_ports():
            audits.append(Arrivals(port))
            audits[-1].start()
        arrivals = audits[-1]
        specs = []
        docks = set(range(0, args.dock * args.site_size, args.site_size))
        for i in range(args.kiosks):
            specs.append(
                {
                    "index": i,
                    "device": f"fleet-k{i:04d}",
                    "site": f"site-{i // args.site_size:03d}",
                    "hosts": brokers.hosts(i),
                    "protocol": brokers.protocol,
                    "dock": i in docks,
                }
            )
        shared = {
            "seconds": args.seconds,
            "interval": args.interval,
            "dock_start": args.seconds / 3,
            "dock_seconds": args.dock_seconds,
            "dock_codes": args.dock_codes,
            "drain_s": 180,
            "settle_s": args.settle_s,
            "catch_up": not args.no_catch_up,
        }
        started = time.monotonic()
        for w in range(args.procs):
            mine = specs[w :: args.procs]
            spec_file = work / f"worker-{w}.spec.json"
            spec = {"worker": w, "out": str(work), "kiosks": mine, "args": shared | {"seed": w}}
            spec_file.write_text(json.dumps(spec))
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "bench.fleet", "--worker", str(spec_file)],
                    cwd=ROOT,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=(work / f"worker-{w}.log").open("wb"),
                    text=True,
                )
            )
        connected = sum(int(expect(p, "ready").split()[1]) for p in procs)
        setup_s = time.monotonic() - started
        print(f"[{kind}] {connected}/{args.kiosks} kiosks connected in {setup_s:.1f} s", flush=True)

        go = time.time() + 1.0
        for p in procs:
            p.stdin.write(f"go {go}\n")
            p.stdin.flush()
        time.sleep(max(0.0, go - time.time()))
        broker_cpu0 = {name: cpu_s(pid) for name, pid in brokers.pids().items()}
        worker_cpu0 = [cpu_s(p.pid) for p in procs]
        main_cpu0 = time.process_time()
        rss: list[float] = []
        killed_at = None
        broker_cpu_at_kill = {}
        while time.time() < go + args.seconds:
            time.sleep(1.0)
            rss.append(sum(rss_mb(p.pid) for p in procs))
            if kind == "nats" and killed_at is None and time.time() >= go + args.seconds * args.kill_at:
                broker_cpu_at_kill = {"n0": cpu_s(brokers.broker.nodes[0].proc.pid)}
                brokers.broker.kill(0)
                killed_at = time.time()
                print(f"[{kind}] node n0 (MQTT {brokers.ports()[0]}) SIGKILLed at +{killed_at - go:.1f} s", flush=True)
        for p in procs:
            expect(p, "fed")
        window = time.time() - go
        broker_cpu = {name: cpu_s(pid) - broker_cpu0[name] for name, pid in brokers.pids().items()}
        broker_rss = {name: rss_mb(pid) for name, pid in brokers.pids().items()}
        for name, at_kill in broker_cpu_at_kill.items():
            broker_cpu[name] = at_kill - broker_cpu0[name]
        worker_cpu = sum(cpu_s(p.pid) for p in procs) - sum(worker_cpu0)
        main_cpu = time.process_time() - main_cpu0
        load_during = loadavg()
        for p in procs:
            expect(p, "done", timeout=300)
        results = [json.loads((work / f"worker-{w}.json").read_text()) for w in range(args.procs)]

        wanted: dict[str, tuple[str, str]] = {}
        seqs: dict[str, int] = {}
        sites = {spec["device"]: spec["site"] for spec in specs}
        for r in results:
            for k in r["kiosks"]:
                for event_id, seq, c in k["events"]:
                    wanted[event_id] = (k["device"], c)
                    seqs[event_id] = seq
        wait_for(audits, wanted, 60)
        # What a back end does about a gap (the collector's gap closer): ask each device
        # cmd/resend for the seqs an audit subscriber is missing, then wait for them.
        missed_first = {a.port: len(set(wanted) - a.event_ids()) for a in audits}
        asked = ask_resend(audits, wanted, seqs, sites) if args.resend and any(missed_first.values()) else 0
        if asked:
            wait_for(audits, wanted, 60)
        return report(kind, args, locals())
    finally:
        for audit in audits:
            audit.stop()
        for p in procs:
            with contextlib.suppress(OSError, ValueError):
                p.stdin.write("stop\n")
                p.stdin.flush()
        for p in procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        brokers.stop()


def wait_for(audits: list[Arrivals], wanted: dict, timeout: float) -> None:
    """Until every audit subscriber has every wanted event, or ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(set(wanted) <= a.event_ids() for a in audits):
        time.sleep(0.5)


def ask_resend(audits: list[Arrivals], wanted: dict, seqs: dict[str, int], sites: dict[str, str]) -> int:
    """Publish ``cmd/resend`` for each run of seqs any audit is missing; return how many asks."""
    missing: dict[str, set[int]] = {}
    for audit in audits:
        for event_id in set(wanted) - audit.event_ids():
            missing.setdefault(wanted[event_id][0], set()).add(seqs[event_id])
    asks = 0
    for device, device_seqs in sorted(missing.items()):
        ordered = sorted(device_seqs)
        start = prev = ordered[0]
        for seq in [*ordered[1:], None]:
            if seq is not None and seq == prev + 1:
                prev = seq
                continue
            body = json.dumps({"from_seq": start, "to_seq": prev, "correlation": f"fleet-audit-{asks}"})
            audits[-1].client.publish(f"{PREFIX}/{sites[device]}/{device}/cmd/resend", body, qos=1)
            asks += 1
            if seq is not None:
                start = prev = seq
    print(f"   asked {asks} resends for {sum(map(len, missing.values()))} seqs of {len(missing)} kiosks", flush=True)
    return asks


def expect(proc: subprocess.Popen, word: str, timeout: float = 600) -> str:
    """The worker's next line, which must start with ``word``."""
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    line = box[0] if box else ""
    if not line.startswith(word):
        raise RuntimeError(f"worker {proc.pid}: expected {word!r}, got {line!r} (see its log in {OUT})")
    return line


def report(kind: str, args: argparse.Namespace, v: dict) -> dict:
    """Join the ledgers, the feed times and the arrivals; print and return the figures."""
    results, wanted, go, window = v["results"], v["wanted"], v["go"], v["window"]
    submitted = {c: t for r in results for c, t in r["submitted"].items()}
    first: dict[str, float] = {}
    copies: Counter = Counter()
    for at, payload in v["arrivals"].got:
        event = json.loads(payload)
        copies[event["event_id"]] += 1
        first.setdefault(event["event_id"], at)
    lost = set(wanted) - set(first)
    lost_each = [len(set(wanted) - {json.loads(p)["event_id"] for _, p in a.got}) for a in v["audits"]]
    lost_all = set(wanted) - {json.loads(p)["event_id"] for a in v["audits"] for _, p in a.got}
    lost_detail = []
    by_device = {k["device"]: k for r in results for k in r["kiosks"]}
    for event_id in sorted(lost, key=lambda e: submitted.get(wanted[e][1], 0))[:20]:
        device, c = wanted[event_id]
        seq = next(s for e, s, _ in by_device[device]["events"] if e == event_id)
        at = submitted.get(c, go) - go
        lost_detail.append(
            f"{device} seq {seq} scanned at +{at:.2f} s, its uplink last on {by_device[device]['broker']}"
        )
    strangers = set(first) - set(wanted)
    lat_counter, lat_dock, lat_after_kill = [], [], []
    in_window = 0
    for event_id, (_device, c) in wanted.items():
        if event_id not in first or c not in submitted:
            continue
        ms = (first[event_id] - submitted[c]) * 1000
        (lat_dock if c[1] == "1" else lat_counter).append(ms)
        if v["killed_at"] is not None and submitted[c] >= v["killed_at"]:
            lat_after_kill.append(ms)
        in_window += first[event_id] <= go + window
    last_arrival = max(first.values(), default=go)
    kiosks = [k for r in results for k in r["kiosks"]]
    site_events: Counter = Counter()
    for k in kiosks:
        site_events[int(k["device"][-4:]) // args.site_size] += len(k["events"])
    expected_peer = 0
    for k in kiosks:
        site = int(k["device"][-4:]) // args.site_size
        expected_peer += site_events[site] - len(k["events"])
    peer_rows = sum(k["peer_rows"] for k in kiosks)
    counters_n = args.kiosks - args.dock
    offered = counters_n / args.interval + args.dock * args.dock_codes / args.seconds
    n_k = args.kiosks
    figures = {
        "broker": kind,
        "kiosks": n_k,
        "procs": args.procs,
        "site_size": args.site_size,
        "connected": v["connected"],
        "setup_s": v["setup_s"],
        "window_s": window,
        "events": len(wanted),
        "arrived": len(first),
        "lost": len(lost),
        "missed_before_resend": v["missed_first"],
        "resend_asks": v["asked"],
        "lost_each_subscriber": lost_each,
        "lost_at_every_subscriber": len(lost_all),
        "strangers": len(strangers),
        "duplicates": sum(n - 1 for n in copies.values()),
        "offered_per_s": offered,
        "delivered_per_s_in_window": in_window / window,
        "catch_up_s": last_arrival - (go + window),
        "lat_counter": lat_counter,
        "lat_dock": lat_dock,
        "lat_after_kill": lat_after_kill,
        "peer_rows": peer_rows,
        "peer_expected": expected_peer,
        "rss_per_kiosk_mb": max(v["rss"]) / n_k,
        "worker_rss_mb": max(v["rss"]),
        "cpu_per_kiosk_pct": v["worker_cpu"] / window / n_k * 100,
        "workers_cpu_pct": v["worker_cpu"] / window * 100,
        "subscriber_cpu_pct": v["main_cpu"] / window * 100,
        "broker_cpu_pct": {name: s / window * 100 for name, s in v["broker_cpu"].items()},
        "broker_rss_mb": v["broker_rss"],
        "event_bytes": statistics.mean(len(p) for _, p in v["arrivals"].got) if v["arrivals"].got else 0,
        "ledger_bytes_per_kiosk": sum(p.stat().st_size for p in v["work"].glob("fleet-k*.db*")) / n_k,
        "outbox_left": sum(r["outbox_left"] for r in results),
        "late_feeds": sum(r["late_feeds"] for r in results),
        "late_max_s": max(r["late_max_s"] for r in results),
        "failures": sum(k["failures"] for k in kiosks),
        "connection_errors": sum(k["connection_errors"] for k in kiosks),
        "on_killed_node": sum(1 for k in kiosks if k["broker"].endswith(f":{v['brokers'].ports()[0]}"))
        if kind == "nats"
        else None,
        "load": v["load_during"],
        "lost_detail": lost_detail,
    }
    f = figures
    print(f"\n== {kind}: {n_k} kiosks in {args.procs} processes, sites of {args.site_size}, peers on")
    if v["killed_at"] is not None:
        print(f"   node n0 SIGKILLed at +{v['killed_at'] - go:.1f} s; still on it at the end: {f['on_killed_node']}")
    print(f"   load average during the run: {f['load']}")
    print(
        f"   offered {offered:.1f} events/s ({counters_n} counters every {args.interval:g} s; "
        f"{args.dock} docks x {args.dock_codes} codes in {args.dock_seconds:g} s)"
    )
    print(
        f"   delivered {f['delivered_per_s_in_window']:.1f} events/s end to end over the {window:.1f} s feed window; "
        f"last event {f['catch_up_s']:+.1f} s after it"
    )
    print(f"   scan -> subscriber, counters: {pct(lat_counter)}")
    print(f"   scan -> subscriber, dock:     {pct(lat_dock)}")
    if lat_after_kill:
        print(f"   scan -> subscriber, scanned after the kill: {pct(lat_after_kill)}")
    print(
        f"   events {f['events']}, arrived {f['arrived']}, LOST {f['lost']}, duplicates {f['duplicates']}, "
        f"outbox left {f['outbox_left']}, refused {f['failures']}, connection errors {f['connection_errors']}"
    )
    print(
        f"   missed on first delivery, per audit subscriber: {list(f['missed_before_resend'].values())}; "
        f"cmd/resend asks {f['resend_asks']} (LOST counts what was still missing after them)"
    )
    if len(lost_each) > 1:
        print(
            f"   audit subscribers on {len(lost_each)} surviving nodes: lost at each {lost_each}, "
            f"at every one {len(lost_all)} (latency and the rest: the last one)"
        )
    for line in lost_detail:
        print(f"     lost: {line}")
    print(
        f"   peer rows stored {peer_rows} of {expected_peer} expected (each event at every other station of its site); "
        f"catch-up {'on' if not args.no_catch_up else 'off'}, {args.settle_s:g} s settle"
    )
    print(
        f"   per kiosk: RSS {f['rss_per_kiosk_mb']:.1f} MB (workers {f['worker_rss_mb']:.0f} MB), "
        f"CPU {f['cpu_per_kiosk_pct']:.2f} % of a core (workers {f['workers_cpu_pct']:.0f} %)"
    )
    brokers_cpu = ", ".join(f"{n} {p:.1f} %" for n, p in f["broker_cpu_pct"].items())
    print(f"   broker CPU over the window: {brokers_cpu} of a core; subscriber {f['subscriber_cpu_pct']:.1f} %")
    brokers_rss = ", ".join(f"{n} {m:.0f} MB" for n, m in f["broker_rss_mb"].items())
    print(f"   broker RSS at the end of the window: {brokers_rss}")
    print(f"   event on the wire: {f['event_bytes']:.0f} bytes (JSON, mean)")
    print(
        f"   ledger files per kiosk: {f['ledger_bytes_per_kiosk'] / 1e6:.2f} MB "
        f"(own events and peer rows, WAL included, not checkpointed away)"
    )
    print(
        f"   setup: {f['connected']}/{n_k} connected in {f['setup_s']:.1f} s; "
        f"feeds late > 0.1 s: {f['late_feeds']} (max {f['late_max_s']:.2f} s)"
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--kiosks", type=int, default=200)
    parser.add_argument("--procs", type=int, default=4)
    parser.add_argument("--broker", choices=("mosquitto", "nats", "both"), default="both")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--site-size", type=int, default=5)
    parser.add_argument("--dock", type=int, default=5)
    parser.add_argument("--dock-codes", type=int, default=600)
    parser.add_argument("--dock-seconds", type=float, default=30.0)
    parser.add_argument("--kill-at", type=float, default=0.5, help="fraction of the run at which NATS node 0 dies")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--settle-s", type=float, default=2.0, help="wait after the outboxes drain, for peer events")
    parser.add_argument("--no-catch-up", action="store_true", help="stations never ask peers for missed events")
    parser.add_argument(
        "--no-resend",
        dest="resend",
        action="store_false",
        help="the audit subscribers do not ask kiosks cmd/resend for what they missed (as a collector would)",
    )
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
        return
    print(header())
    print(f"load average before: {loadavg()}")
    kinds = ("mosquitto", "nats") if args.broker == "both" else (args.broker,)
    figures = [run(kind, args) for kind in kinds]
    print(f"\nload average after: {loadavg()}")
    if args.json:
        for f in figures:
            for key in ("lat_counter", "lat_dock", "lat_after_kill"):
                f[key] = pct(f[key])
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
