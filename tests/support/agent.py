"""Running ``scan-agent`` as a real subprocess of this checkout."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def agent_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def agent_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "agent", *args]


def run_agent(*args: str, input: bytes | None = None, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    """Run ``scan-agent ARGS`` to completion and capture its output."""
    return subprocess.run(
        agent_cmd(*args), input=input, capture_output=True, timeout=timeout, env=agent_env(**env), cwd=ROOT
    )


def decisions_until_killed(proc: subprocess.Popen, kill_after: int, on_first=None) -> list[dict]:
    """Read ``scan-agent run --json`` decisions from ``proc``; SIGKILL it after ``kill_after``
    of them. Returns every decision it printed, including what was still in the pipe:
    that was printed before the kill, so it counts too. ``on_first()`` runs at the first one."""
    printed = []
    for raw in proc.stdout:
        printed.append(json.loads(raw))
        if len(printed) == 1 and on_first is not None:
            on_first()
        if len(printed) == kill_after:
            proc.send_signal(signal.SIGKILL)
            break
    printed += [json.loads(line) for line in proc.stdout.read().splitlines() if line.strip().endswith(b"}")]
    return printed


def start_agent(*args: str, **env: str) -> subprocess.Popen:
    """Start ``scan-agent ARGS`` with pipes on stdin, stdout and stderr."""
    return subprocess.Popen(
        agent_cmd(*args),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=agent_env(**env),
        cwd=ROOT,
    )


def agent_config(
    path: Path,
    ledger: Path,
    port: int,
    *,
    device: str = "kiosk-1",
    site: str = "site-1",
    movement: str = "dispense",
    backoff_max_s: float = 1,
    mqtt: str = "",
    tables: str = "",
) -> Path:
    """Write a config for an agent on the stdin scanner (``movement``), publishing to the broker on
    ``port``: ``mqtt`` adds lines to ``[mqtt]``, ``tables`` adds whole tables."""
    path.write_text(
        f"""
[station]
device_id = "{device}"
site_id = "{site}"
movement = "{movement}"

[ledger]
path = "{ledger}"

[feedback]
backend = "none"

[mqtt]
enabled = true
host = "127.0.0.1"
port = {port}
backoff_max_s = {backoff_max_s}
{mqtt}
{tables}
"""
    )
    return path
