"""End to end: `scan-agent run --config <serial scanner on a pty> --json` as a subprocess."""

from __future__ import annotations

import json
import os
import queue
import signal
import threading

from tests.support.agent import run_agent, start_agent

CODE = "81234567890123456789"


def lines_of(stream) -> queue.Queue:
    q: queue.Queue = queue.Queue()

    def pump():
        for line in stream:
            q.put(line.decode(errors="replace"))

    threading.Thread(target=pump, daemon=True).start()
    return q


def wait_line(q: queue.Queue, contains: str, timeout: float = 10) -> str:
    seen = []
    while True:
        try:
            line = q.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line with {contains!r}; saw {seen}") from None
        seen.append(line)
        if contains in line:
            return line


def test_serial_scanner_end_to_end(tmp_path, pty_pair):
    db = tmp_path / "ledger.db"
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[station]\nmovement = "dispense"\n[ledger]\npath = "{db}"\n[feedback]\nbackend = "none"\n'
        f'[[scanners]]\nkind = "serial"\nname = "counter"\nport = "{pty_pair.host}"\n'
        'baudrate = 115200\nterminator = "crlf"\n'
        f'[[scanners]]\nkind = "serial"\nname = "dock"\nport = "{tmp_path}/no-such-port*"\nmovement = "receive"\n'
    )
    agent = start_agent("run", "--config", str(config), "--json")
    out, err = lines_of(agent.stdout), lines_of(agent.stderr)
    try:
        wait_line(err, f"opened {pty_pair.host}")
        fd = pty_pair.open_device()
        os.write(fd, f"]C0{CODE}\r\n{CODE}\r\n6901234567892\r\n".encode())
        os.close(fd)
        decisions = [json.loads(wait_line(out, "verdict")) for _ in range(3)]
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(10)
    assert agent.returncode == 0
    # The second read is the same code from the same scanner at once: a double read.
    assert [d["verdict"] for d in decisions] == ["accepted", "double_read", "rejected"]
    assert decisions[2]["reason"] == "product_barcode"
    assert decisions[0]["code"] == CODE
    assert decisions[0]["source"] == str(pty_pair.host)
    verified = run_agent("ledger", "verify", "--db", str(db))
    assert verified.returncode == 0, verified.stderr
