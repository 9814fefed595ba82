"""The scans fed to ``scan-agent run`` on stdin in the power-cut VM: a steady stream.

    python -m tests.powercut.feed CYCLE [--seed N] [--interval S] [--documents]

New trace codes (distinct in every cycle: the cycle number is part of them),
codes dispensed earlier in the cycle again (answered ``duplicate``) and product
barcodes (``rejected``), one line every ``interval`` seconds until the pipe closes.
With documents (:func:`document_lines`), the same scans inside prescriptions opened
by their barcode, most of them closed by the close code, so that the power often
goes while one is open.
"""

from __future__ import annotations

import argparse
import itertools
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


#: The ``[documents]`` codes of the power-cut VM's config (tests/powercut/in-vm).
DOCUMENT_PATTERN = "^RX[0-9]{8}$"
CLOSE = b"DOC-CLOSE"
ACK = b"SUPERVISOR-ACK"


def document_lines(cycle: int, seed: int):
    """Prescriptions ``RX<cycle><n>`` (a new id in every boot: ids are never reused), each with
    5-40 scans; a code dispensed before locks the station, so the supervisor's code follows it."""
    rng = random.Random(seed)
    made = 0
    for doc in itertools.count(1):
        yield b"RX%04d%04d\n" % (cycle % 10_000, doc % 10_000)
        for _ in range(rng.randint(5, 40)):
            roll = rng.random()
            if roll < 0.05 and made > 20:
                yield code(cycle, 1 + rng.randrange(made - 10)) + b"\n"
                yield ACK + b"\n"
            elif roll < 0.15:
                yield b"69%011d\n" % rng.randrange(10**11)
            else:
                made += 1
                yield code(cycle, made) + b"\n"
        if rng.random() < 0.8:
            yield CLOSE + b"\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cycle", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--interval", type=float, default=0.02)
    parser.add_argument("--documents", action="store_true", help="the scans inside prescriptions")
    args = parser.parse_args(argv)
    out = sys.stdout.buffer
    feed = document_lines if args.documents else lines
    try:
        for line in feed(args.cycle, args.seed):
            out.write(line)
            out.flush()
            time.sleep(args.interval)
    except (BrokenPipeError, OSError):
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
