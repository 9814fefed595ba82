"""A receiving dock end to end, on a real ``scan-agent run`` (stdin scanner) and a real mosquitto
started by the test: the supplier's manifest arrives over MQTT in parts (and once more by
the command line, a no-op), the delivery note's barcode opens the delivery, case codes
receive their units, the close code closes it, and the close event carries the
reconciliation, valid by the document schema; ``documents show`` prints it.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import jsonschema

from agent.events import DOCUMENT_SCHEMA
from agent.ledger import connect, verify
from tests.support.agent import run_agent, start_agent
from tests.support.manifests import make_manifest
from tests.support.mqtt import Commander, Subscriber
from tests.support.net import wait_until

BASE = "trace/v1/wh-1/dock-1"
BILL = "DN00000042"
SCHEMA = json.loads((Path(__file__).parents[1] / "docs" / "document-event.schema.json").read_text())


def config(tmp_path: Path, port: int) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(
        f"""
[station]
device_id = "dock-1"
site_id = "wh-1"
movement = "receive"

[ledger]
path = "{tmp_path / "ledger.db"}"

[feedback]
backend = "none"

[documents]
patterns = {{ delivery = "^DN[0-9]{{8}}$" }}
close_code = "CLOSE"
idle_close_s = 0

[mqtt]
enabled = true
host = "127.0.0.1"
port = {port}
backoff_max_s = 2
"""
    )
    return path


def parts(manifest: dict, size: int) -> list[dict]:
    """The manifest's JSON text cut into parts of ``size`` characters, as a sender would."""
    text = json.dumps(manifest)
    digest = hashlib.sha256(text.encode()).hexdigest()
    count = math.ceil(len(text) / size)
    return [
        {
            "bill_code": manifest["bill_code"],
            "chunk": n,
            "chunks": count,
            "sha256": digest,
            "part": text[n * size : (n + 1) * size],
        }
        for n in range(count)
    ]


def test_a_delivery_received_against_a_manifest_sent_in_parts(tmp_path, broker):
    manifest = make_manifest(BILL, products=2, cases=4, units_per_case=600, middle_per_case=0)
    cfg = config(tmp_path, broker.port)
    sub = Subscriber(broker.port, f"{BASE}/documents", f"{BASE}/events", f"{BASE}/status").start()
    commander = Commander(broker.port, BASE).start()
    agent = start_agent("run", "--config", str(cfg), "--json")
    try:
        wait_until(lambda: b"online" in [m.payload for m in sub.on("/status")], timeout=20, what="agent online")
        pieces = parts(manifest, 200_000)
        assert len(pieces) > 1
        # Out of order, one part twice: still one manifest.
        replies = [commander.send("manifest", piece) for piece in [pieces[-1], *pieces[:-1], pieces[0]]]
        done = [reply for reply in replies if reply["ok"] and "imported" in reply["result"]]
        assert len(done) == 1 and done[0]["result"]["imported"] is True, replies
        assert all(reply["ok"] for reply in replies)
        # A part whose digest does not match the parts put together: refused, naming sha256.
        bad = parts({**manifest, "bill_code": "DN00000043"}, 10_000_000)[0]
        bad["sha256"] = "0" * 64
        refused = commander.send("manifest", bad)
        assert refused["ok"] is False and refused["field"] == "sha256"

        # The same manifest by the command line, while the agent runs: a no-op.
        path = tmp_path / "manifest.json"
        path.write_text(json.dumps(manifest))
        again = run_agent("manifest", "import", str(path), "--config", str(cfg))
        assert again.returncode == 0 and b"imported already" in again.stdout, again.stderr

        cases = [c["code"] for c in manifest["codes"] if c["level"] == "case"]
        for text in (BILL, *cases[:3], "CLOSE"):
            agent.stdin.write(text.encode() + b"\n")
        agent.stdin.flush()
        closed = wait_until(
            lambda: [json.loads(m.payload) for m in sub.on("/documents") if json.loads(m.payload)["event"] == "closed"],
            timeout=20,
            what="delivery closed",
        )[0]
        jsonschema.validate(closed, SCHEMA)
        assert closed["schema"] == DOCUMENT_SCHEMA and closed["reason"] == "incomplete"
        rec = closed["document"]["reconciliation"]
        assert rec["manifest"] == BILL and rec["units"] == {"expected": 2400, "received": 1800}
        assert rec["missing"] == [{"code": cases[3], "level": "case", "units": 600}]
        # Each case scan was one event, listing its units.
        packs = [e for m in sub.on("/events") for e in (json.loads(m.payload),) if (e.get("record") or {}).get("pack")]
        assert sorted(e["code"] for e in packs) == sorted(cases[:3])
        assert all(len(e["record"]["pack"]["units"]) == 600 for e in packs)

        shown = run_agent("documents", "show", BILL, "--config", str(cfg))
        assert shown.returncode == 0, shown.stderr
        assert f"missing case {cases[3]} (600 units)".encode() in shown.stdout
        assert f"{rec['discrepancies']} discrepancies".encode() in shown.stdout and rec["discrepancies"] == 2
    finally:
        agent.stdin.close()
        assert agent.wait(30) == 0
        commander.stop()
        sub.stop()
    conn = connect(tmp_path / "ledger.db")
    assert verify(conn).ok
    assert conn.execute("SELECT COUNT(*) FROM code_state WHERE in_held = 1").fetchone()[0] == 3 + 1800


def test_a_bad_manifest_file_is_refused_whole_naming_its_row(tmp_path):
    manifest = make_manifest(BILL, cases=1, units_per_case=10)
    manifest["codes"][3]["level"] = "pallet"
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest))
    db = tmp_path / "ledger.db"
    assert run_agent("run", "--db", str(db), input=b"").returncode == 0  # the agent makes its ledger
    refused = run_agent("manifest", "import", str(path), "--db", str(db))
    assert refused.returncode == 1
    assert b"codes[3], field level" in refused.stderr and b"nothing imported" in refused.stderr
    assert connect(db).execute("SELECT COUNT(*) FROM manifest_codes").fetchone()[0] == 0
