"""Opening a ledger connection: every one gets the same pragmas.

>>> conn = connect(":memory:")
>>> conn.execute("PRAGMA synchronous").fetchone()[0]  # 2 = FULL
2
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

#: The pipeline's page cache: the upper B-tree levels of tens of millions of scans.
CACHE_KIB = 64_000


def connect(path: str | Path) -> sqlite3.Connection:
    """A connection with the pragmas every ledger connection must have."""
    if str(path) != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=10.0)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn
