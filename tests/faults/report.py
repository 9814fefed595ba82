"""Run the fault suite and write its figures to ``docs/reliability.md``.

    python -m tests.faults.report                 # full counts (FAULT_CYCLES=100)
    python -m tests.faults.report --cycles 5      # a quick look
    python -m tests.faults.report --out /tmp/r.md

Each test in ``tests/faults`` appends one JSON line of figures (see
``conftest.FaultFigures``); this sums them per fault into the table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.machine import header

ROOT = Path(__file__).resolve().parents[2]

#: The page's fixed part: what the figures mean, how each fault is made, what was found.
INTRO = (Path(__file__).parent / "reliability_intro.md").read_text(encoding="utf-8")


def run(cycles: int, pytest_args: list[str]) -> tuple[list[dict], int, float]:
    with tempfile.NamedTemporaryFile("r", suffix=".jsonl") as figures:
        env = dict(os.environ, FAULT_CYCLES=str(cycles), FAULT_REPORT=figures.name)
        started = time.monotonic()
        status = subprocess.call(
            [sys.executable, "-m", "pytest", "-q", "tests/faults", *pytest_args],
            cwd=ROOT,
            env=env,
        )
        took = time.monotonic() - started
        rows = [json.loads(line) for line in Path(figures.name).read_text().splitlines() if line.strip()]
    return rows, status, took


def table(rows: list[dict]) -> str:
    faults: dict[str, dict] = {}
    for row in rows:
        total = faults.setdefault(
            row["fault"], {"cycles": 0, "sent": 0, "lost": 0, "duplicated": 0, "max": None, "notes": []}
        )
        for key in ("cycles", "sent", "lost", "duplicated"):
            total[key] += row[key]
        if row["max_recovery_s"] is not None:
            total["max"] = max(total["max"] or 0.0, row["max_recovery_s"])
        if row["note"] and row["note"] not in total["notes"]:
            total["notes"].append(row["note"])
    lines = [
        "| fault | cycles run | scans sent | lost | duplicated | max recovery | notes |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for fault, t in faults.items():
        recovery = "–" if t["max"] is None else f"{t['max']:.2f} s"
        lines.append(
            f"| {fault} | {t['cycles']} | {t['sent']:,} | {t['lost']} | {t['duplicated']} | {recovery} "
            f"| {'; '.join(t['notes'])} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=100, help="FAULT_CYCLES for the run (default 100)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "reliability.md")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments, e.g. -k crash")
    args = parser.parse_args(argv)
    rows, status, took = run(args.cycles, args.pytest_args)
    text = (
        f"{INTRO}\n## Latest run\n\n```\n{header()}\n"
        f"command: python -m tests.faults.report --cycles {args.cycles}\n"
        f"took:    {took / 60:.1f} min, pytest exit status {status}\n```\n\n{table(rows)}\n"
    )
    args.out.write_text(text, encoding="utf-8")
    print(text)
    return status


if __name__ == "__main__":
    sys.exit(main())
