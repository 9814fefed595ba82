"""Realistic supplier manifests for tests and benches, deterministic by seed.

>>> m = make_manifest("DN00000001", products=2, cases=2, units_per_case=6, middle_per_case=2, partial=1, mixed=1)
>>> [line["quantity"] for line in m["lines"]]
[9, 5]
>>> sum(1 for c in m["codes"] if c["level"] == "unit")
14
>>> make_manifest("DN1", seed=3) == make_manifest("DN1", seed=3)
True
"""

from __future__ import annotations

import random


def code(product_id: str, serial: int, rng: random.Random | None = None) -> str:
    """A 20-digit code: product id (7), serial (9), 4 check characters.

    The platform's check algorithm is not public and the agent checks only the
    structure, so the check characters are just digits (random when ``rng`` is given).

    >>> code("8123456", 42)
    '81234560000000420042'
    """
    check = rng.randrange(10_000) if rng is not None else serial % 10_000
    return f"{product_id}{serial:09d}{check:04d}"


def make_manifest(
    bill_code: str,
    *,
    products: int = 1,
    cases: int = 1,
    units_per_case: int = 600,
    middle_per_case: int = 0,
    mixed: int = 0,
    partial: int = 0,
    loose: int = 0,
    seed: int = 0,
) -> dict:
    """A JSON-ready manifest whose line quantities match its unit codes.

    - ``cases`` full single-product cases, spread round-robin over ``products``;
      the last ``partial`` of them are 零箱: marked ``partial`` and short of units;
    - ``middle_per_case`` middle packs per case (it must divide ``units_per_case``);
    - ``mixed`` 拼箱 cases, each holding units of every product, with no ratio;
    - ``loose`` units per product with no parent.

    Every pack carries its ratio (``1:N``, or ``1:M:N`` with middle packs).
    """
    if middle_per_case and units_per_case % middle_per_case:
        raise ValueError(f"{units_per_case} units do not split into {middle_per_case} middle packs")
    if partial > cases:
        raise ValueError("partial counts cases among the cases; it cannot exceed them")
    rng = random.Random(seed)
    # Product ids start with 8 (the platform's prefix) and differ per packaging level,
    # as real ones do: the case, middle and unit of one drug have three ids.
    base = 8_100_000 + rng.randrange(10_000) * 10  # room for 60,000 products below 9,000,000
    unit_ids = [str(base + 3 * 10 * p) for p in range(products)]
    middle_ids = [str(base + 3 * 10 * p + 10) for p in range(products)]
    case_ids = [str(base + 3 * 10 * p + 20) for p in range(products)]
    mixed_case_id = str(base + 3 * 10 * products)
    serial = rng.randrange(1, 10**8)
    codes: list[dict] = []
    per_product = [0] * products

    def next_code(product_id: str) -> str:
        nonlocal serial
        serial += 1
        return code(product_id, serial, rng)

    def units(parent: str | None, p: int, count: int) -> None:
        for _ in range(count):
            codes.append({"code": next_code(unit_ids[p]), "level": "unit", "parent": parent})
        per_product[p] += count

    for n in range(cases):
        p = n % products
        short = n >= cases - partial
        count = rng.randrange(1, units_per_case) if short and units_per_case > 1 else units_per_case
        case = next_code(case_ids[p])
        ratio = f"1:{middle_per_case}:{units_per_case}" if middle_per_case else f"1:{units_per_case}"
        entry: dict = {"code": case, "level": "case", "parent": None, "ratio": ratio}
        if short:
            entry["partial"] = True
        codes.append(entry)
        if not middle_per_case:
            units(case, p, count)
            continue
        per_middle = units_per_case // middle_per_case
        left = count
        while left > 0:  # a partial case: full middle packs, then one short one
            middle = next_code(middle_ids[p])
            take = min(per_middle, left)
            middle_entry: dict = {"code": middle, "level": "middle", "parent": case, "ratio": f"1:{per_middle}"}
            if take < per_middle:
                middle_entry["partial"] = True
            codes.append(middle_entry)
            units(middle, p, take)
            left -= take
    for _ in range(mixed):
        case = next_code(mixed_case_id)
        codes.append({"code": case, "level": "case", "parent": None})
        share = max(1, units_per_case // products)
        for p in range(products):
            units(case, p, share)
    for p in range(products):
        units(None, p, loose)
    lines = [
        {
            "product_id": unit_ids[p],
            "name": f"Test drug {p + 1} 10mg x 24",
            "batch": f"B{seed % 1000:03d}{p:03d}",
            "expiry": f"{2027 + p % 3}-{1 + p % 12:02d}-28",
            "quantity": per_product[p],
        }
        for p in range(products)
        if per_product[p]
    ]
    return {
        "bill_code": bill_code,
        "supplier": "Test Pharma Distribution Co.",
        "ship_date": "2026-11-20",
        "lines": lines,
        "codes": codes,
    }
