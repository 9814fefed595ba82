"""The control socket and the ledger lock: real unix sockets, real flock, real SQLite,
a real pipeline, and a real agent process where the point is the process."""

import json
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from agent import control
from agent.ledger import Ledger
from agent.ledger.documents import DocumentError
from agent.pipeline import Pipeline
from agent.station import Station
from tests.test_cli_documents import IBU, Agent, code, count_rows, write_config

NOBODY = 65534
OPEN = {"verb": "open_document", "body": {"id": "S-1", "kind": "sale"}}


@pytest.fixture
def served(tmp_path):
    """A ledger, its pipeline and station, and a control server with a short client timeout."""
    path = tmp_path / "ledger.db"
    ledger = Ledger.open(path, device_id="kiosk-1", site_id="site-1")
    pipeline = Pipeline(ledger)
    pipeline.start()
    server = control.ControlServer(path, Station(pipeline), timeout_s=0.5)
    server.start()
    yield SimpleNamespace(server=server, path=path, ledger=ledger)
    server.stop()
    pipeline.stop()
    ledger.close()


def exchange(path, data: bytes, *, end: bool = True) -> dict:
    """Send raw bytes to the control socket of the ledger at ``path``; the JSON reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(control.socket_name(path))
        sock.sendall(data)
        if end:
            sock.shutdown(socket.SHUT_WR)
        return json.loads(sock.makefile("rb").read())


def rows(ledger: Ledger) -> int:
    return ledger.conn.execute("SELECT COUNT(*) FROM scans").fetchone()[0]


@pytest.mark.parametrize(
    ("request_bytes", "field"),
    [
        (b"{not json\n", "request"),
        (b"[1, 2]\n", "request"),
        (b'{"verb": "drop_table"}\n', "verb"),
        (b'{"verb": "close_document", "body": "S-1"}\n', "body"),
        (b'{"verb": "close_document", "body": {}, "sudo": true}\n', "sudo"),
        (b'{"verb": "open_document", "body": {"id": "S-1", "kind": "invoice"}}\n', "kind"),
        (b"[" * 100_000 + b"\n", "request"),  # deeper than the JSON parser goes
        (b"", "request"),
    ],
)
def test_a_bad_request_gets_an_error_and_the_server_serves_on(served, request_bytes, field):
    path, ledger = served.path, served.ledger
    before = rows(ledger)
    reply = exchange(path, request_bytes)
    assert reply["ok"] is False and reply["field"] == field and reply["error"]
    assert rows(ledger) == before
    assert exchange(path, json.dumps(OPEN).encode() + b"\n")["ok"] is True
    assert rows(ledger) == before + 1


def test_a_reply_carries_the_rows_and_the_station_hears_cli(served):
    path, ledger = served.path, served.ledger
    result = control.ask(path, "open_document", {"id": "S-1", "kind": "sale"})
    (row,) = result["rows"]
    assert row["verdict"] == "opened" and row["document"] == {"id": "S-1", "kind": "sale"}
    source = ledger.conn.execute("SELECT source_kind, source_id FROM scans WHERE event_id = ?", (row["event_id"],))
    assert tuple(source.fetchone()) == ("cli", control.user_name(os.getuid()))
    with pytest.raises(DocumentError) as refused:
        control.ask(path, "open_document", {"id": "S-1", "kind": "sale"})
    assert refused.value.field == "id"


def test_an_oversized_request_is_refused_unread(served):
    path = served.path
    big = json.dumps({"verb": "open_document", "body": {"id": "x" * (control.MAX_REQUEST_BYTES + 10)}})
    reply = exchange(path, big.encode() + b"\n")
    assert reply == {"ok": False, "field": "request", "error": f"larger than {control.MAX_REQUEST_BYTES} bytes"}
    assert exchange(path, json.dumps(OPEN).encode())["ok"] is True  # no newline: the end of input ends it


def test_a_slow_client_is_cut_off_and_the_next_one_served(served):
    path, ledger = served.path, served.ledger
    before = rows(ledger)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as slow:
        slow.settimeout(10)
        slow.connect(control.socket_name(path))
        started = time.monotonic()
        slow.sendall(b'{"verb": "open_')  # and then nothing
        reply = json.loads(slow.makefile("rb").read())
        waited = time.monotonic() - started
    assert reply["field"] == "request" and "not received in time" in reply["error"]
    assert 0.4 < waited < 5
    assert rows(ledger) == before
    assert exchange(path, json.dumps(OPEN).encode() + b"\n")["ok"] is True


def test_a_peer_not_allowed_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "ledger.db"
    ledger = Ledger.open(path, device_id="kiosk-1", site_id="site-1")
    pipeline = Pipeline(ledger)
    pipeline.start()
    server = control.ControlServer(path, Station(pipeline), allowed_uids=frozenset({4242}))
    server.start()
    try:
        reply = exchange(path, json.dumps(OPEN).encode() + b"\n")
        assert reply["ok"] is False and reply["field"] == "peer"
        assert f"uid {os.getuid()} may not command this agent" in reply["error"]
        assert rows(ledger) == 0
    finally:
        server.stop()
        pipeline.stop()
        ledger.close()


SYSTEM_PYTHON = Path("/usr/bin/python3")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another user")
@pytest.mark.skipif(not SYSTEM_PYTHON.exists(), reason="needs a python another user may run")
def test_another_user_is_refused_by_a_real_agent(tmp_path):
    config, ledger = write_config(tmp_path)
    agent = Agent(config)
    try:
        agent.scan(code(IBU, 1))
        client = (
            "import json, socket, sys\n"
            "s = socket.socket(socket.AF_UNIX)\n"
            "s.connect(bytes.fromhex(sys.argv[1]))\n"
            's.sendall(b\'{"verb": "open_document", "body": {"id": "S-1", "kind": "sale"}}\\n\')\n'
            "print(s.makefile().read())\n"
        )
        # The client needs no access to the checkout or the ledger: the socket is all there is.
        result = subprocess.run(
            [str(SYSTEM_PYTHON), "-I", "-c", client, control.socket_name(ledger).hex()],
            user=NOBODY,
            group=NOBODY,
            extra_groups=[],
            capture_output=True,
            timeout=30,
            cwd="/",
        )
        reply = json.loads(result.stdout)
        assert reply["ok"] is False and reply["field"] == "peer", result.stderr
        assert count_rows(ledger) == 1
    finally:
        assert agent.stop()[0] == 0


def test_a_real_agent_answers_a_malformed_request_and_then_a_good_one(tmp_path):
    config, ledger = write_config(tmp_path)
    agent = Agent(config)
    try:
        agent.scan(code(IBU, 1))
        reply = exchange(ledger, b"GET / HTTP/1.0\r\n\r\n")
        assert reply["ok"] is False and reply["field"] == "request"
        result = control.send(ledger, "open_document", {"id": "S-1", "kind": "sale"})
        assert result["rows"][0]["verdict"] == "opened"
        assert agent.next(lambda d: d["verdict"] == "opened")["document"]["id"] == "S-1"
    finally:
        status, stderr = agent.stop()
    assert status == 0, stderr
    assert "control: open_document from" in stderr  # the agent logs who commanded it


def test_stop_frees_the_name(served):
    server, path = served.server, served.path
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 2  # no polling loop to wait out
    with pytest.raises(ConnectionRefusedError):
        control.ask(path, "close_document", {"id": "S-1"})
    again = control.ControlServer(path, server.station)
    again.start()  # the name was free again
    try:
        with pytest.raises(control.LedgerBusy):
            control.ControlServer(path, server.station).start()  # but only once
    finally:
        again.stop()


# -- the lock -----------------------------------------------------------------------------

HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def hold_in_another_process(path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), str(seconds)], stdout=subprocess.PIPE)
    assert proc.stdout.readline() == b"held\n"
    return proc


def test_the_lock_is_one_process_s_at_a_time(tmp_path):
    path = tmp_path / "ledger.db"
    path.touch()
    holder = hold_in_another_process(path, 30)
    try:
        lock = control.LedgerLock(path)
        assert lock.try_acquire() is False
        started = time.monotonic()
        with pytest.raises(control.LedgerBusy, match=f"another scan-agent or a documents command is using {path}"):
            lock.acquire(0.3)
        assert time.monotonic() - started >= 0.3
    finally:
        holder.kill()
        holder.wait()
    assert lock.try_acquire() is True  # released when its holder died
    lock.release()


def test_the_agent_waits_for_a_short_holder(tmp_path):
    path = tmp_path / "ledger.db"
    path.touch()
    holder = hold_in_another_process(path, 0.5)
    lock, _ = control.hold_ledger(path, lambda: None, wait_s=10)
    try:
        assert lock.held and holder.wait(5) == 0
    finally:
        lock.release()


def test_a_missing_ledger_is_locked_only_after_the_check(tmp_path):
    path = tmp_path / "ledger.db"
    seen = []
    lock, result = control.hold_ledger(path, lambda: seen.append(path.exists()) or "checked")
    try:
        assert seen == [False] and result == "checked"  # the check saw no ledger, as there was none
        assert path.exists() and lock.held and not lock.replaced()
        assert control.LedgerLock(path).try_acquire() is False
    finally:
        lock.release()


def test_a_ledger_moved_aside_is_locked_again_at_its_new_file(tmp_path):
    path = tmp_path / "ledger.db"
    path.write_bytes(b"damaged")
    lock, _ = control.hold_ledger(path, lambda: path.rename(tmp_path / "ledger.db.damaged-1"))
    try:
        assert path.exists() and not lock.replaced()
        assert control.LedgerLock(path).try_acquire() is False
        aside = control.LedgerLock(tmp_path / "ledger.db.damaged-1")
        assert aside.try_acquire() is True  # the old file's lock was let go
        aside.release()
    finally:
        lock.release()


def test_the_lock_leaves_sqlite_s_locks_alone(tmp_path):
    """Taking and dropping the flock while SQLite holds a write transaction on the same
    file in another connection changes nothing for SQLite."""
    path = tmp_path / "ledger.db"
    ledger = Ledger.open(path, device_id="k", site_id="s")
    try:
        lock = control.LedgerLock(path)
        assert lock.try_acquire()
        ledger.conn.execute("BEGIN IMMEDIATE")
        other = sqlite3.connect(path, timeout=0)
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
        ledger.conn.execute("ROLLBACK")
        other.close()
    finally:
        ledger.close()
        lock.release()


def test_send_without_a_ledger_creates_none(tmp_path):
    path = tmp_path / "ledger.db"
    with pytest.raises(control.ControlError) as refused:
        control.send(path, "close_document", {"id": "S-1"})
    assert refused.value.field == "ledger" and not path.exists()
    with pytest.raises(DocumentError) as unknown:
        control.send(path, "drop", {})
    assert unknown.value.field == "verb"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_root_writes_another_user_s_ledger_as_that_user():
    # Not under tmp_path: pytest's directory is root's alone (0700), the user could not enter it.
    with tempfile.TemporaryDirectory() as scratch:
        home = Path(scratch) / "state"
        home.mkdir()
        os.chown(home, NOBODY, NOBODY)
        os.chmod(scratch, 0o755)
        ledger = home / "ledger.db"
        ledger.touch()
        os.chown(ledger, NOBODY, NOBODY)
        with control.as_owner(ledger):
            (home / "ledger.db-wal").touch()
        assert os.geteuid() == 0 and os.getegid() == 0  # back to root
        made = (home / "ledger.db-wal").stat()
        assert (made.st_uid, made.st_gid) == (NOBODY, NOBODY)


def test_send_waits_for_a_starting_agent(tmp_path):
    """An agent that holds the lock but has no socket yet (still starting) is waited for,
    and never written around."""
    path = tmp_path / "ledger.db"
    Ledger.open(path, device_id="k", site_id="s").close()
    holder = hold_in_another_process(path, 30)
    try:
        started = time.monotonic()
        with pytest.raises(control.ControlError) as silent:
            control.send(path, "close_document", {"id": "S-1"}, wait_s=0.5)
        assert silent.value.field == "agent" and time.monotonic() - started >= 0.5
    finally:
        holder.kill()
        holder.wait()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT COUNT(*) FROM scans").fetchone()[0] == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to listen as another user")
@pytest.mark.skipif(not SYSTEM_PYTHON.exists(), reason="needs a python another user may run")
def test_a_client_will_not_talk_to_another_user_listening_under_the_agents_name(tmp_path):
    path = tmp_path / "ledger.db"
    Ledger.open(path, device_id="kiosk-1", site_id="site-1").close()
    squatter = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "s.bind(bytes.fromhex(sys.argv[1]))\n"
        "s.listen(1)\n"
        "print('listening', flush=True)\n"
        "c, _ = s.accept()\n"
        'c.sendall(b\'{"ok": true, "result": {"rows": []}}\\n\')\n'
    )
    proc = subprocess.Popen(
        [str(SYSTEM_PYTHON), "-I", "-c", squatter, control.socket_name(path).hex()],
        user=NOBODY, group=NOBODY, extra_groups=[], stdout=subprocess.PIPE, cwd="/",
    )  # fmt: skip
    try:
        assert proc.stdout.readline() == b"listening\n"
        with pytest.raises(control.ControlError) as refused:
            control.ask(path, "close_document", {"id": "S-1"}, timeout_s=5)
        assert refused.value.field == "agent" and "not as root or the ledger's owner" in str(refused.value)
    finally:
        proc.kill()
        proc.wait()
