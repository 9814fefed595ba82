"""A real PostgreSQL cluster for one test: its own data directory, port and socket.

pg = Postgres(tmp_path)
pg.start()
pg.dsn           # postgresql://postgres@127.0.0.1:PORT/postgres
pg.restart()     # pg_ctl stop -m fast, then start: connections are cut
pg.kill()        # SIGKILL the postmaster, as a crash (crash recovery at the next start)
pg.stop()

    with migrated(tmp_path) as pg:   # started, the collector's schema in, stopped at the end
        ...
    with database(pg, "t1") as db:   # a fresh database in a running cluster, dropped at the end
        db.dsn

Debian's ``postgresql`` package puts ``initdb`` and ``pg_ctl`` under
/usr/lib/postgresql/<version>/bin. initdb refuses to run as root, so as root the
cluster belongs to the ``postgres`` user (which the package creates) and every
command runs through ``runuser``; the directory is made over to that user first.

A cluster never outlives the run that started it, whatever way the run ends:

- the cluster's files are in ``$TMPDIR/scan-agent-pg-*`` (``workdir/pg`` links there),
  with an ``owner`` file naming the process that made it (pid and start time);
- :meth:`Postgres.start` registers a stop at exit (atexit: a normal end, an exception,
  SIGINT; and SIGTERM, made to raise ``KeyboardInterrupt`` when nothing else handles it);
- a run SIGKILLed runs none of that, so the first cluster a process makes first sweeps
  (:func:`sweep`) the clusters of owners no longer alive: stopped and removed.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.net import free_port, wait_for_port


def pg_bin(name: str) -> str:
    """The newest installed PostgreSQL's ``name`` (initdb, pg_ctl, postgres)."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(Path(p).parts[-3].split(".")[0]))
    if found:
        return found[-1]
    on_path = shutil.which(name)
    if on_path:
        return on_path
    raise FileNotFoundError(f"no {name}: install Debian's postgresql (scripts/dev test does)")


#: Clusters live in ``$TMPDIR/<PREFIX>*``: where :func:`sweep` looks for those left behind.
PREFIX = "scan-agent-pg-"
#: A directory without an owner file (made by an older checkout) and no postmaster running
#: is removed once it is this old (younger: it may be one being made right now).
UNOWNED_GRACE_S = 600.0
_swept = False


