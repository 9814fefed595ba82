"""What this machine's CPU alone does to a short piece of work, with none of the agent.

    .venv/bin/python bench/cpu_probe.py [--work-ms 0.5] [--gap 0.05] [--times 300] [--watch 10]

The probe (bench/probes.py) is a fixed piece of pure Python; on a shared VM it can take ten
times as long now and then, and a scan's work meets the same. This prints its p50 / p99
back to back and after each ``--gap`` of idle (bench/feedback_latency.py runs it in the gaps
between scans), then watches a busy loop for ``--watch`` seconds: the slow episodes (runs of
1 ms windows in which the loop went at under a third of its median pace) and the longest
gap between two of its clock reads (the process not running at all). Run it on a kiosk
before its benches: a quiet one should show neither a tail nor episodes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import header, row
from bench.probes import loops_for, timed_spin


def slow_episodes(seconds: float) -> tuple[int, list[int], float]:
    """Spin for ``seconds`` and count loop turns in each 1 ms window. Returns the median turns
    per window, the lengths (ms) of the runs of windows under a third of it, and the longest
    gap (s) between two clock reads: a slow pace with no long gap is the CPU running slow,
    not the process waiting for it."""
    counts: list[int] = []
    turns, start = 0, time.perf_counter()
    edge, last, longest = start + 0.001, start, 0.0
    while True:
        now = time.perf_counter()
        longest, last = max(longest, now - last), now
        turns += 1
        if now >= edge:
            counts.append(turns)
            turns, edge = 0, edge + 0.001
            if now - start >= seconds:
                break
    median = int(statistics.median(counts))
    runs, length = [], 0
    for count in counts:
        if count < median / 3:
            length += 1
        elif length:
            runs.append(length)
            length = 0
    return median, runs + ([length] if length else []), longest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work-ms", type=float, default=0.5, help="the probe's work, back to back")
    ap.add_argument("--gap", type=float, default=0.05, help="idle seconds before each probe")
    ap.add_argument("--times", type=int, default=300)
    ap.add_argument("--watch", type=float, default=10.0, help="seconds of busy loop to watch")
    args = ap.parse_args()
    loops = loops_for(args.work_ms / 1000)
    print(header())
    print(f"CPU probe: {loops} turns of a pure-Python loop, {args.work_ms} ms back to back")
    print(f"{'ms':>28} {'p50':>7} {'p99':>7} {'max':>7}")
    for label, gap in (("back to back", 0.0), (f"after {args.gap} s idle", args.gap)):
        seconds = []
        for _ in range(args.times):
            time.sleep(gap)
            seconds.append(timed_spin(loops))
        print(row(label, seconds, 28))
    median, runs, longest = slow_episodes(args.watch)
    print(
        f"busy loop, {args.watch:g} s: {median} turns per ms at the median; {len(runs)} slow episodes"
        f" (under a third of that pace), {sum(runs)} ms in all, longest {max(runs, default=0)} ms;"
        f" longest gap between clock reads {longest * 1000:.2f} ms"
    )


if __name__ == "__main__":
    main()
