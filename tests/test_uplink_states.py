"""The uplink tells the feedback when the broker is unreachable and when the backlog is too old."""

import os
import threading

from agent.config import parse_toml
from agent.runner import Runner
from tests.support.net import wait_until


def test_broker_offline_and_backlog_states_follow_the_broker(tmp_path, broker):
    cfg = parse_toml(
        f"""
[ledger]
path = "{tmp_path / "ledger.db"}"
[feedback]
backend = "none"
backlog_alert_s = 1
[mqtt]
enabled = true
host = "127.0.0.1"
port = {broker.port}
"""
    )
    read_end, write_end = os.pipe()
    runner = Runner(cfg, stdin=os.fdopen(read_end, "rb"))
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: runner.feedback is not None, what="runner started")
        states = runner.feedback.states
        wait_until(lambda: "broker_offline" not in states(), timeout=15, what="connected")
        broker.kill()
        wait_until(lambda: "broker_offline" in states(), timeout=15, what="broker_offline on")
        os.write(write_end, b"81234567890123456789\n")  # recorded, but cannot be delivered
        wait_until(lambda: "backlog" in states(), timeout=15, what="backlog on")
        broker.start()
        wait_until(lambda: not {"broker_offline", "backlog"} & states(), timeout=30, what="both off")
    finally:
        os.close(write_end)
        runner.request_stop()
        thread.join(20)
    assert not thread.is_alive()
