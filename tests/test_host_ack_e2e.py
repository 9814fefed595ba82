"""scan-agent run with a serial scanner whose profile has host-ACK: the scanner hears good and bad."""

import json
import os
import select

from tests.support.agent import start_agent

A = b"81234567890123456789"


def read_exactly(fd: int, n: int, timeout: float = 10.0) -> bytes:
    got = b""
    while len(got) < n:
        ready, _, _ = select.select([fd], [], [], timeout)
        assert ready, f"only {got!r} came back"
        got += os.read(fd, n - len(got))
    return got


def test_good_and_bad_bytes_arrive_back_on_the_pty(tmp_path, pty_pair):
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f"""
[ledger]
path = "{tmp_path / "ledger.db"}"
[feedback]
backend = "none"
[[scanners]]
kind = "serial"
name = "counter"
port = "{pty_pair.host}"
profile = "honeywell-xenon-1950g"
"""
    )
    agent = start_agent("run", "--config", str(cfg), "--json")
    device = pty_pair.open_device()
    try:
        # Scans written before the agent opens the port would be flushed with its input buffer.
        while b"opened" not in agent.stderr.readline():
            assert agent.poll() is None, "the agent ended"
        os.write(device, A + b"\r")
        assert json.loads(agent.stdout.readline())["verdict"] == "accepted"
        assert read_exactly(device, 3) == b"\x1b7,"  # Honeywell [ESC]7, : good read
        os.write(device, b"6901234567892\r")
        assert json.loads(agent.stdout.readline())["reason"] == "product_barcode"
        assert read_exactly(device, 3) == b"\x1b8,"  # [ESC]8, : bad read
    finally:
        os.close(device)
        agent.terminate()
        agent.wait(20)
    assert agent.returncode == 0
