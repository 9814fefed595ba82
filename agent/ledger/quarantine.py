"""A damaged ledger is never overwritten: find the damage, move the file aside, decide.

At start the runner calls :func:`prepare` before opening the ledger. A file
that SQLite cannot read, that fails ``PRAGMA quick_check``, or whose schema is
not a scan-agent ledger's is renamed (with its ``-wal`` and ``-shm``, so the
moved copy still opens with every committed transaction) to
``ledger.db.damaged-20260101T080000Z``. Then ``[ledger] on_corrupt`` decides:
``"refuse"`` (the default) stops the agent with :class:`LedgerDamaged`, and
keeps refusing on later starts while a moved-aside copy exists and no new
ledger does; ``"new"`` lets a fresh ledger start, and the caller records an
alarm in it.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = (d / "ledger.db").write_bytes(b"this is not a database" * 100)
>>> inspect(d / "ledger.db")
['file is not a database']
>>> moved = prepare(d / "ledger.db", on_corrupt="new")
>>> moved.path.name.startswith("ledger.db.damaged-"), (d / "ledger.db").exists()
(True, False)
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from agent.ledger import HASHED, SCHEMA_VERSION, LedgerError

log = logging.getLogger(__name__)

ON_CORRUPT = ("refuse", "new")
_SIDE_FILES = ("-wal", "-shm", "-journal")
_TABLES = ("scans", "code_state", "deliveries")


class LedgerDamaged(LedgerError):
    """The ledger is damaged (or was moved aside) and the config says refuse to start."""


@dataclass(frozen=True)
class MovedAside:
    """A damaged ledger that :func:`prepare` renamed, and what was wrong with it."""

    path: Path
    problems: list[str]

    def describe(self) -> str:
        return f"damaged ledger moved aside to {self.path}: {'; '.join(self.problems)}"


def inspect(path: str | Path, max_problems: int = 10) -> list[str]:
    """What is wrong with the ledger file at ``path``; empty when it is sound.

    Opens it read-only: looking never changes the file. A missing or empty
    file is sound (a new ledger will be made there).
    """
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return []
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as problem:
        return [f"cannot open: {problem}"]
    try:
        rows = [r[0] for r in conn.execute(f"PRAGMA quick_check({int(max_problems)})")]
        if rows != ["ok"]:
            return [line for row in rows for line in row.splitlines() if not line.startswith("*** in database")]
        return _schema_problems(conn)
    except sqlite3.Error as problem:
        return [str(problem)]
    finally:
        conn.close()


def _schema_problems(conn: sqlite3.Connection) -> list[str]:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if version == 0:
        # A database no scan-agent finished creating: only an empty one is ours to use.
        return [f"not a scan-agent ledger (has tables {', '.join(sorted(tables))})"] if tables else []
    if version > SCHEMA_VERSION:
        return [f"schema version {version} is newer than this scan-agent's ({SCHEMA_VERSION})"]
    missing = [t for t in _TABLES if t not in tables]
    if missing:
        return [f"schema version {version} but table(s) {', '.join(missing)} missing"]
    columns = {r[1] for r in conn.execute("PRAGMA table_info(scans)")}
    lacking = [c for c in (*HASHED, "hash") if c not in columns]
    return [f"scans lacks column(s) {', '.join(lacking)}"] if lacking else []


def move_aside(path: str | Path, when: datetime | None = None) -> Path:
    """Rename ``path`` and its ``-wal``/``-shm``/``-journal`` to ``<name>.damaged-<UTC time>``."""
    path = Path(path)
    stamp = (when or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.damaged-{stamp}")
    n = 1
    while target.exists():  # two damaged files within one second: never overwrite the first
        n += 1
        target = path.with_name(f"{path.name}.damaged-{stamp}-{n}")
    # The side files first: a crash between renames must not leave a WAL next
    # to a fresh ledger that SQLite would then replay into it.
    for suffix in _SIDE_FILES:
        side = Path(f"{path}{suffix}")
        if side.exists():
            side.rename(f"{target}{suffix}")
    path.rename(target)
    return target


def moved_aside_copies(path: str | Path) -> list[Path]:
    """Damaged ledgers moved aside from ``path`` earlier, oldest first."""
    path = Path(path)
    return sorted(p for p in path.parent.glob(f"{path.name}.damaged-*") if not p.name.endswith(_SIDE_FILES))


def prepare(path: str | Path, *, on_corrupt: str = "refuse", when: datetime | None = None) -> MovedAside | None:
    """Check the ledger at ``path`` before it is opened for writing.

    Returns ``None`` when it is sound (or absent with nothing moved aside),
    a :class:`MovedAside` when it was damaged, moved aside and ``on_corrupt``
    is ``"new"``; raises :class:`LedgerDamaged` when ``on_corrupt`` is ``"refuse"``.
    """
    if on_corrupt not in ON_CORRUPT:
        raise ValueError(f"on_corrupt {on_corrupt!r}; allowed: {', '.join(ON_CORRUPT)}")
    path = Path(path)
    if str(path) == ":memory:":
        return None
    problems = inspect(path)
    if not problems:
        earlier = moved_aside_copies(path)
        if earlier and not path.exists() and on_corrupt == "refuse":
            raise LedgerDamaged(
                f"no ledger at {path}, and a damaged one was moved aside to {earlier[-1]}; refusing to start "
                'a new ledger. Restore a good copy, or set [ledger] on_corrupt = "new" to start afresh'
            )
        return None
    moved = MovedAside(move_aside(path, when), problems)
    log.error("ALARM ledger_damaged: %s", moved.describe())
    if on_corrupt == "refuse":
        raise LedgerDamaged(
            f'{moved.describe()}. Refusing to start a new ledger ([ledger] on_corrupt = "refuse"); '
            f'inspect it with: scan-agent ledger verify --db {moved.path}; set on_corrupt = "new" to start afresh'
        )
    return moved
