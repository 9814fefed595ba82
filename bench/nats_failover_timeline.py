"""Where a NATS failover's seconds go: the uplink's steps after its node is SIGKILLed.

    .venv/bin/python -m bench.nats_failover_timeline [--cycles 5]

The scenario of ``tests/faults/test_nats_failover.py`` (a real three-node NATS cluster,
JetStream and MQTT on, R3; an uplink with ``[mqtt] hosts`` = the three nodes drains a
backlog; its node dies a quarter of the way in), with the uplink's own log and the
surviving nodes' logs timestamped against the kill. Printed per cycle, in seconds after
the kill: the disconnection seen; each connection attempt and how it ended (refused,
CONNACK, dropped); the SUBACK (the uplink drains only after it); when 40 more events were
acknowledged (through another node); and the NATS lines about JetStream leaders (the Raft groups that held the
MQTT sessions' streams and consumers elect a new leader only after their election timeout).
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import header
from tests.faults.test_nats_failover import uplink_for
from tests.support.backlog import fill_ledger
from tests.support.nats import NatsCluster
from tests.support.net import wait_until
from tests.test_uplink import depth

PER_CYCLE = 1200
# NATS log lines: "[pid] 2026/11/30 10:50:01.123456 [INF] ..."
NATS_TS = re.compile(r"\[\d+\] (\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\.\d+) \[(\w+)\] (.*)")


class Steps(logging.Handler):
    """The uplink's log lines, with the monotonic time each was emitted."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[tuple[float, str]] = []
        self.guard = threading.Lock()  # not self.lock: logging.Handler holds that one around emit()

    def emit(self, record: logging.LogRecord) -> None:
        with self.guard:
            self.lines.append((time.monotonic(), record.getMessage()))


def nats_lines(cluster: NatsCluster, since_wall: float, until_wall: float) -> list[tuple[float, str]]:
    """Surviving nodes' log lines about leaders and MQTT between the two wall times."""
    found = []
    for node in cluster.nodes:
        if not node.log.exists():
            continue
        for line in node.log.read_text(errors="replace").splitlines():
            m = NATS_TS.match(line)
            if not m:
                continue
            at = datetime.strptime(m.group(1), "%Y/%m/%d %H:%M:%S.%f").timestamp()
            text = m.group(3)
            wanted = "leader" in text.lower() or "MQTT" in text or m.group(2) in ("ERR", "WRN")
            if since_wall <= at <= until_wall and wanted:
                found.append((at, f"{node.name} [{m.group(2)}] {text[:150]}"))
    return sorted(found)


def cycle(path: Path, cluster: NatsCluster, n: int, killed: int, steps: Steps) -> dict:
    fill_ledger(path, PER_CYCLE, start=n * PER_CYCLE)
    uplink = uplink_for(path, cluster, killed)
    uplink.start()
    try:
        wait_until(lambda: depth(path) <= PER_CYCLE * 3 // 4, timeout=60, what="a quarter drained")
        delivered = uplink.delivered
        with steps.guard:
            steps.lines.clear()
        cluster.kill(killed)
        killed_at, killed_wall = time.monotonic(), time.time()
        # Past the window's 20 in flight at the kill (their PUBACKs may still come from the dead
        # node's socket buffer): events acknowledged through another node.
        wait_until(lambda: uplink.delivered > delivered + 40, timeout=60, what="delivering again")
        first_puback = time.monotonic() - killed_at
        wait_until(lambda: depth(path) == 0, timeout=120, what="drained")
        with steps.guard:
            lines = [(at - killed_at, text) for at, text in steps.lines]
        nats = [(at - killed_wall, text) for at, text in nats_lines(cluster, killed_wall - 0.5, time.time())]
        return {"first_puback": first_puback, "uplink": lines, "nats": nats}
    finally:
        uplink.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=5)
    args = parser.parse_args()
    print(header())
    steps = Steps()
    for name in ("agent.sinks.uplink.connection", "agent.sinks.uplink.paho"):
        logging.getLogger(name).addHandler(steps)
        logging.getLogger(name).setLevel(logging.DEBUG)
    with tempfile.TemporaryDirectory() as tmp:
        cluster = NatsCluster(Path(tmp))
        cluster.start()
        try:
            path = Path(tmp) / "ledger.db"
            for n in range(args.cycles):
                killed = n % 3
                result = cycle(path, cluster, n, killed, steps)
                print(
                    f"\n== cycle {n + 1}: n{killed} killed; delivering through another node after "
                    f"{result['first_puback']:.2f} s"
                )
                for at, text in result["uplink"]:
                    if "PUBLISH" in text or "PUBACK" in text:
                        continue  # paho's per-message lines
                    print(f"   {at:+7.2f} s  uplink  {text[:140]}")
                for at, text in result["nats"][:25]:
                    print(f"   {at:+7.2f} s  nats    {text}")
                if n < args.cycles - 1:
                    cluster.start_node(killed)
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
