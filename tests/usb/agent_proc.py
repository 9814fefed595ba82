"""``scan-agent run --json`` as a subprocess, with its decisions collected as they come.

    agent = RunningAgent.start(tmp_path, scanners_toml)
    decisions = agent.wait_for(200, timeout=60)
    agent.stop()

Each decision is the JSON object the agent printed plus ``at``: the test's
``time.monotonic()`` when the line arrived (for deadlines such as "decided
within 2 s of the replug").
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path

from tests.support.agent import start_agent


def config_toml(ledger: Path, scanners: str) -> str:
    """A whole agent config: a ledger in the test's directory, no feedback, these ``[[scanners]]``."""
    return (
        f'[station]\ndevice_id = "bench-vm"\nmovement = "dispense"\n\n'
        f'[ledger]\npath = "{ledger}"\n\n[feedback]\nbackend = "none"\n\n{scanners}'
    )


class RunningAgent:
    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.decisions: queue.Queue[dict] = queue.Queue()
        self.log: list[str] = []
        self._threads = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for t in self._threads:
            t.start()

    @classmethod
    def start(cls, workdir: Path, scanners: str) -> RunningAgent:
        path = Path(workdir) / "agent.toml"
        path.write_text(config_toml(Path(workdir) / "ledger.db", scanners))
        return cls(start_agent("run", "--config", str(path), "--json"))

    def _read_stdout(self) -> None:
        for line in self.proc.stdout:
            try:
                decision = json.loads(line)
            except ValueError:
                self.log.append(f"(stdout, not JSON) {line!r}")
                continue
            decision["at"] = time.monotonic()
            self.decisions.put(decision)

    def _read_stderr(self) -> None:
        for line in self.proc.stderr:
            self.log.append(line.decode(errors="replace").rstrip())

    def next(self, timeout: float) -> dict | None:
        """The next decision, or None if none came within ``timeout`` seconds."""
        try:
            return self.decisions.get(timeout=timeout)
        except queue.Empty:
            return None

    def wait_for(self, count: int, timeout: float) -> list[dict]:
        """Up to ``count`` decisions, waiting at most ``timeout`` seconds in all."""
        got: list[dict] = []
        deadline = time.monotonic() + timeout
        while len(got) < count:
            d = self.next(max(0.0, deadline - time.monotonic()))
            if d is None:
                break
            got.append(d)
        return got

    def quiet(self, seconds: float) -> list[dict]:
        """Whatever else is decided in the next ``seconds`` (should usually be nothing)."""
        return self.wait_for(10**9, seconds)

    def holds(self, device: Path) -> bool:
        """True if the agent process has ``device`` open."""
        fd_dir = Path(f"/proc/{self.proc.pid}/fd")
        try:
            links = [os.readlink(fd) for fd in fd_dir.iterdir()]
        except OSError:
            return False
        return str(device) in links

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        return "\n".join(self.log[-40:])

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM, as systemd stops it; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for t in self._threads:
            t.join(5)
        return self.proc.returncode
