"""tests.support.postgres never leaves a cluster running: SIGTERM stops it at exit, and
the clusters of a run SIGKILLed are swept by the next one."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.support.agent import ROOT, agent_env
from tests.support.net import wait_until
from tests.support.postgres import _alive, sweep

CHILD = """
import sys, time
from pathlib import Path
from tests.support.postgres import Postgres
pg = Postgres(Path(sys.argv[1]))
pg.start()
print(pg.pid(), flush=True)
time.sleep(120)
"""


def start_child(workdir: Path, tmp: Path) -> tuple[subprocess.Popen, int]:
    """A process that starts a cluster (in ``tmp``) and waits; returns it and the postmaster's pid."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(workdir)],
        stdout=subprocess.PIPE,
        env=agent_env(TMPDIR=str(tmp)),
        cwd=ROOT,
    )
    line = proc.stdout.readline()
    assert line.strip(), f"the child made no cluster (exit {proc.wait(30)})"
    return proc, int(line)


def test_a_cluster_is_stopped_on_sigterm_and_swept_after_sigkill(tmp_path):
    # Its own TMPDIR (under /tmp: postgres must reach it as root), so the sweep sees only these.
    tmp = Path(tempfile.mkdtemp(prefix="scan-agent-sweep-test-"))
    try:
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        proc, postmaster = start_child(tmp_path / "a", tmp)
        assert sweep(tmp) == [] and _alive(postmaster), "a live owner's cluster is left alone"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) != 0
        assert not _alive(postmaster), "SIGTERM: the cluster stopped at exit"
        assert not list(tmp.glob("scan-agent-pg-*")), "and its directory removed"

        proc, postmaster = start_child(tmp_path / "b", tmp)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert _alive(postmaster), "SIGKILL: nothing ran, the cluster is still up"
        removed = sweep(tmp)
        assert [p.parent for p in removed] == [tmp] and not removed[0].exists()
        wait_until(lambda: not _alive(postmaster), timeout=15, what="the swept postmaster gone")
    finally:
        for pidfile in tmp.glob("scan-agent-pg-*/data/postmaster.pid"):
            pid = int(pidfile.read_text().split()[0])
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)
