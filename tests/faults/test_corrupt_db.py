"""Corrupt database at start: never overwritten, moved aside, alarm, new ledger only if allowed."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from agent import ledger
from agent.config import ConfigError, parse_toml
from agent.ledger.quarantine import inspect, moved_aside_copies
from tests.faults.ledgers import code, damage, filled_ledger
from tests.support.agent import run_agent

DAMAGE = ("page", "pages", "header", "truncated")


def config(tmp_path: Path, db: Path, on_corrupt: str) -> Path:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f'[station]\ndevice_id = "kiosk-f"\nsite_id = "site-f"\n'
        f'[ledger]\npath = "{db}"\non_corrupt = "{on_corrupt}"\n[feedback]\nbackend = "none"\n'
    )
    return cfg


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("how", DAMAGE)
def test_refuses_moves_aside_and_keeps_refusing(tmp_path, how, figures):
    db = filled_ledger(tmp_path / "ledger.db", 400)
    damage(db, how)
    assert inspect(db), "the damage must be detectable"
    before = digest(db)
    cfg = config(tmp_path, db, "refuse")

    result = run_agent("run", "--config", str(cfg), input=code(10_000) + b"\n")

    assert result.returncode == 3, result.stderr
    err = result.stderr.decode()
    assert "REFUSING TO START" in err and "damaged ledger moved aside" in err
    assert "ALARM ledger_damaged" in err
    assert not db.exists()
    [moved] = moved_aside_copies(db)
    assert digest(moved) == before  # not a byte changed
    assert result.stdout == b""  # nothing was decided, so nothing was beeped

    # Restarted (by systemd, say): still refuses, does not start a fresh ledger.
    again = run_agent("run", "--config", str(cfg), input=code(10_001) + b"\n")
    assert again.returncode == 3
    assert "moved aside" in again.stderr.decode()
    assert not db.exists()

    verify = run_agent("ledger", "verify", "--db", str(moved))
    assert verify.returncode == 1
    named = verify.stderr.decode()
    assert "DAMAGED" in named and any(w in named for w in ("Page", "malformed", "not a database"))

    figures.fault = "corrupt database at start (refuse)"
    figures.cycles, figures.sent = 1, 400
    figures.note = (
        "damage: one page, scattered pages, header, truncated; moved aside byte-identical, restart refuses too"
    )


def test_new_ledger_when_allowed_with_alarm(tmp_path, figures):
    db = filled_ledger(tmp_path / "ledger.db", 300, keep_wal=True)
    wal = Path(f"{db}-wal")
    assert wal.stat().st_size > 0
    damage(db, "page")
    db_digest, wal_digest = digest(db), digest(wal)
    cfg = config(tmp_path, db, "new")

    result = run_agent("run", "--config", str(cfg), "--json", input=code(10_000) + b"\n" + code(0) + b"\n")

    assert result.returncode == 0, result.stderr
    assert "ALARM ledger_damaged" in result.stderr.decode()
    [moved] = moved_aside_copies(db)
    assert digest(moved) == db_digest
    assert digest(Path(f"{moved}-wal")) == wal_digest  # the WAL went with it
    conn = ledger.connect(db)
    verdicts = [r["verdict"] for r in conn.execute("SELECT verdict FROM scans ORDER BY id")]
    # A fresh ledger: code 0 was dispensed in the damaged one, but this one cannot know.
    assert verdicts == ["accepted", "accepted"]
    [alarm] = conn.execute("SELECT kind, detail FROM alarms").fetchall()
    assert alarm["kind"] == "ledger_damaged" and str(moved) in alarm["detail"]
    assert ledger.verify(conn).ok
    # The next start finds a sound ledger and no new alarm.
    again = run_agent("run", "--config", str(cfg), input=code(10_002) + b"\n")
    assert again.returncode == 0
    assert conn.execute("SELECT COUNT(*) FROM alarms").fetchone()[0] == 1
    assert len(moved_aside_copies(db)) == 1

    figures.fault = "corrupt database at start (new)"
    figures.cycles, figures.sent = 1, 320
    figures.note = "damaged file and its WAL moved aside byte-identical; alarm row in the new ledger"


def test_foreign_database_is_not_taken_over(tmp_path):
    db = tmp_path / "ledger.db"
    with sqlite3.connect(db) as other:
        other.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    result = run_agent("run", "--config", str(config(tmp_path, db, "refuse")), input=b"")
    assert result.returncode == 3
    assert "not a scan-agent ledger" in result.stderr.decode()


def test_sound_ledger_is_left_alone(tmp_path):
    db = filled_ledger(tmp_path / "ledger.db", 50)
    result = run_agent("run", "--config", str(config(tmp_path, db, "refuse")), input=code(50) + b"\n")
    assert result.returncode == 0, result.stderr
    assert moved_aside_copies(db) == []
    assert ledger.verify(ledger.connect(db)).rows == 51


def test_on_corrupt_is_checked_in_config():
    assert parse_toml("").ledger.on_corrupt == "refuse"
    assert parse_toml('[ledger]\non_corrupt = "new"\n').ledger.on_corrupt == "new"
    with pytest.raises(ConfigError, match=r"\[ledger\] on_corrupt: 'wipe' is not allowed; allowed: refuse, new"):
        parse_toml('[ledger]\non_corrupt = "wipe"\n')
