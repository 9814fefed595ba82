"""scan-agent as a user runs it: a real subprocess of this checkout."""

import csv
import io
import json
import signal
import sqlite3

from tests.support.agent import run_agent, start_agent

A = "81234567890123456789"
B = "81234567890123456790"


def lines(out: bytes) -> list[dict]:
    return [json.loads(line) for line in out.decode().splitlines()]


def test_version():
    result = run_agent("--version")
    assert result.returncode == 0 and result.stdout.decode().startswith("scan-agent ")


def test_check_exit_codes_and_json_fields():
    ok = run_agent("check", A, "--json")
    assert ok.returncode == 0
    (obj,) = lines(ok.stdout)
    assert obj["valid"] and obj["kind"] == "nmpa20" and obj["reason"] is None
    assert (obj["code"], obj["product_id"], obj["serial"]) == (A, "8123456", "789012345")

    mixed = run_agent("check", A, "6901234567892", "12", "--json")
    assert mixed.returncode == 1
    assert [o["reason"] for o in lines(mixed.stdout)] == [None, "product_barcode", "wrong_length"]


def test_check_gs1_needs_the_flag():
    gs1 = "(01)06901234567892(21)ABC"
    assert lines(run_agent("check", gs1, "--json").stdout)[0]["reason"] == "gs1_not_accepted"
    accepted = run_agent("check", gs1, "--json", "--accept-gs1")
    assert accepted.returncode == 0 and lines(accepted.stdout)[0]["kind"] == "gs1"


def test_check_plain_output():
    out = run_agent("check", A, "hello").stdout.decode().splitlines()
    assert out[0].startswith(f"valid nmpa20 {A}")
    assert out[1].startswith("invalid not_numeric hello")


def test_run_decides_stdin_lines_and_ends_at_eof(tmp_path):
    db = tmp_path / "l.db"
    feed = f"{A}\r\n{A}\n6901234567892\n{B}\n".encode()
    result = run_agent("run", "--db", str(db), "--json", input=feed)
    assert result.returncode == 0, result.stderr
    out = lines(result.stdout)
    assert [o["verdict"] for o in out] == ["accepted", "double_read", "rejected", "accepted"]
    assert out[2]["reason"] == "product_barcode"
    assert [o["seq"] for o in out] == [1, None, 2, 3]
    assert all(o["event_id"] for o in out)
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT COUNT(*) FROM scans").fetchone()[0] == 4


def test_run_movement_override_and_duplicate_earlier(tmp_path):
    db = str(tmp_path / "l.db")
    run_agent("run", "--db", db, "--movement", "receive", input=f"{A}\n".encode())
    result = run_agent("run", "--db", db, "--movement", "receive", "--json", input=f"{A}\n".encode())
    (dup,) = lines(result.stdout)
    assert dup["verdict"] == "duplicate" and dup["reason"] == "already_received"
    assert dup["earlier"]["movement"] == "receive" and dup["earlier"]["seq"] == 1


def test_run_builtin_default_uses_the_user_data_dir(tmp_path):
    result = run_agent("run", input=f"{A}\n".encode(), HOME=str(tmp_path), XDG_DATA_HOME=str(tmp_path / "share"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().startswith(f"accepted {A} seq=1 dispense")
    assert (tmp_path / "share" / "scan-agent" / "ledger.db").exists()
    assert b"accepted" in result.stderr  # console feedback


def test_sigterm_ends_run_cleanly_after_committing(tmp_path):
    db = tmp_path / "l.db"
    proc = start_agent("run", "--db", str(db), "--json")
    proc.stdin.write(f"{A}\n".encode())
    proc.stdin.flush()
    first = json.loads(proc.stdout.readline())
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    assert first["verdict"] == "accepted"
    assert run_agent("ledger", "verify", "--db", str(db)).returncode == 0


def test_bad_config_refuses_to_start_and_names_the_key(tmp_path):
    cfg = tmp_path / "agent.toml"
    cfg.write_text('[station]\nmovement = "sell"\n')
    result = run_agent("run", "--config", str(cfg), input=b"")
    assert result.returncode == 2
    assert "[station] movement" in result.stderr.decode()


def test_unopenable_ledger_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run_agent("run", "--db", str(blocker / "ledger.db"), input=b"")
    assert result.returncode == 2
    assert "cannot open the ledger" in result.stderr.decode()


def test_ledger_verify_and_tamper(tmp_path):
    db = tmp_path / "l.db"
    run_agent("run", "--db", str(db), input=f"{A}\n{B}\nxx\n".encode())
    good = run_agent("ledger", "verify", "--db", str(db))
    assert good.returncode == 0 and "3 scans" in good.stdout.decode()

    conn = sqlite3.connect(db)
    conn.execute("DROP TRIGGER scans_no_update")
    conn.execute("UPDATE scans SET verdict = 'accepted' WHERE id = 3")
    conn.commit()
    bad = run_agent("ledger", "verify", "--db", str(db))
    assert bad.returncode == 1
    assert "scan id 3" in bad.stderr.decode()


def test_ledger_verify_of_a_missing_file(tmp_path):
    result = run_agent("ledger", "verify", "--db", str(tmp_path / "none.db"))
    assert result.returncode != 0 and "no ledger" in result.stderr.decode()
    assert not (tmp_path / "none.db").exists()


def test_ledger_export_csv_and_jsonl(tmp_path):
    db = tmp_path / "l.db"
    run_agent("run", "--db", str(db), input=f"{A}\n6901234567892\n".encode())
    rows = list(csv.DictReader(io.StringIO(run_agent("ledger", "export", "--db", str(db)).stdout.decode())))
    assert [r["verdict"] for r in rows] == ["accepted", "rejected"]
    assert rows[0]["code"] == A and rows[0]["hash"]
    jl = lines(run_agent("ledger", "export", "--db", str(db), "--format", "jsonl").stdout)
    assert [r["seq"] for r in jl] == [1, 2]
    future = run_agent("ledger", "export", "--db", str(db), "--format", "jsonl", "--since", "2999-01-01T00:00:00Z")
    assert future.stdout == b""
    past = run_agent("ledger", "export", "--db", str(db), "--format", "jsonl", "--since", "2020-01-01")
    assert len(lines(past.stdout)) == 2
    bad = run_agent("ledger", "export", "--db", str(db), "--since", "yesterday")
    assert bad.returncode != 0 and "ISO-8601" in bad.stderr.decode()


def test_python_dash_m_agent_is_the_same_cli():
    assert run_agent("check", A).returncode == 0
