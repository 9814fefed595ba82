"""Serial scan latency: terminator byte written into a pty -> decision committed.

A socat pty pair stands for the scanner's cable. For each scan the digits go
in first; then the clock starts and the terminator (CR) is written; it stops
when the pipeline's sink hears the decision, which happens only after the
ledger transaction has committed (``synchronous=FULL``). In-process, one scan
at a time, all codes distinct (so every one is accepted and writes an outbox
row as well).

    python bench/serial_latency.py              # 2,000 scans, ledger on disk
    python bench/serial_latency.py --scans 500 --memory
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.ledger import Ledger  # noqa: E402
from agent.pipeline import Pipeline  # noqa: E402
from agent.sources.serial import SerialSource  # noqa: E402
from tests.support.pty import PtyPair  # noqa: E402


class Stopwatch:
    """A sink that notes when each decision arrives."""

    def __init__(self) -> None:
        self.at = 0.0
        self.verdict = ""
        self.event = threading.Event()

    def decided(self, decision) -> None:
        self.at = time.perf_counter()
        self.verdict = decision.verdict
        self.event.set()


def cpu_model() -> str:
    try:
        fields = dict(
            (key.strip().lower(), value.strip())
            for key, _, value in (line.partition(":") for line in Path("/proc/cpuinfo").read_text().splitlines())
        )
    except OSError:
        fields = {}
    # x86 says "model name"; a Raspberry Pi says "Model" (the board) and "Hardware".
    return fields.get("model name") or fields.get("model") or fields.get("hardware") or platform.processor() or "?"


def run(scans: int, memory: bool, baudrate: int) -> list[float]:
    with tempfile.TemporaryDirectory(dir=None if memory else "/var/tmp") as tmp:  # /tmp may be tmpfs
        pair = PtyPair(Path(tmp))
        pair.start()
        ledger = Ledger.open(":memory:" if memory else Path(tmp) / "ledger.db", device_id="bench", site_id="bench")
        watch = Stopwatch()
        pipeline = Pipeline(ledger, sinks=[watch])
        pipeline.start()
        source = SerialSource(str(pair.host), name="bench", baudrate=baudrate, terminator="cr")
        source.start(pipeline.submit)
        if not source.connected.wait(5):
            raise SystemExit("the pty did not open")
        fd = pair.open_device()
        latencies = []
        try:
            for n in range(scans):
                code = f"8{n:019d}".encode()
                os.write(fd, code)
                time.sleep(0.002)  # the digits are in the reader's buffer before the clock starts
                watch.event.clear()
                start = time.perf_counter()
                os.write(fd, b"\r")
                if not watch.event.wait(10):
                    raise SystemExit(f"scan {n} not decided after 10 s")
                if watch.verdict != "accepted":
                    raise SystemExit(f"scan {n}: {watch.verdict}")
                latencies.append(watch.at - start)
        finally:
            os.close(fd)
            source.stop()
            pipeline.stop()
            ledger.close()
            pair.kill()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=2000)
    parser.add_argument("--memory", action="store_true", help="ledger in memory (no fsync), to see the rest")
    parser.add_argument("--baudrate", type=int, default=115200)
    args = parser.parse_args()
    latencies = sorted(run(args.scans, args.memory, args.baudrate))
    ms = [x * 1000 for x in latencies]
    q = statistics.quantiles(ms, n=100, method="inclusive")
    print(f"bench/serial_latency.py: {args.scans} scans, ledger {'in memory' if args.memory else 'on disk'}")
    print(f"  terminator written -> decision committed: p50 {q[49]:.2f} ms  p90 {q[89]:.2f} ms  p99 {q[98]:.2f} ms")
    print(f"  min {ms[0]:.2f} ms  max {ms[-1]:.2f} ms  mean {statistics.fmean(ms):.2f} ms")
    print(f"  machine: {platform.platform()}, {cpu_model()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"  date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")


if __name__ == "__main__":
    main()
