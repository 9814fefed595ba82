"""Fuzzed scanner output from a fixed seed: random bytes, and valid codes mutated the
ways a bad cable, a wrong keyboard layout or a confused scanner mutates them."""

from __future__ import annotations

import random
from collections.abc import Iterator

SEEDS = (
    b"81234567890123456789",
    b"]C081234567890123456789\r\n",
    b"6901234567892",
    b"]d2\x1d0106901234567892" + b"21ABC123\x1d17261231" + b"10LOT42",
    b"(01)06901234567892(21)X",
    "８１２３４５６７８９０１２３４５６７８９".encode(),
)


def fuzzed(count: int, seed: int = 9) -> Iterator[bytes]:
    rng = random.Random(seed)
    for _ in range(count):
        kind = rng.random()
        if kind < 0.3:
            yield rng.randbytes(rng.choice((0, 1, 2, 13, 20, 21, 64, 600)))
        elif kind < 0.35:
            yield rng.randbytes(rng.randrange(1, 5000))  # far longer than any scan
        else:
            data = bytearray(rng.choice(SEEDS))
            for _ in range(rng.randrange(1, 4)):
                at = rng.randrange(len(data) + 1)
                op = rng.randrange(4)
                if op == 0 and data:
                    del data[min(at, len(data) - 1)]
                elif op == 1:
                    data.insert(at, rng.randrange(256))
                elif op == 2 and data:
                    data[min(at, len(data) - 1)] = rng.choice(b"0123456789\x1d\r\n\x00\xff]")
                else:
                    data[at:at] = rng.choice((b"\x1d", b"\r\n", b"]C0", b"\xef\xbb\xbf", b"\x1b[A"))
            yield bytes(data)
