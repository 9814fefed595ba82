"""A real PostgreSQL cluster for one test: its own data directory, port and socket.

pg = Postgres(tmp_path)
pg.start()
pg.dsn           # postgresql://postgres@127.0.0.1:PORT/postgres
pg.restart()     # pg_ctl stop -m fast, then start: connections are cut
pg.kill()        # SIGKILL the postmaster, as a crash (crash recovery at the next start)
pg.stop()

    with migrated(tmp_path) as pg:   # started, the collector's schema in, stopped at the end
        ...

Debian's ``postgresql`` package puts ``initdb`` and ``pg_ctl`` under
/usr/lib/postgresql/<version>/bin. initdb refuses to run as root, so as root the
cluster belongs to the ``postgres`` user (which the package creates) and every
command runs through ``runuser``; the directory is made over to that user first, and it
is not under pytest's ``tmp_path`` (``workdir/pg`` links to it; it is removed at exit).
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
import time
from collections.abc import Iterator
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


class Postgres:
    """One cluster in ``workdir/pg``: ``start``, ``restart``, ``kill``, ``stop``; ``dsn`` to connect."""

    def __init__(self, workdir: Path, *, port: int | None = None) -> None:
        self.user = "postgres" if os.geteuid() == 0 else None
        self.dir = Path(workdir) / "pg"
        if self.user:
            # pytest sets /tmp/pytest-of-root back to 0700 whenever a session starts, and other
            # sessions may start while this cluster runs: postgres could not reach its files
            # there. As root the cluster lives in a directory of its own, linked from workdir.
            own = Path(tempfile.mkdtemp(prefix="scan-agent-pg-"))
            os.chmod(own, 0o711)
            atexit.register(shutil.rmtree, own, True)
            self.dir.symlink_to(own, target_is_directory=True)
            self.dir = own
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
        self._run(pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")
        wait_for_port(self.port)

    def stop(self) -> None:
        self._run(pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop", check=False)

    def restart(self) -> None:
        self.stop()
        self.start()

    def pid(self) -> int | None:
        pidfile = self.data / "postmaster.pid"
        try:
            return int(pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def kill(self) -> None:
        """SIGKILL the postmaster and wait until its port is free (its children follow it)."""
        pid = self.pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        # Backends notice the postmaster is gone and exit; wait for the last one.
        while time.monotonic() < deadline:
            if subprocess.run(["pgrep", "-f", f"postgres.*{self.data}"], capture_output=True).returncode != 0:
                break
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
