"""The scans fed to ``scan-agent run`` on stdin in the power-cut VM: a steady stream.

    python -m tests.powercut.feed CYCLE [--seed N] [--interval S] [--scenario plain|documents|cases|receipts]

Each cycle has a scenario (:func:`scenario`). ``plain``: new trace codes
(distinct in every cycle: the cycle number is part of them), codes dispensed
earlier in the cycle again (answered ``duplicate``) and product barcodes
(``rejected``), one line every ``interval`` seconds until the pipe closes.
``documents`` (:func:`document_lines`): the same scans inside prescriptions
opened by their barcode, most of them closed by the close code, so that the
power often goes while one is open. ``cases`` (:func:`case_lines`): a receiving
dock scanning the 600-unit cases of the cycle's manifest (:func:`cases_manifest`,
imported before the agent starts), with units, repeats and wrong codes between
them, inside a delivery in every other such cycle. ``receipts``: the plain scans, the
agent's outbox draining over MQTT to a back end on the host that sends receipts
(:mod:`tests.powercut.uplink`).
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
import time
from collections import defaultdict
from collections.abc import Sequence

#: The scenarios, in the order the cycles take them up (:func:`scenario`).
SCENARIOS = ("plain", "documents", "cases", "receipts")


def scenario(cycle: int, rotation: Sequence[str] = SCENARIOS) -> str:
    """The scenarios of ``rotation`` in turn, from cycle 1: cycles 1-4 cover all four.

    >>> [scenario(c) for c in range(1, 6)]
    ['plain', 'documents', 'cases', 'receipts', 'plain']
    >>> [scenario(c, ("receipts",)) for c in range(1, 3)]
    ['receipts', 'receipts']
    """
    return rotation[(cycle - 1) % len(rotation)]


def code(cycle: int, i: int) -> bytes:
    """A valid 20-digit trace code, distinct for each (cycle, i)."""
    return b"8%04d%015d" % (cycle, i)


def lines(cycle: int, seed: int):
    """Loose scans. The first line is the close code: a document the last cut left open
    (a delivery, say) is closed first, so these scans are plain dispensing."""
    rng = random.Random(seed)
    made = 0
    yield CLOSE + b"\n"
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


#: Cases in each cycle's manifest: with 4 middle packs of 150 units, and without.
CASES_WITH_MIDDLES = 10
CASES_FLAT = 10
UNITS_PER_CASE = 600
#: Small scans (units, repeats, wrong codes) between two packs: spreads the packs over the
#: 3-15 s before the cut, so that it often lands inside a case's expansion.
BETWEEN_PACKS = (3, 9)


def bill_code(cycle: int) -> str:
    return f"DN{cycle % 10**8:08d}"


def delivery(cycle: int) -> bool:
    """Whether a cases cycle scans inside a delivery (opened by its bill code): every other
    one, from the first (each boot has a cases kiosk: odd boots).

    >>> [delivery(c) for c in (1, 2, 3, 4)]
    [True, False, True, False]
    """
    return cycle % 2 == 1


def cases_manifest(cycle: int) -> dict:
    """The cycle's supplier manifest (the same on the host and in the VM: deterministic):
    two products, CASES_WITH_MIDDLES cases of 4 middle packs x 150 units and CASES_FLAT
    cases of 600 units, under one bill code."""
    from tests.support.manifests import make_manifest

    bill = bill_code(cycle)
    body = make_manifest(
        bill, products=2, cases=CASES_WITH_MIDDLES, units_per_case=UNITS_PER_CASE, middle_per_case=4, seed=2 * cycle
    )
    products = {line["product_id"] for line in body["lines"]}
    for seed in itertools.count(2 * cycle + 1, 1000):  # another seed whose product ids differ
        flat = make_manifest(bill, products=2, cases=CASES_FLAT, units_per_case=UNITS_PER_CASE, seed=seed)
        if not products & {line["product_id"] for line in flat["lines"]}:
            break
    body["lines"] += flat["lines"]
    body["codes"] += flat["codes"]
    return body


def pack_contents(body: dict) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    """Every case and middle pack of a manifest -> (its units, its middle packs), each sorted."""
    children: dict[str | None, list[dict]] = defaultdict(list)
    for row in body["codes"]:
        children[row["parent"]].append(row)

    def inside(code: str) -> tuple[list[str], list[str]]:
        units, middles = [], []
        for child in children[code]:
            if child["level"] == "unit":
                units.append(child["code"])
            else:
                middles.append(child["code"])
                units += inside(child["code"])[0]
        return units, middles

    contents = {}
    for row in body["codes"]:
        if row["level"] in ("case", "middle"):
            units, middles = inside(row["code"])
            contents[row["code"]] = (tuple(sorted(units)), tuple(sorted(middles)))
    return contents


def case_lines(cycle: int, seed: int):
    """The dock's scans: the bill code first (a delivery opens against the manifest) or,
    outside a delivery, the close code (a document the last cut left open is closed); then
    the manifest's cases in a random order, one case with middle packs opened and its middle
    packs scanned one by one, and between two packs 3-9 small scans: a unit of a pack
    received already or a pack again (``duplicate``), a product barcode (``rejected``), now
    and then a unit of a case not scanned yet (received alone; its case is then refused).
    Once every pack is scanned, only the small scans."""
    rng = random.Random(seed)
    body = cases_manifest(cycle)
    contents = pack_contents(body)
    cases = [row["code"] for row in body["codes"] if row["level"] == "case"]
    rng.shuffle(cases)
    split = next(c for c in cases if contents[c][1])
    packs: list[str] = []
    for case in cases:
        packs += list(contents[case][1]) if case == split else [case]
    yield (bill_code(cycle).encode() if delivery(cycle) else CLOSE) + b"\n"
    done: list[str] = []
    last = b""

    def small():
        roll = rng.random()
        if done and roll < 0.45:
            units = contents[rng.choice(done)][0]
            return units[rng.randrange(len(units))].encode()
        if done and roll < 0.6:
            return rng.choice(done).encode()
        if roll < 0.65 and len(done) < len(packs) - 1:
            ahead = contents[packs[rng.randrange(len(done) + 1, len(packs))]][0]
            return ahead[rng.randrange(len(ahead))].encode()
        return b"69%011d" % rng.randrange(10**11)

    for pack in itertools.chain(packs, itertools.repeat(None)):
        if pack is not None:
            yield pack.encode() + b"\n"
            done.append(pack)
            last = pack.encode()
        for _ in range(rng.randint(*BETWEEN_PACKS)):
            line = small()
            while line == last:  # never the same twice in a row (a double read)
                line = small()
            last = line
            yield line + b"\n"


#: The lines each scenario feeds; ``receipts`` scans as ``plain`` does, the uplink on.
FEEDS = {"plain": lines, "documents": document_lines, "cases": case_lines, "receipts": lines}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cycle", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--interval", type=float, default=0.02)
    parser.add_argument("--scenario", choices=SCENARIOS, help="default: the cycle's (scenario())")
    args = parser.parse_args(argv)
    out = sys.stdout.buffer
    try:
        for line in FEEDS[args.scenario or scenario(args.cycle)](args.cycle, args.seed):
            out.write(line)
            out.flush()
            time.sleep(args.interval)
    except (BrokenPipeError, OSError):
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
