"""The supplier's manifests in the ledger: their codes, and the packs a case code stands for.

A manifest is imported as one ``manifest`` entry row of ``scans`` (its bill, lines
and the digest of its codes, in the hash chain) and its codes as rows of
``manifest_codes`` (code, bill, level, parent), which :func:`check_manifests`
holds against that digest. The pipeline's ledger writes them; this module only
reads and counts, on whatever connection it is given.

>>> case, unit = "81234560000000000017", "81234560000000000024"
>>> codes_digest([(case, "case", None, "", ""), (unit, "unit", case, "B1", "")])[0]
2
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

#: Packaging levels, outermost first: a case (箱码) holds middle packs (中包码) or units.
PACK_LEVELS = ("case", "middle")


@dataclass(frozen=True)
class ManifestHit:
    """A scanned code as a manifest knows it."""

    code: str
    bill_code: str
    level: str
    parent: str | None
    batch: str
    expiry: str

    @property
    def is_pack(self) -> bool:
        return self.level in PACK_LEVELS


def codes_digest(rows: Iterable[Sequence]) -> tuple[int, str]:
    """``(count, sha256 hex)`` of a bill's code rows ``(code, level, parent, batch, expiry)``,
    sorted by code: the same for the rows as imported and as read back."""
    digest = hashlib.sha256()
    count = 0
    for row in sorted(rows, key=lambda r: r[0]):
        digest.update(json.dumps(list(row), separators=(",", ":")).encode())
        digest.update(b"\n")
        count += 1
    return count, digest.hexdigest()


def insert_codes(conn: sqlite3.Connection, bill_code: str, rows: Iterable[Sequence]) -> None:
    """Insert a bill's code rows ``(code, level, parent, batch, expiry)`` (inside the caller's transaction)."""
    conn.executemany(
        "INSERT INTO manifest_codes (code, bill_code, level, parent, batch, expiry) VALUES (?, ?, ?, ?, ?, ?)",
        ((row[0], bill_code, *row[1:]) for row in rows),
    )


def stored_rows(conn: sqlite3.Connection, bill_code: str) -> list[tuple]:
    """A bill's code rows as stored: ``(code, level, parent, batch, expiry)``."""
    return [
        tuple(row)
        for row in conn.execute(
            "SELECT code, level, parent, batch, expiry FROM manifest_codes WHERE bill_code = ?", (bill_code,)
        )
    ]


def manifest_row(conn: sqlite3.Connection, bill_code: str) -> sqlite3.Row | None:
    """The ``manifest`` entry row of ``bill_code`` (through the entry index), or None."""
    return conn.execute(
        "SELECT * FROM scans WHERE record IS NOT NULL AND document = ? AND verdict = 'manifest' ORDER BY id LIMIT 1",
        (bill_code,),
    ).fetchone()


def find(conn: sqlite3.Connection, code: str, bill_code: str | None = None) -> ManifestHit | None:
    """``code`` in manifest ``bill_code``, or (``bill_code`` None) in the latest bill that lists it."""
    if bill_code is not None:
        row = conn.execute(_FIND_IN_BILL, (code, bill_code)).fetchone()
    else:
        row = conn.execute(_FIND_LATEST, (code,)).fetchone()
    return None if row is None else ManifestHit(*row[:6])


def units_under(conn: sqlite3.Connection, bill_code: str, code: str) -> tuple[list[str], list[str]]:
    """``(units, packs)``: every unit code below pack ``code`` in ``bill_code``, and the
    middle packs between, each in code order."""
    units: list[str] = []
    packs: list[str] = []
    level = [code]
    while level:
        below = conn.execute(
            f"SELECT code, level FROM manifest_codes WHERE bill_code = ? AND parent IN ({','.join('?' * len(level))})"
            " ORDER BY code",
            (bill_code, *level),
        ).fetchall()
        level = []
        for child, child_level in below:
            if child_level == "unit":
                units.append(child)
            else:
                packs.append(child)
                level.append(child)
    return units, packs


def document_lines(record: Mapping) -> list[dict]:
    """A manifest's lines as a delivery document expects them: one per product, quantities summed
    (a product shipped in two batches is one line to count against; batches are reconciled at close)."""
    lines: dict[str, dict] = {}
    for line in record["lines"]:
        item = lines.setdefault(
            line["product_id"], {"product_id": line["product_id"], "name": line["name"], "expected": 0}
        )
        item["expected"] += line["quantity"]
    return list(lines.values())


