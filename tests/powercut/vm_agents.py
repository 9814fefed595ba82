"""The agents of one power-cut VM boot: ``python -m tests.powercut.vm_agents CYCLE ROLE:SCENARIO...``.

Started by ``in-vm`` as soon as the VM is up, while it mounts the disks: it
imports the agent once (about 40 s over the VM's 9p root without KVM), waits
for each role's config (``/tmp/powercut/ROLE.toml``, written once its disk is
mounted) and then forks, per role, a feeder and ``scan-agent run --config
/tmp/powercut/ROLE.toml --json`` (:mod:`tests.powercut.agent_main`: the real
command line) with the feeder on its stdin and its stdout on the virtio serial
port ``/dev/vport*`` named ``pc.ROLE``. The ``control`` role's agent gets the
test-only switch ``SCAN_AGENT_POWERCUT_CONTROL=sync-off``. Each role is a
kiosk of its own with its own scenario (:data:`tests.powercut.feed.FEEDS`), so
one boot's cut hits one of each. Forking after the imports is what
``tests/usb/agent_proc.py`` does too: a separate process running the real
command line, only the imports shared.

In its ``cases`` scenario a role's child first imports the cycle's manifest
(:func:`tests.powercut.feed.cases_manifest`) with the real ``scan-agent
manifest import`` on the ledger (no agent is running yet; on a new disk image
``scan-agent run`` with nothing on stdin makes the ledger first, since the
import needs one), and prints the import's ``manifest`` decision to the port
like the agent's own, so the host checks it too. The other roles' feeders
start once every such import has ended (:func:`feed`).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
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


def imported(role: str) -> Path:
    """Made once the ``cases`` role's import of this boot's manifest has ended, however."""
    return WORK / f"{role}.imported"


def feed(cycle: int, scenario: str, out_fd: int, after: list[Path]) -> None:
    """The feeder: a steady stream of scans into ``out_fd`` until the agent's end closes,
    the scenario's (:data:`tests.powercut.feed.FEEDS`), from when every file of ``after``
    exists: the other kiosks wait for the dock's manifest import, which the cut waits for
    anyway, so that they do not scan through it (the VM's two CPUs would run the import
    several times slower, and their ledgers would grow by scans no cut comes near)."""
    from tests.powercut.feed import FEEDS

    while not all(path.exists() for path in after):
        time.sleep(0.05)
    with os.fdopen(out_fd, "wb", buffering=0) as out:
        try:
            for line in FEEDS[scenario](cycle, seed=cycle):
                out.write(line)
                time.sleep(0.02)
        except OSError:
            pass


def cli(argv: list[str], stdin: int | None = None) -> tuple[int, str]:
    """``scan-agent ARGV`` (:mod:`tests.powercut.agent_main`) in a forked child: its exit
    status and what it printed on stdout. Its log goes to this process's stderr."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        status = 70
        try:
            if stdin is not None:
                os.dup2(stdin, 0)
                sys.stdin = open(0, closefd=False)  # noqa: SIM115 - the child's whole life
            with contextlib.redirect_stdout(io.StringIO()) as printed:
                from tests.powercut import agent_main

                status = agent_main.main(argv)
            os.write(w, printed.getvalue().encode())
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(status)
    os.close(w)
    with os.fdopen(r, "rb") as out:
        printed = out.read().decode()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), printed


def import_manifest(role: str, cycle: int, out_fd: int) -> None:
    """The cycle's manifest into the role's ledger, by ``scan-agent manifest import``; its
    decision goes to ``out_fd`` (the port). A new ledger is made first by ``scan-agent run``
    with nothing on stdin: the import refuses to make one."""
    from tests.powercut.feed import cases_manifest

    config = str(WORK / f"{role}.toml")
    source = WORK / f"{role}-manifest.json"
    started = time.monotonic()
    source.write_text(json.dumps(cases_manifest(cycle)), encoding="utf-8")
    if not (WORK / role / "ledger" / "ledger.db").exists():
        null = os.open(os.devnull, os.O_RDONLY)
        status, _ = cli(["run", "--config", config], stdin=null)
        os.close(null)
        print(f"powercut-vm: {role}: a new ledger made (scan-agent run exited {status})", file=sys.stderr, flush=True)
    status, printed = cli(["manifest", "import", str(source), "--config", config, "--json"])
    answer = json.loads(printed) if status == 0 else {}
    if answer.get("imported"):
        os.write(out_fd, (json.dumps(answer["rows"][0]) + "\n").encode())
    print(
        f"powercut-vm: {role}: manifest {answer.get('bill_code')} ({answer.get('codes')} codes) imported: "
        f"{answer.get('imported')} (exit {status}) in {time.monotonic() - started:.1f} s",
        file=sys.stderr,
        flush=True,
    )


def run_agent(role: str, cycle: int, scenario: str, err_fd: int, after: list[Path]) -> int:
    """In the forked child: the agent for ``role``, fed by a grandchild (after the
    manifest's import, in a ``cases`` cycle) once every file of ``after`` exists."""
    if role == "control":
        os.environ["SCAN_AGENT_POWERCUT_CONTROL"] = "sync-off"
    out = os.open(port(f"pc.{role}"), os.O_WRONLY)
    if scenario == "cases":
        os.dup2(err_fd, 2)
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115 - the child's whole life
        try:
            import_manifest(role, cycle, out)
        finally:
            imported(role).touch()
    r, w = os.pipe()
    if os.fork() == 0:
        os.close(r)
        os.close(err_fd)
        os.close(out)
        feed(cycle, scenario, w, after)
        os._exit(0)
    os.close(w)
    os.dup2(r, 0)
    os.dup2(out, 1)
    os.dup2(err_fd, 2)
    for fd in (r, out, err_fd):
        os.close(fd)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 - lives as long as the process
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 - a line is written when printed
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    from tests.powercut import agent_main

    return agent_main.main(["run", "--config", str(WORK / f"{role}.toml"), "--json"])


def relay(role: str, fd: int) -> None:
    """The agent's log to the VM's console (the host keeps it), each line marked with the role."""
    with os.fdopen(fd, "rb") as log:
        for line in log:
            sys.stdout.write(f"[{role}] {line.decode(errors='replace')}")
            sys.stdout.flush()


def main(argv: list[str]) -> int:
    cycle = int(argv[0])
    roles = dict(spec.split(":") for spec in argv[1:])  # role -> its scenario
    started = time.monotonic()
    # Everything `scan-agent run --json` on stdin imports, once, before the fork.
    modules = ["agent.cli", "agent.ledger", "agent.runner", "agent.sources.stdin", "tests.powercut.agent_main"]
    if "cases" in roles.values():  # and what the manifest's making and import need
        modules += ["agent.control", "agent.ledger.manifests", "tests.powercut.feed", "tests.support.manifests"]
    if "receipts" in roles.values():  # and the uplink, which `run` imports only with [mqtt] on
        modules += ["agent.sinks.uplink", "paho.mqtt.client"]
    for module in modules:
        importlib.import_module(module)

    print(f"powercut-vm: agent imported in {time.monotonic() - started:.1f} s", flush=True)
    imports = [imported(role) for role, scenario in roles.items() if scenario == "cases"]
    children, relays = [], []
    for role, scenario in roles.items():
        config = WORK / f"{role}.toml"
        while not config.exists():
            time.sleep(0.1)
        err_r, err_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(err_r)
            status = 70
            try:
                status = run_agent(role, cycle, scenario, err_w, [] if scenario == "cases" else imports)
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
