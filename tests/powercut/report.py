"""The power-cut suite's rows from ``cycles.jsonl``, for a run that stopped before its summary.

    python -m tests.powercut.report DIR [--header TEXT]

``scripts/powercut-tests`` appends every checked cycle to ``DIR/cycles.jsonl``
as it goes and writes ``summary.md`` at the end. A long run stopped before
its end (a session's time up, a machine going down) has checked every cycle
in that file all the same: this prints the same rows (:func:`run.table`) from it,
so what was checked is reported rather than lost.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tests.powercut.run import Role, summary_rows, table


def roles_from(cycles: Path) -> list[Role]:
    """The roles of a run, each with the results ``cycles.jsonl`` holds for it, in the order
    they first appear; the control (a role named ``control``) takes the scenarios in turn."""
    roles: dict[str, Role] = {}
    for line in cycles.read_text(encoding="utf-8").splitlines():
        result = json.loads(line)
        name = result["role"]
        if name not in roles:
            scenario = None if name == "control" else result["scenario"]
            roles[name] = Role(name, Path(f"{name}.img"), Path(f"{name}.port"), 0, scenario)
        roles[name].results.append(result)
        roles[name].cycles += 1
    return list(roles.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="the run's results directory (its cycles.jsonl)")
    parser.add_argument("--header", default="", help="text put above the table (machine, date, command)")
    args = parser.parse_args(argv)
    roles = roles_from(args.out / "cycles.jsonl")
    if not roles:
        print(f"{args.out / 'cycles.jsonl'}: no cycle checked", file=sys.stderr)
        return 1
    boots = max(c["cycle"] for r in roles for c in r.results)
    print((args.header + "\n\n" if args.header else "") + f"{boots} boots checked\n\n" + table(summary_rows(roles)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
