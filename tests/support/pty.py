"""A pair of linked pseudo-terminals made by socat: a real serial line without hardware.

The agent opens ``host`` as its serial port; the test writes scanner output to
``device``. :meth:`kill` pulls the cable (the ptys vanish); :meth:`start` again
plugs it back in at the same paths.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

SOCAT = shutil.which("socat") or "/usr/bin/socat"


class PtyPair:
    def __init__(self, workdir: Path, name: str = "scanner") -> None:
        self.host = Path(workdir) / f"{name}-host"
        self.device = Path(workdir) / f"{name}-device"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 5.0) -> None:
        self.proc = subprocess.Popen(
            [
                SOCAT,
                f"pty,raw,echo=0,link={self.host}",
                f"pty,raw,echo=0,link={self.device}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while not (self.host.exists() and self.device.exists()):
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError("socat did not create the pty pair")
            time.sleep(0.01)

    def open_device(self) -> int:
        """A raw file descriptor on the scanner's end, for writing scans."""
        return os.open(self.device, os.O_RDWR | os.O_NOCTTY)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.proc = None
        for link in (self.host, self.device):
            link.unlink(missing_ok=True)
