"""The local API against a running agent: ``scan-agent run`` as a subprocess, scanning from
its stdin, and a real HTTP client (the standard library's) talking to it over loopback."""

from __future__ import annotations

import http.client
import json
import re
import socket
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.agent import ROOT, agent_cmd, agent_env
from tests.support.net import free_port, wait_for_port, wait_until

CODES = [f"8123456789012{n:07d}" for n in range(1, 1000)]
#: An event id no ledger holds (fixed, so that the parametrized ids are the same in every collection).
UNKNOWN_EVENT = uuid.UUID(int=0x5CA9, version=4)


class Agent:
    """``scan-agent run --json --config agent.toml`` with the API on; scans go in on stdin."""

    def __init__(self, tmp_path: Path, *, extra: str = "", token: str | None = None) -> None:
        self.port = free_port()
        self.token = token
        self.db = tmp_path / "ledger.db"
        cfg = tmp_path / "agent.toml"
        token_line = ""
        if token is not None:
            (tmp_path / "token").write_text(token + "\n")
            token_line = f'token_file = "{tmp_path / "token"}"\n'
        cfg.write_text(
            f'[ledger]\npath = "{self.db}"\n[feedback]\nbackend = "none"\n{extra}\n'
            f"[api]\nenabled = true\nport = {self.port}\n{token_line}"
        )
        self.proc = subprocess.Popen(
            agent_cmd("run", "--json", "--config", str(cfg)),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=agent_env(),
            cwd=ROOT,
        )
        self.printed: list[dict] = []
        try:
            wait_for_port(self.port, timeout=20)
        except TimeoutError:
            self.proc.kill()
            raise AssertionError(self.proc.stderr.read().decode()) from None

    def scan(self, *codes: str) -> None:
        self.proc.stdin.write("".join(f"{c}\n" for c in codes).encode())
        self.proc.stdin.flush()

    def decisions(self, n: int) -> list[dict]:
        """Wait until the agent has printed ``n`` decisions in all; return them all."""
        while len(self.printed) < n:
            line = self.proc.stdout.readline()
            assert line, f"the agent ended: {self.proc.stderr.read().decode()}"
            self.printed.append(json.loads(line))
        return self.printed

    def request(
        self, method: str, path: str, body: object = None, *, headers: dict | None = None, raw: bytes | None = None
    ):
        """``(status, parsed JSON or text, headers)``."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        sent = dict(headers or {})
        if self.token is not None and "Authorization" not in sent:
            sent["Authorization"] = f"Bearer {self.token}"
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        if data is not None:
            sent.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=data, headers=sent)
        response = conn.getresponse()
        text = response.read().decode()
        conn.close()
        kind = response.getheader("content-type", "")
        return response.status, json.loads(text) if kind.startswith("application/json") else text, response

    def get(self, path: str, **kw):
        status, body, _ = self.request("GET", path, **kw)
        return status, body

    def post(self, path: str, body: object = None, **kw):
        status, reply, _ = self.request("POST", path, body, **kw)
        return status, reply

    def stop(self) -> str:
        """Close stdin (the agent finishes and exits); its stderr."""
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.stderr.read().decode()


class Stream:
    """A raw SSE client: reads events off ``GET /v1/decisions/stream``."""

    def __init__(self, port: int, *, last_event_id: int | None = None, query: str = "", rcvbuf: int | None = None):
        self.sock = socket.socket()
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(15)
        self.sock.connect(("127.0.0.1", port))
        extra = "" if last_event_id is None else f"Last-Event-ID: {last_event_id}\r\n"
        self.sock.sendall(f"GET /v1/decisions/stream{query} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode())
        self.buffer = b""
        head = self._until(b"\r\n\r\n")
        self.status = int(head.split()[1])

    def _until(self, mark: bytes) -> bytes:
        while mark not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self.buffer += chunk
        head, self.buffer = self.buffer.split(mark, 1)
        return head

    def events(self, n: int) -> list[dict]:
        """The next ``n`` events (chunked framing and comments skipped)."""
        found: list[dict] = []
        while len(found) < n:
            # Chunk-size lines sit between frames; the data lines are what count.
            block = self._until(b"\n\n")
            ids = re.findall(rb"^id: (\d+)$", block, re.M)
            data = re.findall(rb"^data: (.*)$", block, re.M)
            if data:
                event = json.loads(data[0])
                assert int(ids[0]) == event["seq"]
                found.append(event)
        return found

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def agent(tmp_path):
    running = Agent(tmp_path)
    yield running
    running.stop()


def test_status_decisions_and_metrics_tell_what_the_agent_decided(agent):
    agent.scan(CODES[0], CODES[1], "4006381333931", CODES[0])  # accepted, accepted, an EAN-13, a duplicate
    printed = agent.decisions(4)
    assert [p["verdict"] for p in printed] == ["accepted", "accepted", "rejected", "duplicate"]
    status, body = agent.get("/v1/status")
    assert status == 200
    assert body["last_seq"] == 4 and body["scanners"] == {"console": True}
    assert body["outbox"]["depth"] == 4  # no MQTT here: every event waits
    assert body["document"] is None and body["lock"] is None and "ready" in body["states"]

    status, page = agent.get("/v1/decisions?after_seq=1&limit=2")
    assert status == 200
    assert [e["seq"] for e in page["events"]] == [2, 3] and page["next_after_seq"] == 3 and page["last_seq"] == 4
    assert [e["verdict"] for e in page["events"]] == ["accepted", "rejected"]
    assert page["events"][0]["schema"] == "scan-event/1" and page["events"][0]["event_id"] == printed[1]["event_id"]
    status, page = agent.get("/v1/decisions?after_seq=4")
    assert (status, page["events"], page["next_after_seq"]) == (200, [], 4)

    status, text = agent.get("/metrics")
    assert status == 200
    assert 'scan_agent_decisions_total{verdict="accepted"} 2' in text
    assert 'scan_agent_decisions_total{verdict="duplicate"} 1' in text
    assert "scan_agent_decision_latency_seconds_count 4" in text  # four scans, each read to commit
    assert "scan_agent_outbox_depth 4" in text
    assert 'scan_agent_scanner_present{scanner="console"} 1' in text
    assert "scan_agent_uplink_enabled 0" in text


def test_a_document_through_the_api(agent):
    line = {"product_id": "8123456", "name": "Amoxicillin", "expected": 2}
    status, reply = agent.post("/v1/documents", {"id": "RX-1", "kind": "prescription", "lines": [line]})
    assert status == 201 and reply["rows"][0]["verdict"] == "opened"
    # The same id again: the station refuses it.
    status, reply = agent.post("/v1/documents", {"id": "RX-1", "kind": "prescription", "lines": [line]})
    assert (status, reply["field"]) == (409, "id")
    agent.scan(CODES[0], "8765432109876543210")  # one on the document, one wrong drug
    printed = agent.decisions(3)
    assert [p["verdict"] for p in printed] == ["opened", "accepted", "rejected"]

    status, doc = agent.get("/v1/documents/RX-1")
    assert status == 200 and doc["status"] == "open" and doc["progress"]["collected"] == 1
    assert doc["codes"][0]["drug_trac_codg"] == CODES[0]

    status, reply = agent.post(
        "/v1/documents/RX-1/exceptions",
        {"line": "8123456", "kind": "damaged", "reason": "label torn", "approver": "pharmacist-2"},
    )
    assert status == 200 and reply["rows"][0]["verdict"] == "exception"
    status, reply = agent.post(f"/v1/scans/{printed[1]['event_id']}/void", {"reason": "wrong box", "approver": "p2"})
    assert status == 200 and reply["rows"][0]["verdict"] == "void"
    status, reply = agent.post(f"/v1/scans/{printed[1]['event_id']}/void", {"reason": "again"})
    assert (status, reply["field"]) == (409, "event_id")  # voided already
    status, reply = agent.post("/v1/documents/RX-1/close")
    assert status == 200 and reply["rows"][0]["verdict"] == "closed"
    status, doc = agent.get("/v1/documents/RX-1")
    assert doc["status"] != "open" and doc["closed"]["source_kind"] == "api"
    # Every command was a ledger row, streamed and paged like a scan.
    status, page = agent.get("/v1/decisions?after_seq=0")
    verdicts = [(e.get("event") or e["verdict"]) for e in page["events"]]
    assert verdicts == ["opened", "accepted", "rejected", "exception", "void", "closed"]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "field"),
    [
        ("GET", "/v1/decisions?after_seq=-1", None, 400, "after_seq"),
        ("GET", "/v1/decisions?limit=0", None, 400, "limit"),
        ("GET", "/v1/decisions?limit=abc", None, 400, "limit"),
        ("POST", "/v1/documents", {"id": "D-1", "kind": "sell"}, 400, "kind"),
        ("POST", "/v1/documents", {"id": "D-1", "kind": "sale", "colour": "red"}, 400, "colour"),
        (
            "POST",
            "/v1/documents",
            {"id": "D-1", "kind": "sale", "lines": [{"product_id": "12"}]},
            400,
            "lines[0].product_id",
        ),
        ("POST", "/v1/documents", ["not", "an", "object"], 400, None),
        ("GET", "/v1/documents/NOPE", None, 404, "id"),
        ("POST", "/v1/documents/NOPE/close", None, 404, "id"),
        ("POST", "/v1/documents/NOPE/close", {"extra": 1}, 400, "extra"),
        ("POST", "/v1/documents/NOPE/exceptions", {"line": "8123456", "kind": "lost"}, 400, "kind"),
        ("POST", "/v1/scans/not-a-uuid/void", {"reason": "x"}, 400, "event_id"),
        ("POST", f"/v1/scans/{UNKNOWN_EVENT}/void", {"reason": "x"}, 404, "event_id"),
        ("POST", "/v1/acknowledge", {"by": "sup"}, 409, "station"),  # not locked
        ("POST", "/v1/acknowledge", {}, 400, "by"),
        ("GET", "/v1/nothing-here", None, 404, None),
        ("DELETE", "/v1/status", None, 405, None),
        ("POST", "/v1/decisions/stream", None, 405, None),
    ],
)
def test_bad_input_gets_a_clear_answer(agent, method, path, body, status, field):
    got, reply, _ = agent.request(method, path, body)
    assert got == status, reply
    assert isinstance(reply, dict) and reply["error"]
    assert reply.get("field") == field


def test_bodies_that_are_not_json_or_too_large(agent):
    status, reply, _ = agent.request("POST", "/v1/acknowledge", raw=b"{not json")
    assert status == 400 and "not JSON" in reply["error"]
    status, reply, _ = agent.request("POST", "/v1/documents", raw=b"x" * (1 << 20 + 1))
    assert status == 413 and "at most" in reply["error"]


def test_a_stream_client_resumes_after_a_forced_disconnect_with_no_gap_and_no_repeat(agent):
    first = Stream(agent.port, query="?after_seq=0")
    assert first.status == 200
    agent.scan(*CODES[:10])
    got = first.events(10)
    first.close()  # cut off mid-run
    agent.scan(*CODES[10:30])  # decided while nobody listens
    agent.decisions(30)
    agent.scan(CODES[0])  # a duplicate: still an event with a seq
    again = Stream(agent.port, last_event_id=got[-1]["seq"])
    got += again.events(21)
    agent.scan(*CODES[30:40])
    got += again.events(10)
    again.close()
    assert [e["seq"] for e in got] == list(range(1, 42))
    printed = agent.decisions(41)
    assert [e["event_id"] for e in got] == [p["event_id"] for p in printed]


def test_a_double_read_is_not_streamed(agent):
    stream = Stream(agent.port)
    agent.scan(CODES[0], CODES[0])  # at once: the scanner read the same box twice
    agent.scan(CODES[1])
    printed = agent.decisions(3)
    assert [p["verdict"] for p in printed] == ["accepted", "double_read", "accepted"]
    events = stream.events(2)
    stream.close()
    assert [(e["seq"], e["code"]) for e in events] == [(1, CODES[0]), (2, CODES[1])]


def test_a_stalled_client_is_dropped_and_never_holds_up_a_decision(agent):
    stalled = Stream(agent.port, rcvbuf=4096)  # connects, then never reads again
    reader = Stream(agent.port)
    n = 900  # far more than the stream buffer (256) and the socket buffers hold
    with ThreadPoolExecutor(1) as pool:
        read = pool.submit(reader.events, n)  # a client that reads as the events come
        agent.scan(*CODES[:n])
        printed = agent.decisions(n)  # every scan decided and printed while the stalled client sat there
        assert [p["seq"] for p in printed] == list(range(1, n + 1))
        assert [e["seq"] for e in read.result(60)] == list(range(1, n + 1))  # and it kept up

    def dropped() -> str | None:
        text = agent.get("/metrics")[1]
        return text if "scan_agent_stream_dropped_total 1" in text else None

    text = wait_until(dropped, what="the stalled client dropped")
    assert "scan_agent_stream_clients 1" in text  # the reader is still there; the stalled one is not
    # The stalled client finds its connection closed after what was in flight, and resumes.
    received = []
    stalled.sock.settimeout(15)
    try:
        while True:
            received += stalled.events(1)
    except (EOFError, ConnectionError):
        pass
    assert [e["seq"] for e in received] == list(range(1, len(received) + 1))
    assert len(received) < n
    resumed = Stream(agent.port, last_event_id=received[-1]["seq"] if received else 0)
    rest = resumed.events(n - len(received))
    assert [e["seq"] for e in received + rest] == list(range(1, n + 1))


def test_a_token_is_needed_when_configured(tmp_path):
    token = "s3cret-token-0123456789"
    agent = Agent(tmp_path, token=token)
    try:
        for headers in (
            {"Authorization": ""},
            {"Authorization": "Bearer wrong-token-0123456789"},
            {"Authorization": token},
        ):
            for path in ("/v1/status", "/metrics", "/v1/openapi.json", "/v1/decisions/stream"):
                status, reply, response = agent.request("GET", path, headers=headers)
                assert status == 401 and reply["error"], (path, headers)
                assert response.getheader("www-authenticate") == "Bearer"
        status, reply = agent.post("/v1/acknowledge", {"by": "x"}, headers={"Authorization": "Bearer nope"})
        assert status == 401
        assert agent.get("/v1/status")[0] == 200
    finally:
        agent.stop()


def test_off_loopback_without_a_token_the_agent_refuses_to_start(tmp_path):
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[ledger]\npath = "{tmp_path / "l.db"}"\n[api]\nenabled = true\nbind = "0.0.0.0"\n')
    result = subprocess.run(
        agent_cmd("run", "--config", str(cfg)), input=b"", capture_output=True, env=agent_env(), cwd=ROOT, timeout=30
    )
    assert result.returncode == 2
    assert "token_file" in result.stderr.decode() and "loopback" in result.stderr.decode()


def test_a_port_in_use_is_a_clear_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = tmp_path / "agent.toml"
        cfg.write_text(f'[ledger]\npath = "{tmp_path / "l.db"}"\n[api]\nenabled = true\nport = {port}\n')
        result = subprocess.run(
            agent_cmd("run", "--config", str(cfg)),
            input=b"",
            capture_output=True,
            env=agent_env(),
            cwd=ROOT,
            timeout=30,
        )
    assert result.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in result.stderr.decode()


def test_no_endpoint_ever_returns_the_mqtt_password_or_the_device_key(tmp_path):
    from tests.support.pki import TestCA

    ca = TestCA(tmp_path)
    cert, key = ca.client_cert("kiosk-0001")
    password = "MQTT-PASSWORD-7f3a9c-do-not-leak"
    (tmp_path / "mqtt.pw").write_text(password + "\n")
    key_body = [line for line in key.read_text().splitlines() if "-----" not in line]
    mqtt = (
        f'[mqtt]\nenabled = true\nhost = "127.0.0.1"\nport = {free_port()}\ntls = true\nusername = "kiosk"\n'
        f'password_file = "{tmp_path / "mqtt.pw"}"\nca_file = "{ca.cert_path}"\n'
        f'cert_file = "{cert}"\nkey_file = "{key}"\n'
    )
    agent = Agent(tmp_path, extra=mqtt)
    try:
        agent.scan(CODES[0])
        printed = agent.decisions(1)
        answers = []
        for method, path, body in [
            ("GET", "/v1/status", None),
            ("GET", "/v1/decisions?after_seq=0", None),
            ("GET", "/metrics", None),
            ("GET", "/v1/openapi.json", None),
            ("POST", "/v1/documents", {"id": "S-1", "kind": "sale"}),
            ("GET", "/v1/documents/S-1", None),
            (
                "POST",
                "/v1/documents/S-1/exceptions",
                {"line": "8123456", "kind": "damaged", "reason": "r", "approver": "a"},
            ),
            ("POST", f"/v1/scans/{printed[0]['event_id']}/void", {"reason": "r"}),
            ("POST", "/v1/documents/S-1/close", None),
            ("POST", "/v1/acknowledge", {"by": "x"}),
            ("GET", "/v1/documents/../../etc", None),
        ]:
            status, reply, _ = agent.request(method, path, body)
            assert status < 500
            answers.append(json.dumps(reply) if not isinstance(reply, str) else reply)
        stream = Stream(agent.port, query="?after_seq=0")
        answers.append(json.dumps(stream.events(3)))
        stream.close()
        everything = "\n".join(answers)
        assert "uplink" in everything and "kiosk-0001" in everything  # the answers are real
        assert password not in everything and "MQTT-PASSWORD" not in everything
        assert not any(part in everything for part in key_body)
        assert "PRIVATE KEY" not in everything
    finally:
        agent.stop()
