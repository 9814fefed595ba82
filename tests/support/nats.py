"""A real three-node NATS cluster, JetStream and MQTT on, for one test (or a bench).

Each node has its own free ports (client, cluster route, MQTT, HTTP monitoring)
and its own JetStream store directory, so a node can be SIGKILLed and started
again with its state. NATS's MQTT speaks 3.1.1 only and needs JetStream and a
``server_name``; it keeps MQTT sessions and QoS 1 messages in JetStream streams,
replicated across the cluster.

    cluster = NatsCluster(tmp_path)
    cluster.start()                      # all nodes; waits until MQTT answers on each
    cluster.mqtt_ports                   # [p0, p1, p2]
    cluster.kill(0)                      # SIGKILL node 0, as a crash
    cluster.start_node(0)                # again, same ports and store
    cluster.stop()

Threads: one test thread drives a cluster; nothing here is thread-safe.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt

from tests.support.net import free_port, wait_for_port

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"


@dataclass
class NatsNode:
    """One node's name, ports and files."""

    name: str
    dir: Path
    client_port: int
    cluster_port: int
    mqtt_port: int
    http_port: int
    proc: subprocess.Popen | None = None

    @property
    def conf(self) -> Path:
        return self.dir / "nats.conf"

    @property
    def log(self) -> Path:
        return self.dir / "nats.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class NatsCluster:
    """``size`` nats-server processes routed to each other, JetStream and MQTT on each."""

    def __init__(self, workdir: Path, size: int = 3, *, name: str = "scan-test") -> None:
        self.dir = Path(workdir) / "nats"
        self.name = name
        self.nodes = [
            NatsNode(f"n{i}", self.dir / f"n{i}", free_port(), free_port(), free_port(), free_port())
            for i in range(size)
        ]
        for node in self.nodes:
            node.dir.mkdir(parents=True, exist_ok=True)
            node.conf.write_text(self._conf(node))

    def _conf(self, node: NatsNode) -> str:
        routes = ", ".join(f'"nats-route://127.0.0.1:{n.cluster_port}"' for n in self.nodes if n is not node)
        # One node alone (the interop test) is no cluster: JetStream refuses a cluster without routes.
        cluster = (
            f'cluster {{ name: "{self.name}", listen: 127.0.0.1:{node.cluster_port}, routes: [{routes}] }}\n'
            if len(self.nodes) > 1
            else ""
        )
        n = len(self.nodes)
        return (
            f'server_name: "{node.name}"\n'
            f"listen: 127.0.0.1:{node.client_port}\n"
            f"http: 127.0.0.1:{node.http_port}\n"
            f"jetstream {{ store_dir: {json.dumps(str(node.dir / 'js'))}, max_mem: 64MB, max_file: 1GB }}\n"
            f"{cluster}"
            # R3 for MQTT's sessions, messages and consumers: the default is the number of
            # nodes the first MQTT client's node saw, and with R2 one dead node stalls them.
            f"mqtt {{ listen: 127.0.0.1:{node.mqtt_port}, stream_replicas: {n}, consumer_replicas: {n} }}\n"
        )

    @property
    def mqtt_ports(self) -> list[int]:
        return [n.mqtt_port for n in self.nodes]

    def hosts(self) -> list[str]:
        """The MQTT listeners as ``[mqtt] hosts`` entries."""
        return [f"127.0.0.1:{port}" for port in self.mqtt_ports]

    def start(self, timeout: float = 60.0) -> None:
        """Start every node that is not running; wait until each answers MQTT."""
        for i, node in enumerate(self.nodes):
            if not node.running:
                self._spawn(i)
        for i in range(len(self.nodes)):
            self.wait_ready(i, timeout)

    def start_node(self, i: int, timeout: float = 60.0) -> None:
        """Start node ``i`` again (same ports, same store) and wait until it answers MQTT."""
        self._spawn(i)
        self.wait_ready(i, timeout)

    def _spawn(self, i: int) -> None:
        node = self.nodes[i]
        with node.log.open("ab") as log:
            node.proc = subprocess.Popen(
                [NATS_SERVER, "-c", str(node.conf)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def wait_ready(self, i: int, timeout: float = 60.0) -> None:
        """Wait until an MQTT client gets a CONNACK 0 from node ``i``.

        Not ``/healthz``: after a restart it stays failing for a long while on the
        MQTT retained-message consumer a killed node held, though MQTT works."""
        node = self.nodes[i]
        deadline = time.monotonic() + timeout
        try:
            wait_for_port(node.mqtt_port, timeout)
            while not mqtt_answers(node.mqtt_port):
                if time.monotonic() > deadline:
                    raise TimeoutError
                if not node.running:
                    raise RuntimeError("exited")
                time.sleep(0.2)
        except (TimeoutError, RuntimeError) as problem:
            tail = node.log.read_text(errors="replace")[-3000:] if node.log.exists() else ""
            raise RuntimeError(f"NATS node {node.name} not ready ({problem!r}):\n{tail}") from None

    def kill(self, i: int) -> None:
        """SIGKILL node ``i``: it dies as in a crash."""
        node = self.nodes[i]
        if node.proc is not None:
            node.proc.send_signal(signal.SIGKILL)
            node.proc.wait()
            node.proc = None

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc is not None:
                node.proc.terminate()
                try:
                    node.proc.wait(10)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait()
                node.proc = None

    def node_of_port(self, port: int) -> int:
        return self.mqtt_ports.index(port)


def mqtt_answers(port: int, timeout: float = 5.0) -> bool:
    """Whether an MQTT 3.1.1 client gets a successful CONNACK from ``127.0.0.1:port``."""
    ok: list[bool] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"probe-{uuid.uuid4().hex[:8]}")
    client.on_connect = lambda c, u, f, reason, p: ok.append(not reason.is_failure)
    try:
        client.connect("127.0.0.1", port, keepalive=10)
        deadline = time.monotonic() + timeout
        while not ok and time.monotonic() < deadline:
            client.loop(0.1)
        client.disconnect()
    except OSError:
        return False
    return bool(ok and ok[0])
