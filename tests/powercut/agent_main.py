"""``scan-agent`` as the power-cut VM runs it: the real command line, plus the control's switch.

    python -m tests.powercut.agent_main run --config F --json

With ``SCAN_AGENT_POWERCUT_CONTROL=sync-off`` in the environment every ledger
connection is opened with ``PRAGMA synchronous=OFF`` instead of ``FULL``: the
control run, which must lose decisions or break the chain when the power goes,
so that the suite shows it can fail. The switch lives only here, in the test
tree: nothing in ``agent/`` or its config can reach it. Without the variable
this is exactly ``scan-agent``.
"""

from __future__ import annotations

import os
import re
import sqlite3
import sys
import types

SWITCH = "SCAN_AGENT_POWERCUT_CONTROL"
_FULL = re.compile(r"\s*PRAGMA\s+synchronous\s*=\s*FULL\s*;?\s*", re.IGNORECASE)


class _SyncOffConnection(sqlite3.Connection):
    """A connection that turns the ledger's ``PRAGMA synchronous=FULL`` into ``OFF``."""

    def execute(self, sql, *args, **kwargs):
        if isinstance(sql, str) and _FULL.fullmatch(sql):
            sql = "PRAGMA synchronous=OFF"
        return super().execute(sql, *args, **kwargs)


def sync_off() -> None:
    """Make :func:`agent.ledger.sqlite.connect` open connections with ``synchronous=OFF``.

    It replaces the ``sqlite3`` that module sees with one whose ``connect`` uses
    :class:`_SyncOffConnection`, so every caller of ``connect`` (however imported) gets it.
    """
    from agent.ledger import sqlite as ledger_sqlite

    patched = types.ModuleType("sqlite3_sync_off")
    patched.__dict__.update(sqlite3.__dict__)
    patched.connect = lambda *a, **kw: sqlite3.connect(*a, factory=_SyncOffConnection, **kw)
    ledger_sqlite.sqlite3 = patched


def synchronous() -> int:
    """What ``PRAGMA synchronous`` a ledger connection gets here (0 OFF, 2 FULL)."""
    from agent.ledger.sqlite import connect

    conn = connect(":memory:")
    try:
        return conn.execute("PRAGMA synchronous").fetchone()[0]
    finally:
        conn.close()


def main(argv: list[str]) -> int:
    control = os.environ.get(SWITCH, "")
    if control not in ("", "sync-off"):
        print(f"agent_main: {SWITCH}={control!r}: only 'sync-off' is known", file=sys.stderr)
        return 2
    if control:
        sync_off()
    level = synchronous()
    if level != (0 if control else 2):
        print(f"agent_main: ledger connections get synchronous={level}, not what was asked", file=sys.stderr)
        return 2
    print(
        f"agent_main: ledger connections open with synchronous={'OFF (control)' if control else 'FULL'}",
        file=sys.stderr,
        flush=True,
    )
    from agent import cli

    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
