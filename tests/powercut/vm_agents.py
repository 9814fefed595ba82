"""The agents of one power-cut VM boot: ``python -m tests.powercut.vm_agents CYCLE ROLE...``.

Started by ``in-vm`` as soon as the VM is up, while it mounts the disks: it
imports the agent once (about 40 s over the VM's 9p root without KVM), waits
for each role's config (``/tmp/powercut/ROLE.toml``, written once its disk is
mounted) and then forks, per role, a feeder and ``scan-agent run --config
/tmp/powercut/ROLE.toml --json`` (:mod:`tests.powercut.agent_main`: the real
command line) with the feeder on its stdin and its stdout on the virtio serial
port ``/dev/vport*`` named ``pc.ROLE``. The ``control`` role's agent gets the
test-only switch ``SCAN_AGENT_POWERCUT_CONTROL=sync-off``. Forking after the
imports is what ``tests/usb/agent_proc.py`` does too: a separate process
running the real command line, only the imports shared.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
import time
import traceback
from pathlib import Path

WORK = Path("/tmp/powercut")


def port(name: str) -> str:
    for entry in Path("/sys/class/virtio-ports").iterdir():
        if (entry / "name").read_text().strip() == name:
            return f"/dev/{entry.name}"
    raise FileNotFoundError(f"no virtio serial port named {name}")


def feed(cycle: int, out_fd: int) -> None:
    """The feeder: a steady stream of scans into ``out_fd`` until the agent's end closes;
    in even cycles inside documents (:func:`tests.powercut.feed.document_lines`)."""
    from tests.powercut.feed import document_lines, lines

    with os.fdopen(out_fd, "wb", buffering=0) as out:
        try:
            for line in (document_lines if cycle % 2 == 0 else lines)(cycle, seed=cycle):
                out.write(line)
                time.sleep(0.02)
        except OSError:
            pass


def run_agent(role: str, cycle: int, err_fd: int) -> int:
    """In the forked child: the agent for ``role``, fed by a grandchild."""
    r, w = os.pipe()
    if os.fork() == 0:
        os.close(r)
        os.close(err_fd)
        feed(cycle, w)
        os._exit(0)
    os.close(w)
    out = os.open(port(f"pc.{role}"), os.O_WRONLY)
    os.dup2(r, 0)
    os.dup2(out, 1)
    os.dup2(err_fd, 2)
    for fd in (r, out, err_fd):
        os.close(fd)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 - lives as long as the process
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 - a line is written when printed
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    if role == "control":
        os.environ["SCAN_AGENT_POWERCUT_CONTROL"] = "sync-off"
    from tests.powercut import agent_main

    return agent_main.main(["run", "--config", str(WORK / f"{role}.toml"), "--json"])


def relay(role: str, fd: int) -> None:
    """The agent's log to the VM's console (the host keeps it), each line marked with the role."""
    with os.fdopen(fd, "rb") as log:
        for line in log:
            sys.stdout.write(f"[{role}] {line.decode(errors='replace')}")
            sys.stdout.flush()


def main(argv: list[str]) -> int:
    cycle, roles = int(argv[0]), argv[1:]
    started = time.monotonic()
    # Everything `scan-agent run --json` on stdin imports, once, before the fork.
    for module in ("agent.cli", "agent.ledger", "agent.runner", "agent.sources.stdin", "tests.powercut.agent_main"):
        importlib.import_module(module)

    print(f"powercut-vm: agent imported in {time.monotonic() - started:.1f} s", flush=True)
    children, relays = [], []
    for role in roles:
        config = WORK / f"{role}.toml"
        while not config.exists():
            time.sleep(0.1)
        err_r, err_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(err_r)
            status = 70
            try:
                status = run_agent(role, cycle, err_w)
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stderr.flush()
                os._exit(status)
        os.close(err_w)
        children.append((role, pid))
        relays.append(threading.Thread(target=relay, args=(role, err_r), daemon=True))
        relays[-1].start()
        print(f"powercut-vm: {role}: agent started (pid {pid})", flush=True)
    for role, pid in children:
        _, status = os.waitpid(pid, 0)
        print(f"powercut-vm: {role}: the agent exited ({os.waitstatus_to_exitcode(status)}) before the cut", flush=True)
    for t in relays:
        t.join(5)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
