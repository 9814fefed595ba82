"""What this machine's CPU alone does to a short piece of work, with none of the agent.

    .venv/bin/python bench/cpu_probe.py [--work-ms 0.5] [--gap 0.05] [--times 300] [--watch 10]

A scan is a few hundred microseconds of work after an idle spell. On a shared VM the same
fixed piece of pure Python can take ten times as long now and then, and no code on the scan
path can beat that: its p99 is the floor of the scan's. This prints the probe's p50 / p99
back to back and after each ``--gap`` of idle (as bench/feedback_latency.py runs it between
scans), then watches a busy loop for ``--watch`` seconds and counts the slow episodes: runs of
1 ms windows in which the loop went at under a third of its median pace. Run it on a kiosk
before its benches: a quiet one shows neither a tail nor episodes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import header, pct


def spin(loops: int) -> int:
    """A fixed piece of pure-Python work: ``loops`` turns of a loop that allocates nothing."""
    total = 0
    for i in range(loops):
        total ^= i
    return total


def loops_for(seconds: float) -> int:
    """How many :func:`spin` loops take about ``seconds`` back to back on this CPU (the fastest
    of five tries, so a slow moment while calibrating does not shrink the work).

    >>> loops_for(0.0005) > 0
    True
    """
    per_loop = min(_timed(spin, 20_000) for _ in range(5)) / 20_000
    return max(1, round(seconds / per_loop))


def timed_spin(loops: int) -> float:
    """Seconds that :func:`spin` of ``loops`` took just now.

    A CPU probe: called after the same idle as a scan, its spread is the machine's own (a
    shared VM's slow moments, frequency changes, caches gone cold), which no code on the
    scan path can remove: a scan that takes 0.5 ms of work at p50 cannot beat this at p99.

    >>> timed_spin(loops_for(0.0001)) > 0
    True
    """
    return _timed(spin, loops)


def _timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def slow_episodes(seconds: float) -> tuple[int, list[int]]:
    """Spin for ``seconds`` and count loop turns in each 1 ms window; returns the median
    turns per window and the lengths (ms) of the runs of windows under a third of it."""
    counts: list[int] = []
    turns, start = 0, time.perf_counter()
    edge = start + 0.001
    while True:
        now = time.perf_counter()
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
    return median, runs + ([length] if length else [])


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
        ms = []
        for _ in range(args.times):
            time.sleep(gap)
            ms.append(timed_spin(loops) * 1000)
        print(f"{label:>28} {pct(ms, 50):7.3f} {pct(ms, 99):7.3f} {max(ms):7.3f}")
    median, runs = slow_episodes(args.watch)
    print(
        f"busy loop, {args.watch:g} s: {median} turns per ms at the median; {len(runs)} slow episodes"
        f" (under a third of that pace), {sum(runs)} ms in all, longest {max(runs, default=0)} ms"
    )


if __name__ == "__main__":
    main()
