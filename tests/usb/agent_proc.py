"""``scan-agent run --json`` as a subprocess, with its decisions collected as they come.

    agent = RunningAgent.start(tmp_path, scanners_toml)
    decisions = agent.wait_for(200, timeout=60)
    agent.stop()

Each decision is the JSON object the agent printed plus ``at``: the test's
``time.monotonic()`` when the line arrived (for deadlines such as "decided
within 2 s of the replug").

By default the agent process is forked from the test process rather than
started with ``python -m agent``: in the bench VM without KVM a fresh
interpreter spends about 30 s importing the agent over the VM's 9p root file
system, every time. The fork is still a separate process running the real
command line (``agent.cli.main(["run", ...])``) with its own pipes, signal
handlers and device file descriptors; only the imports are shared.
``SCAN_AGENT_USB_AGENT=exec`` starts a fresh ``python -m agent`` instead.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

from agent import cli
from tests.support.agent import start_agent


def config_toml(ledger: Path, scanners: str, extra: str = "") -> str:
    """A whole agent config: a ledger in the test's directory, no feedback, these ``[[scanners]]``;
    ``extra`` tables (e.g. ``[wedge]``) go before them."""
    return (
        f'[station]\ndevice_id = "bench-vm"\nmovement = "dispense"\n\n'
        f'[ledger]\npath = "{ledger}"\n\n[feedback]\nbackend = "none"\n\n{extra}\n{scanners}'
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
    def start(cls, workdir: Path, scanners: str, extra: str = "") -> RunningAgent:
        path = Path(workdir) / "agent.toml"
        path.write_text(config_toml(Path(workdir) / "ledger.db", scanners, extra))
        args = ("run", "--config", str(path), "--json")
        if os.environ.get("SCAN_AGENT_USB_AGENT", "fork") == "exec":
            return cls(start_agent(*args))
        return cls(ForkedAgent(args))

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


class ForkedAgent:
    """``scan-agent ARGS`` in a child forked from this interpreter, with the
    parts of :class:`subprocess.Popen` that :class:`RunningAgent` uses."""

    def __init__(self, args: tuple[str, ...]) -> None:
        self.args = args
        self.returncode: int | None = None
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the agent
            status = 70
            try:
                os.close(out_r)
                os.close(err_r)
                os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
                os.dup2(out_w, 1)
                os.dup2(err_w, 2)
                sys.stdin = open(0, "rb", closefd=False)  # noqa: SIM115 - lives as long as the process
                sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
                sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
                logging.root.handlers.clear()  # pytest's capture handlers would swallow the log
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                # Ahead of the test's own typing threads, as a kiosk should run it: a reader that
                # falls more than ~64 events behind loses keys to the kernel (SYN_DROPPED).
                with contextlib.suppress(OSError):
                    os.nice(-5)
                status = cli.main(list(args))
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(status)
        os.close(out_w)
        os.close(err_w)
        self.pid = pid
        self.stdout = os.fdopen(out_r, "rb")
        self.stderr = os.fdopen(err_r, "rb")

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(list(self.args), timeout)
            time.sleep(0.02)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)