def reconcile(
    conn: sqlite3.Connection, bill_code: str, received: Mapping[str, str], unexpected: Sequence[str], *, today: str
) -> dict:
    """A delivery against its manifest at close: per line expected and received, the codes
    missing (a pack wholly missing is named once, not by its units), the codes received
    though not on it, and mismatches: units whose batch or expiry no line of their product
    has (``problem`` ``batch``), or received past their line's expiry date (``expired``;
    ``today`` is the ISO date of the close)."""
    record = json.loads(manifest_row(conn, bill_code)["record"])
    children: dict[str, list[str]] = defaultdict(list)
    level_of: dict[str, str] = {}
    lot: dict[str, tuple[str, str]] = {}
    tops = []
    for code, level, parent, batch, expiry in sorted(stored_rows(conn, bill_code)):
        level_of[code], lot[code] = level, (batch, expiry)
        if parent is None:
            tops.append(code)
        else:
            children[parent].append(code)
    missing_units: dict[str, int] = {}  # pack or unit -> units under it not received (memo)

    def missing_under(code: str) -> int:
        if code not in missing_units:
            if level_of[code] == "unit":
                missing_units[code] = int(code not in received)
            else:
                missing_units[code] = sum(missing_under(child) for child in children[code])
        return missing_units[code]

    def units_in(code: str) -> int:
        return 1 if level_of[code] == "unit" else sum(units_in(child) for child in children[code])

    missing = []
    stack = list(reversed(tops))
    while stack:
        code = stack.pop()
        gone = missing_under(code)
        if not gone:
            continue
        total = units_in(code)
        if gone == total:
            missing.append({"code": code, "level": level_of[code], "units": total})
        else:
            stack.extend(reversed(children[code]))

    lines = [
        {**{k: line[k] for k in ("product_id", "name", "batch", "expiry")}, "expected": line["quantity"], "received": 0}
        for line in record["lines"]
    ]
    by_product: dict[str, list[dict]] = defaultdict(list)
    for line in lines:
        by_product[line["product_id"]].append(line)
    mismatches = []
    for unit in received:
        candidates = by_product.get(unit[:7], [])
        batch, expiry = lot.get(unit, ("", ""))
        line = next(
            (x for x in candidates if (not batch or x["batch"] == batch) and (not expiry or x["expiry"] == expiry)),
            None,
        )
        problem = None
        if line is None and candidates:
            line, problem = candidates[0], "batch"
        elif line is not None and line["expiry"] and line["expiry"] < today:
            problem = "expired"
        if problem is not None:
            mismatches.append(
                {
                    "code": unit,
                    "product_id": unit[:7],
                    "batch": batch or line["batch"],
                    "expiry": expiry or line["expiry"],
                    "line_batch": line["batch"],
                    "problem": problem,
                }
            )
        if line is not None:
            line["received"] += 1
    short = sum(line["received"] != line["expected"] for line in lines)
    return {
        "manifest": bill_code,
        "supplier": record["supplier"],
        "lines": lines,
        "missing": missing,
        "unexpected": list(unexpected),
        "mismatches": mismatches,
        "discrepancies": len(missing) + len(unexpected) + len(mismatches) + short,
        "units": dict(Counter({"expected": sum(x["expected"] for x in lines), "received": len(received)})),
    }


def check_manifests(conn: sqlite3.Connection) -> list[str]:
    """Each imported manifest's codes against the digest its chained entry row recorded;
    a problem per bill whose codes were altered, added or removed."""
    problems = []
    for row in conn.execute(
        "SELECT id, document, record FROM scans INDEXED BY scans_entries"
        " WHERE record IS NOT NULL AND verdict = 'manifest' ORDER BY id"
    ):
        record = json.loads(row["record"])
        count, digest = codes_digest(stored_rows(conn, row["document"]))
        if (count, digest) != (record["codes"], record["codes_sha256"]):
            problems.append(
                f"manifest {row['document']} (scan id {row['id']}): its codes do not match the digest recorded"
                f" ({count} codes stored, {record['codes']} imported)"
            )
    stray = conn.execute(
        "SELECT DISTINCT bill_code FROM manifest_codes WHERE bill_code NOT IN"
        " (SELECT document FROM scans INDEXED BY scans_entries WHERE record IS NOT NULL AND verdict = 'manifest')"
    ).fetchall()
    problems.extend(f"manifest codes of {row[0]} have no manifest row in the chain" for row in stray)
    return problems


_FIND_IN_BILL = (
    "SELECT code, bill_code, level, parent, batch, expiry FROM manifest_codes WHERE code = ? AND bill_code = ?"
)
# The latest bill for a code: the one whose manifest row came last (a bill is imported once).
_FIND_LATEST = (
    "SELECT code, bill_code, level, parent, batch, expiry FROM manifest_codes WHERE code = ?"
    " ORDER BY (SELECT MAX(id) FROM scans INDEXED BY scans_entries WHERE record IS NOT NULL"
    " AND document = manifest_codes.bill_code AND verdict = 'manifest') DESC LIMIT 1"
)