def _started(pid: int) -> str | None:
    """The start time of process ``pid`` (``/proc/PID/stat`` field 22), or None if it is gone:
    with the pid it names one process, not a later one given the same pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int | None) -> bool:
    """Whether process ``pid`` runs (a zombie does not: here nobody may reap a daemon's)."""
    if pid is None:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            pass
    return found


def _postmaster(data: Path) -> int | None:
    try:
        return int((data / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _touched(path: Path) -> float:
    """When the cluster in ``path`` last changed: made, started or stopped (its log)."""
    times = []
    for p in (path, path / "postgres.log", path / "data"):
        with contextlib.suppress(OSError):
            times.append(p.stat().st_mtime)
    return max(times)


def sweep(tmp: Path | None = None) -> list[Path]:
    """Stop and remove the clusters under ``tmp`` whose owner is no longer running (a test
    run or bench SIGKILLed: neither its ``finally`` nor its atexit ran). Clusters of live
    owners (other test runs going on now) are left alone. Returns the directories removed."""
    removed = []
    for path in sorted(Path(tmp or tempfile.gettempdir()).glob(PREFIX + "*")):
        try:
            owner = (path / "owner").read_text().split()
        except OSError:
            owner = None
        postmaster = _postmaster(path / "data")
        if owner is not None:
            pid, started = int(owner[0]), owner[1]
            if _started(pid) == started:
                continue  # its run is still going
        elif _alive(postmaster) or time.time() - _touched(path) < UNOWNED_GRACE_S:
            continue  # an older checkout's: whose it is cannot be told, unless long dead
        if _alive(postmaster):
            os.kill(postmaster, signal.SIGQUIT)  # immediate shutdown; its backends follow it
            deadline = time.monotonic() + 10
            while _alive(postmaster) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(postmaster):
                os.kill(postmaster, signal.SIGKILL)
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _stop_on_sigterm() -> None:
    """SIGTERM (a CI timeout, ``kill``) ends the run as Ctrl-C does, so that ``finally``
    blocks and atexit stop the clusters; only where nothing else handles SIGTERM."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:

        def interrupt(signum, frame):
            raise KeyboardInterrupt(f"signal {signum}")

        signal.signal(signal.SIGTERM, interrupt)


class Postgres:
    """One cluster in ``workdir/pg``: ``start``, ``restart``, ``kill``, ``stop``; ``dsn`` to connect.

    Threads: one thread drives a cluster (the test's, or the bench's main thread).
    """

    def __init__(self, workdir: Path, *, port: int | None = None) -> None:
        global _swept
        if not _swept:
            _swept = True
            sweep()
        self.user = "postgres" if os.geteuid() == 0 else None
        # Not under pytest's tmp_path: pytest sets /tmp/pytest-of-root back to 0700 whenever
        # a session starts, and other sessions may start while this cluster runs (postgres
        # could not reach its files), and pytest removes old tmp_paths without stopping what
        # runs there. A directory of its own, linked from workdir, swept if its owner dies.
        own = Path(tempfile.mkdtemp(prefix=PREFIX))
        pid = os.getpid()
        (own / "owner").write_text(f"{pid} {_started(pid)}\n")
        os.chmod(own, 0o711)
        atexit.register(shutil.rmtree, own, True)
        (Path(workdir) / "pg").symlink_to(own, target_is_directory=True)
        self.dir = own
        self._at_exit = False
        self.data = self.dir / "data"
        self.sockets = self.dir / "sockets"
        self.log = self.dir / "postgres.log"
        self.port = port or free_port()
        self._initdb()

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = ["runuser", "-u", self.user, "--", *args] if self.user else list(args)
        result = subprocess.run(cmd, capture_output=True, timeout=120)
        if check and result.returncode != 0:
            tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(
                f"{args[0]} failed: {result.stdout.decode(errors='replace')}{result.stderr.decode(errors='replace')}"
                f"\n{tail}"
            )
        return result

    def _initdb(self) -> None:
        self.sockets.mkdir(parents=True, exist_ok=True)
        if self.user:
            entry = pwd.getpwnam(self.user)
            # The temporary directories above ours are root's 0700: let postgres through.
            for parent in [self.dir, *self.dir.parents]:
                if parent == Path("/"):
                    break
                mode = parent.stat().st_mode
                if not mode & 0o001:
                    os.chmod(parent, mode | 0o001)
            for path in (self.dir, self.sockets):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self._run(pg_bin("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                f"port = {self.port}\n"
                "listen_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.sockets}'\n"
                # Durable as in production: the tests restart and kill it.
                "fsync = on\n"
                "max_connections = 50\n"
                "shared_buffers = 64MB\n"
            )

    def start(self) -> None:
        if not self._at_exit:
            # Registered after the directory's removal, so run before it (atexit is LIFO).
            atexit.register(self._stop_at_exit)
            _stop_on_sigterm()
            self._at_exit = True
        self._run(pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")
        wait_for_port(self.port)

    def _stop_at_exit(self) -> None:
        if _alive(self.pid()):
            self._run(pg_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)

    def stop(self) -> None:
        self._run(pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop", check=False)

    def restart(self) -> None:
        self.stop()
        self.start()

    def pid(self) -> int | None:
        return _postmaster(self.data)

    def kill(self) -> None:
        """SIGKILL the postmaster and wait until its port is free (its children follow it)."""
        pid = self.pid()
        if pid is None:
            return
        # Backends notice the postmaster is gone and exit: until the last has, its shared
        # memory is in use and a new postmaster refuses to start. Their command lines do not
        # name the data directory, so they are known by their parent.
        # And the postmaster must be gone for good, reaped, not a zombie: a new one reads the
        # old pid in postmaster.pid and refuses to start while that pid exists.
        children = _children(pid)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (Path(f"/proc/{pid}").exists() or any(map(_alive, children))):
            time.sleep(0.05)


@contextlib.contextmanager
def migrated(workdir: Path) -> Iterator[Postgres]:
    """A cluster of its own, started and migrated to the collector's schema; stopped on the
    way out, whatever happened inside (a cluster left running outlives the test run)."""
    import psycopg

    from collector.schema import migrate

    server = Postgres(workdir)
    server.start()
    try:
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            migrate(conn)
        yield server
    finally:
        server.stop()


@dataclass(frozen=True)
class Database:
    """One database of a running cluster: what a test that does not stop the cluster needs."""

    server: Postgres
    name: str

    @property
    def dsn(self) -> str:
        return self.server.dsn.rsplit("/", 1)[0] + "/" + self.name


@contextlib.contextmanager
def database(server: Postgres, name: str, *, template: str = "template1") -> Iterator[Database]:
    """A fresh database ``name`` in ``server``, copied from ``template``; dropped on the way
    out (``WITH (FORCE)``: a process the test left connected does not keep it)."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(server.dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template)))
    try:
        yield Database(server, name)
    finally:
        with psycopg.connect(server.dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
