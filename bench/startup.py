"""How fast the agent starts, how much memory it keeps, and how little it does when idle.

    python bench/startup.py                       # every figure, 60 s idle windows
    python bench/startup.py --idle-seconds 10     # a quick run
    python bench/startup.py --root /tmp/c2c03a1   # the agent of another checkout, same interpreter

Each figure is measured ``--reps`` times; the median and the spread (min–max) are printed.

- ``scan-agent check CODE`` wall time against ``python -c pass`` (same interpreter, same
  environment), as a ratio. Bytecode is cached (in ``bench/out/pycache``) as on a kiosk,
  where pip compiles the installed files; a second line runs both with
  ``PYTHONDONTWRITEBYTECODE`` and no cache, as a fresh checkout without write access does.
- ``scan-agent run``: process start to ``READY=1`` on a ``NOTIFY_SOCKET`` the bench binds,
  with a stdin scanner and with a serial scanner on a pty pair, on an existing ledger.
- VmRSS after 10,000 scans fed on stdin (a tenth of them duplicates), on an existing ledger.
- CPU over ``--idle-seconds`` of idleness with MQTT on (a mosquitto of its own), a serial
  scanner on a pty and ``WATCHDOG_USEC`` as the service sets it: utime+stime from
  ``/proc/PID/stat``, and per thread (names set with ``prctl`` by a small launcher, as
  Python does not name OS threads) the CPU and the wake-ups (voluntary context switches).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.machine import header  # noqa: E402

OUT = ROOT / "bench" / "out"
CODE = "81234567890123456789"
TICK = os.sysconf("SC_CLK_TCK")

#: Runs scan-agent with every Python thread named in /proc (comm), so per-thread CPU can be told apart.
LAUNCHER = """
import ctypes, sys, threading
_prctl = ctypes.CDLL(None, use_errno=True).prctl
_inner = threading.Thread._bootstrap_inner
def _named(self):
    _prctl(15, self.name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    _inner(self)
threading.Thread._bootstrap_inner = _named
from agent.cli import main
sys.argv[0] = "scan-agent"
sys.exit(main())
"""


def spread(values: list[float], unit: str = "", digits: int = 2) -> str:
    med = statistics.median(values)
    return f"{med:.{digits}f}{unit} ({min(values):.{digits}f}–{max(values):.{digits}f}, n={len(values)})"


class Bench:
    def __init__(self, root: Path, work: Path) -> None:
        self.root = root
        self.work = work
        self.python = sys.executable
        self.scan_agent = str(Path(sys.executable).parent / "scan-agent")

    def env(self, *, bytecode: bool = True, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        env["PYTHONPATH"] = str(self.root)
        env["XDG_DATA_HOME"] = str(self.work / "xdg")
        if bytecode:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = str(OUT / "pycache")
        else:
            env["PYTHONDONTWRITEBYTECODE"] = "1"
            env.pop("PYTHONPYCACHEPREFIX", None)
        env.update(extra)
        return env

    def config(self, name: str, *, scanner: str = "", mqtt: str = "", feedback: str = "console") -> Path:
        path = self.work / f"{name}.toml"
        ledger = self.work / f"{name}.db"
        path.write_text(f'[ledger]\npath = "{ledger}"\n[feedback]\nbackend = "{feedback}"\n{scanner}{mqtt}')
        if not ledger.exists():  # an existing ledger, as on every start but the first
            subprocess.run(
                [self.scan_agent, "run", "--db", str(ledger)],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                env=self.env(),
                check=True,
            )
        return path

    # -- check -------------------------------------------------------------

    def check_ratio(self, reps: int, *, bytecode: bool) -> tuple[list[float], list[float]]:
        env = self.env(bytecode=bytecode)
        bare, check = [self.python, "-c", "pass"], [self.scan_agent, "check", CODE]
        for cmd in (bare, check):  # warm the bytecode cache and the page cache
            subprocess.run(cmd, stdout=subprocess.DEVNULL, env=env, check=True)
        bare_s, check_s = [], []
        for _ in range(reps):
            for cmd, times in ((bare, bare_s), (check, check_s)):
                started = time.perf_counter()
                subprocess.run(cmd, stdout=subprocess.DEVNULL, env=env, check=True)
                times.append(time.perf_counter() - started)
        return bare_s, check_s

    # -- run: READY=1 ------------------------------------------------------

    def until_ready(self, config: Path, *, stdin: int | None = subprocess.PIPE, extra_env: dict | None = None):
        """Start ``scan-agent run``; return (process, seconds to READY=1)."""
        address = self.work / f"notify-{time.monotonic_ns()}"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(str(address))
            sock.settimeout(30)
            env = self.env(NOTIFY_SOCKET=str(address), **(extra_env or {}))
            started = time.perf_counter()
            proc = subprocess.Popen(
                [self.scan_agent, "run", "--config", str(config)],
                stdin=stdin,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=env,
            )
            try:
                while b"READY=1" not in sock.recv(4096).split(b"\n"):
                    pass
            except TimeoutError:
                stop(proc)
                raise RuntimeError(f"no READY=1 from {config} in 30 s") from None
            elapsed = time.perf_counter() - started
        address.unlink()
        return proc, elapsed

    def ready_times(self, reps: int, kind: str) -> list[float]:
        times = []
        for _ in range(reps):
            if kind == "stdin":
                proc, elapsed = self.until_ready(self.config("ready-stdin", feedback="none"))
                stop(proc)
            else:
                master, slave = os.openpty()
                try:
                    scanner = f'[[scanners]]\nkind = "serial"\nname = "counter"\nport = "{os.ttyname(slave)}"\n'
                    proc, elapsed = self.until_ready(
                        self.config("ready-serial", scanner=scanner, feedback="none"), stdin=subprocess.DEVNULL
                    )
                    stop(proc)
                finally:
                    os.close(master)
                    os.close(slave)
            times.append(elapsed)
        return times

    # -- RSS after scans ---------------------------------------------------

    def rss_after(self, scans: int, rep: int) -> tuple[float, float]:
        """(VmRSS, VmHWM) in MB after ``scans`` scans on stdin were decided."""
        config = self.config(f"rss-{rep}")
        proc = subprocess.Popen(
            [self.scan_agent, "run", "--config", str(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=self.env(),
        )
        base = 10**12 * (rep + 1)

        def feed() -> None:
            for i in range(scans):
                n = i - 1 if i % 10 == 9 else i  # every tenth repeats the one before: a duplicate
                proc.stdin.write(f"8{base + n:019d}\n".encode())
            proc.stdin.flush()

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        for seen, _line in enumerate(proc.stdout, 1):
            if seen == scans:
                break
        status = dict(line.split(":", 1) for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines())
        feeder.join()
        stop(proc)
        return int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024

    # -- idle CPU ----------------------------------------------------------

    def idle(self, seconds: float, rep: int) -> tuple[float, dict[str, tuple[float, float]]]:
        """CPU % of one core over ``seconds`` of idleness, and per thread (CPU %, wake-ups/s)."""
        from tests.support.mosquitto import Mosquitto

        broker = Mosquitto(self.work / f"broker-{rep}")
        broker.start()
        master, slave = os.openpty()
        try:
            scanner = f'[[scanners]]\nkind = "serial"\nname = "counter"\nport = "{os.ttyname(slave)}"\n'
            mqtt = f'[mqtt]\nenabled = true\nhost = "127.0.0.1"\nport = {broker.port}\n'
            config = self.config(f"idle-{rep}", scanner=scanner, mqtt=mqtt, feedback="none")
            address = self.work / f"notify-idle-{rep}"
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.bind(str(address))
                sock.settimeout(30)
                proc = subprocess.Popen(
                    [self.python, "-c", LAUNCHER, "run", "--config", str(config)],
                    cwd=self.root,  # -c puts the working directory first on sys.path
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    env=self.env(NOTIFY_SOCKET=str(address), WATCHDOG_USEC="30000000"),
                )
                try:
                    while b"READY=1" not in sock.recv(4096).split(b"\n"):
                        pass
                    time.sleep(3)  # connected, first health report out, presence grace over
                    before, t0 = threads(proc.pid), time.monotonic()
                    time.sleep(seconds)
                    after, t1 = threads(proc.pid), time.monotonic()
                finally:
                    stop(proc)
        finally:
            os.close(master)
            os.close(slave)
            broker.stop()
        span = t1 - t0
        per: dict[str, tuple[float, float]] = {}
        for tid, (name, ticks, switches) in after.items():
            old_ticks, old_switches = before.get(tid, (name, 0, 0))[1:]
            cpu, wakes = per.get(name, (0.0, 0.0))
            per[name] = (cpu + (ticks - old_ticks) / TICK / span * 100, wakes + (switches - old_switches) / span)
        return sum(cpu for cpu, _ in per.values()), per


def threads(pid: int) -> dict[int, tuple[str, int, int]]:
    """tid -> (name, utime+stime ticks, voluntary context switches) for every thread of ``pid``."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
            status = (task / "status").read_text()
        except OSError:
            continue  # ended meanwhile
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat(5))
        switches = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("voluntary_ctxt"))
        out[int(task.name)] = ("main" if int(task.name) == pid else name, ticks, switches)
    return out


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    if proc.stdin is not None:
        proc.stdin.close()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout whose agent runs (default: this one)")
    parser.add_argument("--reps", type=int, default=5, help="repetitions of each start-up figure")
    parser.add_argument("--check-reps", type=int, default=30, help="repetitions of the check timing")
    parser.add_argument("--scans", type=int, default=10_000, help="scans before reading VmRSS")
    parser.add_argument("--rss-reps", type=int, default=3)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--idle-reps", type=int, default=3)
    parser.add_argument("--only", default="check,ready,rss,idle", help="comma-separated parts to run (default: all)")
    args = parser.parse_args()

    print(header())
    print(f"agent:   {args.root.resolve()}  (git {git_head(args.root)})")
    print(f"load:    {os.getloadavg()[0]:.2f} (1-min average at start)")
    OUT.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=OUT, prefix="startup-"))
    bench = Bench(args.root.resolve(), work)
    parts = set(args.only.split(","))
    try:
        if "check" in parts:
            check_figures(bench, args.check_reps)
        if "ready" in parts:
            print("\nscan-agent run: process start to READY=1 (existing ledger; target <= 1.0 s)")
            for kind in ("stdin", "serial"):
                print(f"  {kind:<7} scanner: {spread(bench.ready_times(args.reps, kind), ' s', 3)}")
        if "rss" in parts:
            print(f"\nVmRSS after {args.scans:,} scans on stdin (target <= 60 MB)")
            rss = [bench.rss_after(args.scans, rep) for rep in range(args.rss_reps)]
            print(f"  VmRSS {spread([r for r, _ in rss], ' MB', 1)}; VmHWM {spread([h for _, h in rss], ' MB', 1)}")
        if "idle" in parts:
            idle_figures(bench, args.idle_seconds, args.idle_reps)
        print(f"\nload:    {os.getloadavg()[0]:.2f} (1-min average at the end)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def check_figures(bench: Bench, reps: int) -> None:
    print("\nscan-agent check CODE vs python -c pass (wall time)")
    for bytecode in (True, False):
        bare, check = bench.check_ratio(reps, bytecode=bytecode)
        ratios = [c / b for b, c in zip(bare, check, strict=True)]
        label = "bytecode cached" if bytecode else "no bytecode    "
        print(
            f"  {label}: pass {spread([t * 1000 for t in bare], ' ms', 0)}, "
            f"check {spread([t * 1000 for t in check], ' ms', 0)}; "
            f"ratio of medians {statistics.median(check) / statistics.median(bare):.2f} "
            f"(pairwise {spread(ratios, '', 2)}; target <= 3)"
        )


def idle_figures(bench: Bench, seconds: float, reps: int) -> None:
    print(f"\nidle, MQTT on, serial scanner, watchdog on: CPU over {seconds:.0f} s (target <= 0.5 %)")
    runs = [bench.idle(seconds, rep) for rep in range(reps)]
    print(f"  whole agent: {spread([total for total, _ in runs], ' %', 3)}")
    names = sorted({name for _, per in runs for name in per})
    print(f"  {'thread':<16}{'CPU % (median)':>16}{'wake-ups/s (median)':>22}")
    for name in names:
        cpu = [per.get(name, (0.0, 0.0))[0] for _, per in runs]
        wakes = [per.get(name, (0.0, 0.0))[1] for _, per in runs]
        print(f"  {name:<16}{statistics.median(cpu):>16.3f}{statistics.median(wakes):>22.2f}")
    uplink = [sum(c for n, (c, _) in per.items() if n.startswith(("uplink", "paho"))) for _, per in runs]
    print(f"  uplink threads' share: {spread(uplink, ' %', 3)}")


def git_head(root: Path) -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


if __name__ == "__main__":
    main()
