"""sd_notify: READY, WATCHDOG..., STOPPING on a real unix datagram socket, in order;
and the watchdog pings stop while the pipeline is stalled."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import pytest

from agent.ledger import Ledger, connect
from agent.ops.systemd import LedgerProbe, Notifier, Watchdog, pipeline_healthy
from agent.pipeline import Pipeline
from agent.read import Read
from tests.support.agent import start_agent
from tests.support.net import wait_until

CODE = b"81234567890123456789\n"


def receiver(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(10)
    return sock


def messages(sock: socket.socket, until: str, limit: int = 500) -> list[str]:
    """Datagrams received until one containing ``until`` (or 10 s without one)."""
    sock.settimeout(10)  # drain() leaves it at 0.05 s: too short for a loaded machine
    got = []
    for _ in range(limit):
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            break
        if until in got[-1]:
            break
    return got


def drain(sock: socket.socket, seconds: float) -> list[str]:
    sock.settimeout(0.05)
    got, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(TimeoutError):
            got.append(sock.recv(4096).decode())
    return got


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_agent_sends_ready_watchdog_stopping_in_order(tmp_path, abstract):
    name = f"scan-agent-test-{time.monotonic_ns()}"
    sock = receiver("\0" + name if abstract else str(tmp_path / "notify"))
    env = {"NOTIFY_SOCKET": "@" + name if abstract else str(tmp_path / "notify"), "WATCHDOG_USEC": "200000"}
    agent = start_agent("run", "--db", str(tmp_path / "ledger.db"), **env)
    try:
        before_ready = messages(sock, until="READY=1")
        assert any("READY=1" in m for m in before_ready), before_ready
        assert not any("WATCHDOG=1" in m for m in before_ready), "a ping before READY"
        agent.stdin.write(CODE)
        agent.stdin.flush()
        pings = messages(sock, until="WATCHDOG=1")
        pings += messages(sock, until="WATCHDOG=1")
        assert sum(m == "WATCHDOG=1" for m in pings) >= 2, pings
        agent.stdin.close()  # stdin EOF: the agent finishes and stops
        rest = messages(sock, until="STOPPING=1")
        assert rest and rest[-1] == "STOPPING=1", rest
        assert agent.wait(30) == 0
        assert b"accepted" in agent.stdout.read()
        assert drain(sock, 0.3) == [], "nothing after STOPPING"
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        sock.close()


def test_watchdog_pings_stop_while_the_pipeline_is_stalled(tmp_path):
    sock = receiver(str(tmp_path / "notify"))
    notifier = Notifier(env={"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "100000"})
    release = threading.Event()

    class StuckSink:
        """A sink that hangs, as a wedged feedback device would."""

        def decided(self, decision):
            release.wait(30)

    db = tmp_path / "ledger.db"
    pipeline = Pipeline(Ledger.open(db, device_id="k", site_id="s"), sinks=[StuckSink()])
    probe = LedgerProbe(connect(db), db)
    watchdog = Watchdog(notifier, notifier.watchdog_interval(), lambda: pipeline_healthy(pipeline, probe, stall_s=0.5))
    pipeline.start()
    watchdog.start()
    try:
        assert "WATCHDOG=1" in messages(sock, until="WATCHDOG=1"), "healthy pipeline pings"
        pipeline.submit(Read(CODE.strip(), "stdin", "stdin"))
        # Once progress is older than stall_s the pings stop: wait for a quiet second.
        assert wait_until(lambda: drain(sock, 1.0) == [], timeout=10), "pings went on while stalled"
        assert drain(sock, 1.0) == []
        release.set()
        assert "WATCHDOG=1" in messages(sock, until="WATCHDOG=1"), "pings resume once unstuck"
    finally:
        release.set()
        watchdog.stop()
        pipeline.stop()
        sock.close()


def test_unhealthy_when_the_database_is_gone(tmp_path):
    db = tmp_path / "ledger.db"
    pipeline = Pipeline(Ledger.open(db, device_id="k", site_id="s"))
    probe = LedgerProbe(connect(db), db)
    assert pipeline_healthy(pipeline, probe, stall_s=60)
    probe.close()
    assert not pipeline_healthy(pipeline, probe, stall_s=60)
    pipeline.faulted = True
    assert not pipeline_healthy(pipeline, LedgerProbe(connect(db), db), stall_s=60)


def test_unhealthy_when_the_ledger_file_is_unlinked_under_the_agent(tmp_path):
    db = tmp_path / "ledger.db"
    pipeline = Pipeline(Ledger.open(db, device_id="k", site_id="s"))
    probe = LedgerProbe(connect(db), db)
    assert pipeline_healthy(pipeline, probe, stall_s=60)
    db.unlink()  # the open connections still answer queries: only the path tells
    assert probe.conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] > 0
    assert not pipeline_healthy(pipeline, probe, stall_s=60)
    probe.close()
    pipeline.ledger.close()


def test_unhealthy_when_the_ledger_file_is_replaced_under_the_agent(tmp_path):
    db = tmp_path / "ledger.db"
    pipeline = Pipeline(Ledger.open(db, device_id="k", site_id="s"))
    probe = LedgerProbe(connect(db), db)
    assert pipeline_healthy(pipeline, probe, stall_s=60)
    other = tmp_path / "other.db"
    Ledger.open(other, device_id="k", site_id="s").close()
    other.replace(db)  # a valid ledger, but not the file the agent writes to
    assert not pipeline_healthy(pipeline, probe, stall_s=60)
    probe.close()
    pipeline.ledger.close()


def test_no_socket_no_messages():
    n = Notifier(env={"WATCHDOG_USEC": "1000000"})
    assert not n.ready() and not n.stopping() and n.watchdog_interval() is None


def test_watchdog_usec_for_another_pid_is_ignored(tmp_path):
    n = Notifier(env={"NOTIFY_SOCKET": str(tmp_path / "s"), "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    assert n.watchdog_interval() is None
