"""Agent RSS with the local API on (5 stream clients connected) against off.

    .venv/bin/python bench/api_rss.py [--scans 500]

Runs ``scan-agent run --json`` as a subprocess twice on a fresh ledger each time,
scans ``--scans`` codes through stdin, waits until each is printed (and, with the
API on, each stream client has the last event), then reads VmRSS and VmHWM from
/proc. The difference is what the API costs a kiosk in memory.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.api_stream import StreamClient
from bench.machine import describe
from tests.support.net import free_port, wait_for_port


def memory_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def measure(api: bool, scans: int, clients: int) -> dict[str, int]:
    import subprocess

    from tests.support.agent import ROOT, agent_cmd, agent_env

    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        port = free_port()
        cfg = Path(tmp) / "agent.toml"
        cfg.write_text(
            f'[ledger]\npath = "{tmp}/ledger.db"\n[feedback]\nbackend = "none"\n'
            f"[api]\nenabled = {'true' if api else 'false'}\nport = {port}\n"
        )
        proc = subprocess.Popen(
            agent_cmd("run", "--json", "--config", str(cfg)),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=agent_env(),
            cwd=ROOT,
        )
        readers = []
        if api:
            wait_for_port(port, 20)
            readers = [StreamClient(port) for _ in range(clients)]
        else:
            time.sleep(1.0)
        for n in range(scans):
            proc.stdin.write(b"8%019d\n" % (1_000_000_000 + n))
        proc.stdin.flush()
        for _ in range(scans):
            proc.stdout.readline()
        deadline = time.monotonic() + 20
        while readers and time.monotonic() < deadline and any(scans not in r.received for r in readers):
            time.sleep(0.05)
        time.sleep(0.5)
        memory = memory_kib(proc.pid)
        for reader in readers:
            reader.close()
        proc.stdin.close()
        proc.wait(30)
        return memory


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scans", type=int, default=500)
    ap.add_argument("--clients", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    off, on = [], []
    for _ in range(args.rounds):  # taking turns, so drift in the machine hits both alike
        off.append(measure(False, args.scans, args.clients))
        on.append(measure(True, args.scans, args.clients))
    print(f"bench/api_rss.py  {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")
    print(f"machine: {describe()}")
    print(f"scan-agent run, {args.scans} scans through stdin; API on: {args.clients} stream clients connected")
    for key in ("VmRSS", "VmHWM"):
        a = sorted(m[key] for m in off)[len(off) // 2] / 1024
        b = sorted(m[key] for m in on)[len(on) // 2] / 1024
        print(f"{key} median of {args.rounds}: API off {a:.1f} MB, on {b:.1f} MB, difference {b - a:+.1f} MB")
    diff = sorted(m["VmRSS"] for m in on)[len(on) // 2] / 1024 - sorted(m["VmRSS"] for m in off)[len(off) // 2] / 1024
    print(f"target at most 15 MB more: {'met' if diff <= 15 else 'NOT met'}")


if __name__ == "__main__":
    main()
