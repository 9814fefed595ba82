"""``scan-agent run`` with ``[mqtt]`` on, as a real subprocess: SIGKILL mid-drain, Will, broker down, reload."""

import json
import signal

from agent.ledger import connect
from tests.support.agent import agent_config, run_agent, start_agent
from tests.support.backlog import code, fill_ledger
from tests.support.mqtt import Commander, Subscriber
from tests.support.net import free_port, wait_until

BASE = "trace/v1/site-1/kiosk-1"


def write_config(path, ledger, port, *, movement="dispense", keepalive_s=60, max_inflight=50):
    return agent_config(
        path,
        ledger,
        port,
        movement=movement,
        backoff_max_s=2,
        mqtt=f"keepalive_s = {keepalive_s}\nmax_inflight = {max_inflight}",
    )


def depth(path) -> int:
    conn = connect(path)
    try:
        return conn.execute("SELECT (SELECT COUNT(*) FROM outbox) - (SELECT COUNT(*) FROM deliveries)").fetchone()[0]
    finally:
        conn.close()


def retained_status(port) -> tuple[bytes, bool]:
    """What a newcomer sees on the status topic: (payload, retained)."""
    sub = Subscriber(port, f"{BASE}/status", persistent=False).start()
    try:
        message = wait_until(lambda: sub.on("/status"), timeout=5, what="retained status")[0]
        return message.payload, message.retain
    finally:
        sub.stop()


def test_agent_killed_mid_drain_resumes_and_the_will_says_offline(tmp_path, broker):
    ledger = tmp_path / "ledger.db"
    fill_ledger(ledger, 5000)
    # A small window, so that the kill lands mid-drain even on a fast machine.
    config = write_config(tmp_path / "agent.toml", ledger, broker.port, max_inflight=5)
    events = Subscriber(broker.port, f"{BASE}/events", client_id="collector").start()
    status = Subscriber(broker.port, f"{BASE}/status").start()

    agent = start_agent("run", "--config", str(config))
    try:
        wait_until(lambda: depth(ledger) <= 4000, timeout=30, what="a fifth drained")
        agent.send_signal(signal.SIGKILL)
        agent.wait(10)
    finally:
        agent.kill()
    left = depth(ledger)
    assert 0 < left < 5000, "the kill did not land mid-drain"
    wait_until(lambda: [m.payload for m in status.on("/status")][-1:] == [b"offline"], what="Will published")
    assert retained_status(broker.port) == (b"offline", True)

    agent = start_agent("run", "--config", str(config))
    try:
        wait_until(lambda: retained_status(broker.port) == (b"online", True), timeout=15, what="online again")
        wait_until(lambda: depth(ledger) == 0, timeout=45, what="outbox drained after restart")
        conn = connect(ledger)
        recorded = {r[0] for r in conn.execute("SELECT event_id FROM scans")}
        wait_until(lambda: events.event_ids() >= recorded, timeout=15, what="every event at the subscriber")
        agent.stdin.close()  # EOF on stdin: the agent stops cleanly
        assert agent.wait(20) == 0
    finally:
        agent.kill()
    assert len(recorded) == 5000
    # A clean stop says offline itself (the Will is only for crashes).
    assert retained_status(broker.port) == (b"offline", True)
    events.stop()
    status.stop()


def test_with_the_broker_down_every_scan_is_still_decided_recorded_and_printed(tmp_path):
    ledger = tmp_path / "ledger.db"
    config = write_config(tmp_path / "agent.toml", ledger, free_port())  # nothing listens there
    scans = b"".join(code(n) + b"\n" for n in range(20)) + code(0) + b"\n" + b"6901234567892\n"
    result = run_agent("run", "--config", str(config), "--json", input=scans, timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    lines = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert [d["verdict"] for d in lines] == ["accepted"] * 20 + ["duplicate", "rejected"]
    assert depth(ledger) == 22  # every event waits in the outbox
    assert b"unreachable" in result.stderr


def test_reload_command_applies_movement_and_names_what_needs_a_restart(tmp_path, broker):
    ledger = tmp_path / "ledger.db"
    config = write_config(tmp_path / "agent.toml", ledger, broker.port)
    agent = start_agent("run", "--config", str(config))
    commander = Commander(broker.port, BASE).start()
    try:
        wait_until(lambda: retained_status(broker.port) == (b"online", True), timeout=15, what="online")
        write_config(config, ledger, broker.port, movement="receive", keepalive_s=30)
        reply = commander.send("reload", {})
        assert reply["ok"] is True
        assert reply["result"] == {"applied": {"movement": "receive"}, "needs_restart": ["mqtt"]}

        config.write_text(config.read_text().replace('movement = "receive"', 'movement = "sell"'))
        bad = commander.send("reload", {})
        assert bad["ok"] is False and "movement: 'sell' is not allowed" in bad["error"]

        agent.stdin.write(code(1) + b"\n")
        agent.stdin.flush()
        conn = connect(ledger)
        row = wait_until(lambda: conn.execute("SELECT movement FROM scans").fetchone(), what="scan recorded")
        assert row[0] == "receive"
        agent.stdin.close()
        assert agent.wait(20) == 0
    finally:
        agent.kill()
        commander.stop()
