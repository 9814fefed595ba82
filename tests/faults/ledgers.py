"""Ledgers for the fault tests: filled with scans, then damaged on purpose."""

from __future__ import annotations

import shutil
from pathlib import Path

from agent import codes
from agent.ledger import Ledger
from agent.read import Read

PAGE = 4096


def code(i: int) -> bytes:
    """A valid 20-digit trace code, distinct for each ``i``."""
    return f"8{i:019d}".encode()


def filled_ledger(path: Path, scans: int, *, keep_wal: bool = False) -> Path:
    """A ledger at ``path`` holding ``scans`` accepted scans.

    With ``keep_wal`` the last scans stay in the ``-wal`` file (as after a
    power cut): the copy is taken while the ledger is still open.
    """
    ledger = Ledger(_connect_no_checkpoint(path), device_id="kiosk-f", site_id="site-f")
    for i in range(scans):
        read = Read(code(i), "stdin", "stdin:console")
        ledger.decide_and_record(read, "dispense", codes.parse(read.raw))
    if keep_wal:
        ledger.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        for i in range(scans, scans + 20):
            read = Read(code(i), "stdin", "stdin:console")
            ledger.decide_and_record(read, "dispense", codes.parse(read.raw))
        copy = path.with_name(path.name + ".copy")
        for suffix in ("", "-wal"):
            shutil.copyfile(f"{path}{suffix}", f"{copy}{suffix}")
        ledger.conn.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        for suffix in ("", "-wal"):
            Path(f"{copy}{suffix}").rename(f"{path}{suffix}")
    else:
        ledger.close()
    return path


def _connect_no_checkpoint(path: Path):
    from agent.ledger import connect

    conn = connect(path)
    conn.execute("PRAGMA wal_autocheckpoint=0")
    return conn


def damage(path: Path, how: str) -> None:
    """Damage the database file the way disks and power cuts do."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        if how == "page":  # one page in the middle overwritten with garbage
            f.seek((size // PAGE // 2) * PAGE)
            f.write(b"\x55" * PAGE)
        elif how == "header":  # the first page's header clobbered
            f.seek(0)
            f.write(b"\x00" * 100)
        elif how == "truncated":  # the tail of the file lost
            f.truncate((size // PAGE // 2) * PAGE)
        elif how == "pages":  # several scattered pages zeroed
            for page in range(2, size // PAGE, 5):
                f.seek(page * PAGE)
                f.write(b"\x00" * PAGE)
        else:
            raise ValueError(how)
