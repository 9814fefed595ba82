"""Decision committed to the event received by a Server-Sent Events client of the local API.

    .venv/bin/python bench/api_stream.py [--scans 1000] [--gap 0.02] [--clients 1] [--dir /var/tmp]

In one process: a real ledger file, the pipeline, and the API (agent.sinks.api.LocalApi)
on a loopback port; the clients are threads reading ``GET /v1/decisions/stream`` over
TCP. A sink placed just before the API stamps each commit (monotonic); each client
stamps the moment the event's frame is in hand. Printed: p50/p99/max per seq, over
every client.
"""

from __future__ import annotations

import argparse
import datetime
import re
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.ledger import Ledger
from agent.pipeline import Pipeline
from agent.read import Read
from agent.sinks.api import LocalApi
from agent.sinks.feedback import NoFeedback
from agent.station import Station
from bench.machine import describe, pct


def start_api(pipeline: Pipeline, db: Path, feedback) -> LocalApi:
    """The API on a free loopback port, appended to the pipeline's sinks, serving."""
    api = LocalApi(
        db_path=db,
        device_id=pipeline.ledger.device_id,
        site_id=pipeline.ledger.site_id,
        bind="127.0.0.1",
        port=0,
        token=None,
        station=Station(pipeline),
        sources=[],
        feedback=feedback,
    )
    pipeline.sinks.append(api)
    api.start()
    return api


class StreamClient:
    """A thread reading the stream; ``received[seq]`` is when that event's frame arrived."""

    def __init__(self, port: int) -> None:
        self.received: dict[int, float] = {}
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.sendall(b"GET /v1/decisions/stream HTTP/1.1\r\nHost: bench\r\n\r\n")
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                return
            now = time.monotonic()
            if not chunk:
                return
            buffer += chunk
            *frames, buffer = buffer.split(b"\n\n")
            for frame in frames:
                found = re.search(rb"^id: (\d+)$", frame, re.M)
                if found:
                    self.received[int(found[1])] = now

    def close(self) -> None:
        self.sock.close()


class Committed:
    def __init__(self) -> None:
        self.at: dict[int, float] = {}

    def decided(self, decision) -> None:
        if decision.seq is not None:
            self.at[decision.seq] = time.monotonic()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scans", type=int, default=1000)
    ap.add_argument("--gap", type=float, default=0.02)
    ap.add_argument("--clients", type=int, default=1)
    ap.add_argument("--dir", default="/var/tmp")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        db = Path(tmp) / "ledger.db"
        ledger = Ledger.open(db, device_id="bench", site_id="bench", double_read_window_s=0)
        committed = Committed()
        pipeline = Pipeline(ledger, sinks=[committed])
        api = start_api(pipeline, db, NoFeedback())
        clients = [StreamClient(api.address[1]) for _ in range(args.clients)]
        time.sleep(0.2)
        pipeline.start()
        for n in range(args.scans):
            pipeline.submit(Read(b"8%019d" % (1_000_000_000 + n), "bench", "bench"))
            time.sleep(args.gap)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(len(c.received) < args.scans for c in clients):
            time.sleep(0.05)
        pipeline.stop()
        api.stop()
        ledger.close()
    delays = [(c.received[seq] - at) * 1000 for c in clients for seq, at in committed.at.items() if seq in c.received]
    missing = sum(args.scans - len(c.received) for c in clients)
    print(f"bench/api_stream.py  {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")
    print(f"machine: {describe()}")
    print(f"{args.scans} scans {args.gap} s apart, {args.clients} stream client(s); events missing: {missing}")
    print(
        f"commit -> SSE event received, ms: p50 {pct(delays, 50):.3f}  p99 {pct(delays, 99):.3f}  max {max(delays):.3f}"
    )
    print(f"target p99 <= 5 ms: {'met' if pct(delays, 99) <= 5 else 'NOT met'}")


if __name__ == "__main__":
    main()
