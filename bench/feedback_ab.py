"""Two trees of the agent, measured by bench/feedback_latency.py in the same minutes.

    git archive <commit> | tar -x -C /tmp/before
    .venv/bin/python bench/feedback_ab.py --before /tmp/before [--after .] [--rounds 5]
        [--scans 200] [--gap 0.05] [--dir /dev/shm]

This VM's latency drifts by tens of percent from one minute to the next (other work,
the disk's flushes), so a before run and an after run taken one after the other compare
two moments as much as two trees. Here each tree runs ``--rounds`` blocks of ``--scans``
scans, taking turns (before, after, after, before, ...), and each tree's figures are pooled
over its blocks. Both trees are measured by this tree's bench/feedback_latency.py (copied
into ``--before``, which should be a throwaway export), so only the agent differs.
Prints p50 / p99 per tree and segment, and the fsync and CPU probes of every block.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import describe, pct
from bench.probes import loops_for

HERE = Path(__file__).resolve().parents[1]
SERIES = (
    ("read", "entry -> terminator read"),
    ("commit", "entry -> commit returned"),
    ("after", "commit -> first pin change"),
    ("total", "entry -> first pin change"),
)


def run_block(tree: Path, args: argparse.Namespace, out: Path) -> dict[str, list[float]]:
    """One block of scans through ``tree``'s agent; its figures in ms."""
    command = [sys.executable, str(tree / "bench" / "feedback_latency.py"), "--dump", str(out)]
    command += ["--scans", str(args.scans), "--gap", str(args.gap), "--dir", args.dir]
    command += ["--probe-loops", str(args.probe_loops)]  # the same CPU probe in every block
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, cwd=tree)
    return json.loads(out.read_text())


def fsyncs(figures: dict[str, list[float]]) -> list[float]:
    """Every fsync probe of a block (or of pooled blocks): before, between and after the scans."""
    return figures["fsync_before"] + figures["fsync_between"] + figures["fsync_after"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, type=Path, help="an exported tree (its bench scripts are replaced)")
    ap.add_argument("--after", default=HERE, type=Path)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--scans", type=int, default=200)
    ap.add_argument("--gap", type=float, default=0.05)
    ap.add_argument("--dir", default="/dev/shm")
    args = ap.parse_args()
    args.probe_loops = loops_for(0.0005)
    for name in ("feedback_latency.py", "machine.py", "probes.py"):
        shutil.copy(args.after / "bench" / name, args.before / "bench" / name)
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    pooled: dict[str, dict[str, list[float]]] = {name: {} for name in trees}
    probes: list[str] = []
    print(f"bench/feedback_ab.py  {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")
    print(f"machine: {describe()}; load average before: {os.getloadavg()[0]:.2f}")
    print(f"CPU probe: {args.probe_loops} turns of a pure-Python loop (0.5 ms back to back) in every block")
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = ("before", "after") if r % 2 == 0 else ("after", "before")
            for name in order:
                figures = run_block(trees[name], args, Path(tmp) / f"{name}{r}.json")
                for key, values in figures.items():
                    pooled[name].setdefault(key, []).extend(values)
                probe = fsyncs(figures)
                total = figures["total"]
                probes.append(
                    f"  round {r} {name:6}: entry -> pin p50 {pct(total, 50):.3f} p99 {pct(total, 99):.3f};"
                    f" fsync probe p50 {pct(probe, 50):.3f} p99 {pct(probe, 99):.3f};"
                    f" CPU probe p99 {pct(figures['cpu'], 99):.3f}; load {os.getloadavg()[0]:.2f}"
                )
                print(probes[-1], flush=True)
    print(f"ledger in {args.dir}; {args.rounds} rounds of {args.scans} scans per tree, {args.gap} s apart")
    print(f"{'ms, p50 / p99':>28} {'before':>15} {'after':>15}")
    for key, label in SERIES:
        cells = [f"{pct(pooled[n][key], 50):6.3f} / {pct(pooled[n][key], 99):6.3f}" for n in trees]
        print(f"{label:>28} {cells[0]:>15} {cells[1]:>15}")
    for name in trees:
        probe = fsyncs(pooled[name])
        print(f"{'fsync probe, ' + name + ' blocks':>28} {pct(probe, 50):6.3f} / {pct(probe, 99):6.3f}")
    for name in trees:
        cpu = pooled[name]["cpu"]
        print(f"{'CPU probe, ' + name + ' blocks':>28} {pct(cpu, 50):6.3f} / {pct(cpu, 99):6.3f}")


if __name__ == "__main__":
    main()
