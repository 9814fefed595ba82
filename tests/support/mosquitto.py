"""A real mosquitto broker for one test: own port, own config, own persistence dir.

broker = Mosquitto(tmp_path)
broker.start()
broker.kill()      # SIGKILL, as a crash
broker.start()     # same port, same persistence
broker.stop()

Mosquitto(tmp_path, persistence=False) keeps nothing on disk: a broker SIGKILLed
and started again comes back empty (no sessions, no retained or queued messages).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

from tests.support.net import free_port, wait_for_port

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


class Mosquitto:
    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        extra_conf: str = "",
        listener: bool = True,
        persistence: bool = True,
    ) -> None:
        self.dir = Path(workdir) / "mosquitto"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.conf = self.dir / "mosquitto.conf"
        self.log = self.dir / "mosquitto.log"
        # As root, mosquitto would drop to its own user and then could not write
        # its log and persistence here (nor read test keys); keep it as we are.
        user = "user root\n" if os.geteuid() == 0 else ""
        saved = (
            f"persistence true\npersistence_location {self.dir}/\nautosave_interval 1\n"
            if persistence
            else "persistence false\n"
        )
        plain = f"listener {self.port} 127.0.0.1\nallow_anonymous true\n" if listener else ""
        self.conf.write_text(
            "per_listener_settings false\n"
            f"{user}"
            f"{plain}"
            f"{saved}"
            f"log_dest file {self.log}\n"
            "log_type all\n"
            "max_queued_messages 0\n"
            f"{extra_conf}"
        )
        self.proc: subprocess.Popen | None = None

    def start(self, wait_port: int | None = None) -> None:
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            wait_for_port(wait_port or self.port)
        except TimeoutError:
            self.proc.kill()
            err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
            tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"mosquitto did not start: {err}\n{tail}") from None

    def kill(self) -> None:
        """SIGKILL: the broker dies without saving, as in a crash."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
