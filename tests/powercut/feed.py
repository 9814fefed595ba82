"""The scans fed to ``scan-agent run`` on stdin in the power-cut VM: a steady stream.

    python -m tests.powercut.feed CYCLE [--seed N] [--interval S]

New trace codes (distinct in every cycle: the cycle number is part of them),
codes dispensed earlier in the cycle again (answered ``duplicate``) and product
barcodes (``rejected``), one line every ``interval`` seconds until the pipe closes.
"""

from __future__ import annotations

import argparse
import random
import sys
import time


def code(cycle: int, i: int) -> bytes:
    """A valid 20-digit trace code, distinct for each (cycle, i)."""
    return b"8%04d%015d" % (cycle, i)


def lines(cycle: int, seed: int):
    rng = random.Random(seed)
    made = 0
    while True:
        roll = rng.random()
        if roll < 0.1 and made > 20:
            yield code(cycle, 1 + rng.randrange(made - 10)) + b"\n"  # dispensed before: duplicate
        elif roll < 0.2:
            yield b"69%011d\n" % rng.randrange(10**11)  # a product barcode: rejected
        else:
            made += 1
            yield code(cycle, made) + b"\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cycle", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--interval", type=float, default=0.02)
    args = parser.parse_args(argv)
    out = sys.stdout.buffer
    try:
        for line in lines(args.cycle, args.seed):
            out.write(line)
            out.flush()
            time.sleep(args.interval)
    except (BrokenPipeError, OSError):
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
