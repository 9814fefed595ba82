"""A real RabbitMQ with its MQTT plugin, for one test: own node name, ports, files and epmd.

Debian's ``rabbitmq-server`` (3.10, MQTT 3.1.1 only), started from
``/usr/lib/rabbitmq/bin`` as the current user, never touching the system
instance: its own ``RABBITMQ_NODENAME``, ``RABBITMQ_MNESIA_BASE``,
``RABBITMQ_LOG_BASE``, config and enabled-plugins files, ``HOME`` (for the
Erlang cookie), and an epmd of its own on a free ``ERL_EPMD_PORT``.

    rabbit = RabbitMQ(tmp_path)
    rabbit.start()          # raises RabbitUnavailable (with the reason) if it cannot start
    rabbit.mqtt_port
    rabbit.stop()

Threads: one test thread drives it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

from tests.support.nats import mqtt_answers
from tests.support.net import free_port

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")
EPMD = shutil.which("epmd") or next(iter(sorted(Path("/usr/lib/erlang").glob("erts-*/bin/epmd"))), None)


class RabbitUnavailable(RuntimeError):
    """RabbitMQ is not installed here or would not start; the message says why."""


class RabbitMQ:
    def __init__(self, workdir: Path) -> None:
        self.dir = Path(workdir) / "rabbitmq"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.mqtt_port = free_port()
        self.amqp_port = free_port()
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.node = f"scantest{uuid.uuid4().hex[:8]}@localhost"
        self.log = self.dir / "startup.log"
        (self.dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.amqp_port}\n"
            f"mqtt.listeners.tcp.default = 127.0.0.1:{self.mqtt_port}\n"
            "mqtt.allow_anonymous = true\n"
            "loopback_users = none\n"
        )
        (self.dir / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        self.proc: subprocess.Popen | None = None

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            HOME=str(self.dir),
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.amqp_port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            ERL_EPMD_PORT=str(self.epmd_port),
            ERL_EPMD_ADDRESS="127.0.0.1",
            RABBITMQ_MNESIA_BASE=str(self.dir / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.dir / "log"),
            RABBITMQ_CONFIG_FILE=str(self.dir / "rabbitmq.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.dir / "enabled_plugins"),
            RABBITMQ_PID_FILE=str(self.dir / "rabbitmq.pid"),
        )
        return env

    def start(self, timeout: float = 90.0) -> None:
        server = RABBIT_BIN / "rabbitmq-server"
        if not server.exists():
            raise RabbitUnavailable(f"{server} is not installed (Debian package rabbitmq-server)")
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(server)], env=self.env(), cwd=self.dir, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while not mqtt_answers(self.mqtt_port, timeout=2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace")[-2000:]
                self.stop()
                raise RabbitUnavailable(f"rabbitmq-server did not start its MQTT listener: {tail}")
            time.sleep(0.5)

    def stop(self) -> None:
        """Stop the node (SIGTERM, then SIGKILL) and the epmd it started."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        if EPMD is not None:
            # Our own epmd, on our own port: ask it to end.
            subprocess.run(
                [str(EPMD), "-port", str(self.epmd_port), "-kill"], capture_output=True, timeout=10, check=False
            )
