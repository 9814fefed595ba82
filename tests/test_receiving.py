"""Receiving against the supplier's manifest, on the ledger itself: case and middle-pack codes
that receive every unit inside (all or none), the duplicate reasons of packs and their
units, codes not on the manifest, deliveries without one, and reconciliation at close.

Manifests come from :func:`tests.support.manifests.make_manifest` (realistic: 600-unit
cases, middle packs, mixed 拼箱 and partial 零箱 cases).
"""

from __future__ import annotations

import json
import sqlite3

import pytest

from agent import codes
from agent.clock import Clock
from agent.ledger import SCHEMA_VERSION, Ledger, verify
from agent.ledger.documents import Document, DocumentError
from agent.ledger.manifests import read_manifest
from agent.read import Read
from agent.station import Station
from tests.support.manifests import make_manifest

BILL = "DN00000001"
CLI = Read(b"", "cli", "cli")


class Dock:
    """A ledger at a receiving dock, with the manifest it imported."""

    def __init__(self, manifest: dict, *, unexpected: str = "reject", lifecycle: str = "warn", clock=None) -> None:
        self.manifest = manifest
        self.ledger = Ledger.open(
            ":memory:", device_id="dock-1", site_id="wh-1", lifecycle=lifecycle, unexpected=unexpected, clock=clock
        )
        self.imported = self.ledger.import_manifest(read_manifest(manifest), read=CLI)

    def scan(self, code: str, movement: str = "receive", source: str = "stdin"):
        read = Read(code.encode(), "stdin", source)
        return self.ledger.decide_and_record(read, movement, codes.parse(read.raw))

    def open(self, doc_id: str = BILL, **kwargs):
        return self.ledger.open_document(Document(id=doc_id, kind="delivery", **kwargs), read=CLI)[-1]

    def close(self, doc_id: str = BILL):
        return self.ledger.close_document(doc_id, closed_by="cli", read=CLI)[-1]

    def state(self, code: str) -> sqlite3.Row | None:
        return self.ledger.conn.execute("SELECT * FROM code_state WHERE code = ?", (code,)).fetchone()

    def codes(self, level: str, parent: str | None = None) -> list[str]:
        return [
            c["code"]
            for c in self.manifest["codes"]
            if c["level"] == level and (parent is None or c.get("parent") == parent)
        ]

    def units_under(self, pack: str) -> list[str]:
        direct = [c for c in self.manifest["codes"] if c.get("parent") == pack]
        units = [c["code"] for c in direct if c["level"] == "unit"]
        for middle in (c["code"] for c in direct if c["level"] == "middle"):
            units += self.units_under(middle)
        return units


def received(dock: Dock, code: str) -> bool:
    row = dock.state(code)
    return row is not None and row["in_held"] == 1


def test_a_case_scan_receives_every_unit_in_one_row_and_each_unit_is_dispensed_on_its_own():
    dock = Dock(make_manifest(BILL, products=1, cases=2, units_per_case=600))
    case = dock.codes("case")[0]
    before = dock.ledger.conn.execute("SELECT COUNT(*) FROM scans").fetchone()[0]
    decision = dock.scan(case)
    assert decision.verdict == "accepted" and decision.reason is None
    assert decision.record["pack"]["level"] == "case" and len(decision.record["pack"]["units"]) == 600
    assert dock.ledger.conn.execute("SELECT COUNT(*) FROM scans").fetchone()[0] == before + 1  # one row, one event
    units = dock.units_under(case)
    assert sorted(decision.record["pack"]["units"]) == sorted(units)
    assert all(received(dock, unit) and dock.state(unit)["in_id"] == decision.scan_id for unit in units)
    other_case_units = dock.units_under(dock.codes("case")[1])
    assert not any(dock.state(unit) for unit in other_case_units)
    # Later each unit is a unit: dispensed normally, not flagged never_received (lifecycle warn).
    sale = dock.scan(units[7], "dispense")
    assert (sale.verdict, sale.reason) == ("accepted", None)
    assert dock.scan(units[7], "dispense", source="other").reason == "already_dispensed"
    assert verify(dock.ledger.conn).ok


def test_a_unit_of_a_received_case_is_received_in_case_and_the_case_again_is_already_received():
    dock = Dock(make_manifest(BILL, cases=1, units_per_case=12))
    case = dock.codes("case")[0]
    assert dock.scan(case).verdict == "accepted"
    unit = dock.units_under(case)[3]
    again = dock.scan(unit)
    assert (again.verdict, again.reason) == ("duplicate", "received_in_case")
    assert case in again.detail and again.earlier is not None
    twice = dock.scan(case, source="other")
    assert (twice.verdict, twice.reason) == ("duplicate", "already_received")


def test_a_pack_and_its_own_child_in_one_document_are_refused_either_way_round():
    manifest = make_manifest(BILL, cases=2, units_per_case=12, middle_per_case=3)
    dock = Dock(manifest)
    dock.open()
    first, second = dock.codes("case")
    # The case first: then its middle pack and its unit.
    assert dock.scan(first).verdict == "accepted"
    middle = dock.codes("middle", parent=first)[0]
    unit = dock.units_under(middle)[0]
    for child in (middle, unit):
        refused = dock.scan(child, source=child)
        assert (refused.verdict, refused.reason) == ("duplicate", "parent_child_same_document"), child
    # A unit first: then its middle pack and its case are refused, and nothing of them moves.
    middle2 = dock.codes("middle", parent=second)[1]
    unit2 = dock.units_under(middle2)[0]
    assert dock.scan(unit2).verdict == "accepted"
    for parent in (middle2, second):
        refused = dock.scan(parent, source=parent)
        assert (refused.verdict, refused.reason) == ("duplicate", "parent_child_same_document"), parent
        assert unit2 in refused.detail
    assert not received(dock, second) and not received(dock, dock.units_under(middle2)[1])


def test_a_middle_pack_receives_its_units_and_then_its_case_is_a_duplicate_naming_them():
    dock = Dock(make_manifest(BILL, cases=1, units_per_case=20, middle_per_case=4))
    case = dock.codes("case")[0]
    middle = dock.codes("middle", parent=case)[2]
    decision = dock.scan(middle)
    assert decision.verdict == "accepted" and decision.record["pack"]["level"] == "middle"
    assert sorted(decision.record["pack"]["units"]) == sorted(dock.units_under(middle))
    assert len(decision.record["pack"]["units"]) == 5
    later = dock.scan(case)  # another delivery's worth of scanning: not the same document
    assert (later.verdict, later.reason) == ("duplicate", "already_received")
    assert middle in later.detail
    # All or nothing: the case's other units did not move.
    others = set(dock.units_under(case)) - set(dock.units_under(middle))
    assert others and not any(received(dock, unit) for unit in others)


def test_mixed_and_partial_cases_receive_only_the_units_the_relation_lists():
    manifest = make_manifest(BILL, products=3, cases=3, units_per_case=30, mixed=1, partial=1)
    dock = Dock(manifest)
    partial = next(c["code"] for c in manifest["codes"] if c.get("partial"))
    mixed = next(c["code"] for c in manifest["codes"] if c["level"] == "case" and not c.get("ratio"))
    for pack in (partial, mixed):
        decision = dock.scan(pack)
        assert decision.verdict == "accepted"
        assert sorted(decision.record["pack"]["units"]) == sorted(dock.units_under(pack))
    assert len(dock.units_under(partial)) < 30
    assert len({unit[:7] for unit in dock.units_under(mixed)}) == 3  # units of every product


def test_a_case_holding_a_unit_dispensed_before_is_refused_whole_as_backflow():
    """回流: a code sold here before turns up again in a delivery."""
    dock = Dock(make_manifest(BILL, cases=1, units_per_case=10), lifecycle="warn")
    case = dock.codes("case")[0]
    sold = dock.units_under(case)[4]
    assert dock.scan(sold, "dispense").reason == "never_received"  # flagged, recorded
    decision = dock.scan(case)
    assert (decision.verdict, decision.reason) == ("duplicate", "dispensed_before")
    assert sold in decision.detail
    assert not received(dock, case) and not any(received(dock, u) for u in dock.units_under(case))
    single = dock.scan(sold, source="unit")
    assert (single.verdict, single.reason) == ("duplicate", "dispensed_before")


def test_a_delivery_takes_the_manifests_lines_and_reconciles_complete():
    manifest = make_manifest(BILL, products=2, cases=2, units_per_case=24, middle_per_case=2, loose=3)
    dock = Dock(manifest)
    opened = dock.open()
    assert opened.record["manifest"] == BILL and "no_manifest" not in opened.record
    expected = {line["product_id"]: line["quantity"] for line in manifest["lines"]}
    assert {line["product_id"]: line["expected"] for line in opened.progress["lines"]} == expected
    for case in dock.codes("case"):
        assert dock.scan(case).verdict == "accepted"
    for unit in (c["code"] for c in manifest["codes"] if c["level"] == "unit" and not c.get("parent")):
        assert dock.scan(unit).verdict == "accepted"
    closed = dock.close()
    assert closed.reason == "complete"
    rec = closed.record["reconciliation"]
    assert rec["discrepancies"] == 0 and rec["missing"] == [] and rec["unexpected"] == [] and rec["mismatches"] == []
    assert all(line["received"] == line["expected"] for line in rec["lines"])
    # The upload's lists: a case code stands for its units, once.
    listed = [entry for line in closed.record["lines"] for entry in line["drugtracinfo"]]
    assert {e["drug_trac_codg"] for e in listed if e.get("level") == "case"} == set(dock.codes("case"))
    assert sum(e.get("units", 1) for e in listed) == sum(expected.values())


def test_reconciliation_names_a_missing_case_once_and_codes_not_on_the_manifest():
    manifest = make_manifest(BILL, products=1, cases=3, units_per_case=10)
    dock = Dock(manifest, unexpected="flag")
    dock.open()
    first, second, third = dock.codes("case")
    assert dock.scan(first).verdict == "accepted"
    # Of the second case only some units arrive, loose.
    for unit in dock.units_under(second)[:4]:
        assert dock.scan(unit).verdict == "accepted"
    stranger = f"{manifest['lines'][0]['product_id']}9999999990000"
    flagged = dock.scan(stranger)
    assert (flagged.verdict, flagged.reason) == ("accepted", "not_on_manifest")
    rec = dock.close().record["reconciliation"]
    missing = {item["code"]: item for item in rec["missing"]}
    assert missing[third] == {"code": third, "level": "case", "units": 10}
    assert set(missing) - {third} == set(dock.units_under(second)[4:])
    assert rec["unexpected"] == [stranger]
    assert rec["discrepancies"] >= 1 + 6 + 1


def test_a_code_not_on_the_manifest_is_rejected_by_default_and_nothing_moves():
    manifest = make_manifest(BILL, products=1, cases=1, units_per_case=10)
    dock = Dock(manifest)
    dock.open()
    stranger = f"{manifest['lines'][0]['product_id']}9999999990000"
    refused = dock.scan(stranger)
    assert (refused.verdict, refused.reason) == ("rejected", "not_on_manifest")
    assert dock.state(stranger) is None


def test_a_delivery_without_a_manifest_receives_unit_by_unit_and_says_no_manifest():
    dock = Dock(make_manifest("DN00000002", cases=1, units_per_case=10))
    opened = dock.open("DN99999999")
    assert opened.record.get("no_manifest") is True and "manifest" not in opened.record
    loose = "81234560000000000017"
    assert dock.scan(loose).verdict == "accepted"  # no unexpected check: there is nothing to check against
    closed = dock.close("DN99999999")
    assert closed.record["no_manifest"] is True and "reconciliation" not in closed.record


def test_a_line_expiring_before_the_close_is_a_mismatch():
    class Late(Clock):
        def now(self):
            from datetime import UTC, datetime

            return datetime(2031, 1, 1, tzinfo=UTC)

    dock = Dock(make_manifest(BILL, cases=1, units_per_case=6), clock=Late())
    dock.open()
    dock.scan(dock.codes("case")[0])
    rec = dock.close().record["reconciliation"]
    assert len(rec["mismatches"]) == 6 and {m["problem"] for m in rec["mismatches"]} == {"expired"}


def test_importing_the_same_manifest_again_is_a_no_op_and_another_with_its_bill_is_refused():
    manifest = make_manifest(BILL, cases=1, units_per_case=10)
    dock = Dock(manifest)
    assert len(dock.imported) == 1 and dock.imported[0].verdict == "manifest"
    rows = dock.ledger.conn.execute("SELECT COUNT(*) FROM scans").fetchone()[0]
    shuffled = {**manifest, "codes": list(reversed(manifest["codes"]))}  # same manifest, other order
    assert dock.ledger.import_manifest(read_manifest(shuffled), read=CLI) == []
    other = make_manifest(BILL, cases=1, units_per_case=10, seed=9)
    with pytest.raises(DocumentError, match="other contents") as refused:
        dock.ledger.import_manifest(read_manifest(other), read=CLI)
    assert refused.value.field == "bill_code"
    assert dock.ledger.conn.execute("SELECT COUNT(*) FROM scans").fetchone()[0] == rows
    assert dock.ledger.conn.execute("SELECT COUNT(*) FROM manifest_codes").fetchone()[0] == len(manifest["codes"])


def test_verify_catches_a_manifests_codes_altered_beside_the_chain():
    dock = Dock(make_manifest(BILL, cases=1, units_per_case=10))
    conn = dock.ledger.conn
    assert verify(conn).ok
    conn.execute("DROP TRIGGER manifest_codes_no_update")  # what an attacker with the file could do
    unit = dock.codes("unit")[0]
    conn.execute("UPDATE manifest_codes SET parent = NULL WHERE code = ?", (unit,))
    result = verify(conn)
    assert not result.ok and BILL in result.problem and "digest" in result.problem


def test_a_bad_manifest_through_the_station_names_the_row_and_imports_nothing():
    manifest = make_manifest(BILL, cases=1, units_per_case=10)
    case = manifest["codes"][0]["code"]
    manifest["codes"][5]["parent"] = "81234569999999999999"  # a parent not on the manifest
    ledger = Ledger.open(":memory:", device_id="dock-1", site_id="wh-1")

    class Here:  # the verbs run at once on this thread, as `scan-agent manifest import` does with no agent
        def __init__(self):
            from agent.pipeline import Context

            self.ledger, self.context, self.leading_digits = ledger, Context(), ("8",)

        def call(self, verb):
            from concurrent.futures import Future

            future = Future()
            future.set_result(verb())
            return future

    station = Station(Here())
    with pytest.raises(DocumentError) as refused:
        station.import_manifest(manifest, via="cli")
    assert refused.value.field == "codes[5].parent"
    assert ledger.conn.execute("SELECT COUNT(*) FROM scans").fetchone()[0] == 0
    assert ledger.conn.execute("SELECT COUNT(*) FROM manifest_codes").fetchone()[0] == 0
    manifest["codes"][5]["parent"] = case
    result = station.import_manifest(manifest, via="cli")
    assert result["imported"] and result["codes"] == len(manifest["codes"])
    assert json.loads(ledger.conn.execute("SELECT record FROM scans").fetchone()[0])["codes"] == result["codes"]


def test_a_ledger_of_the_previous_release_takes_a_manifest_and_verifies(tmp_path):
    import shutil
    from pathlib import Path

    path = tmp_path / "ledger.db"
    shutil.copy(Path(__file__).parent / "data" / "ledger-v3.db", path)
    ledger = Ledger.open(path, device_id="kiosk-0001", site_id="site-01")
    try:
        manifest = make_manifest(BILL, cases=1, units_per_case=10)
        assert ledger.import_manifest(read_manifest(manifest), read=CLI)[0].verdict == "manifest"
        case = manifest["codes"][0]["code"]
        read = Read(case.encode(), "stdin", "stdin")
        assert ledger.decide_and_record(read, "receive", codes.parse(read.raw)).verdict == "accepted"
        assert verify(ledger.conn).ok
        assert ledger.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        ledger.close()


def test_a_case_voided_in_its_delivery_takes_back_every_unit_and_can_be_received_again():
    manifest = make_manifest(BILL, cases=2, units_per_case=12)
    dock = Dock(manifest)
    dock.open()
    case = dock.codes("case")[0]
    scanned = dock.scan(case)
    assert dock.ledger.document.progress()["collected"] == 12
    void = dock.ledger.void(scanned.event_id, reason="wrong pallet", read=CLI)[-1]
    assert void.verdict == "void" and void.progress["collected"] == 0
    assert not received(dock, case) and not any(received(dock, unit) for unit in dock.units_under(case))
    again = dock.scan(case, source="again")
    assert again.verdict == "accepted" and again.progress["collected"] == 12
    # Once a unit of it is sold, the case cannot be voided (void the sale first).
    sold = dock.units_under(case)[0]
    dock.close()
    assert dock.scan(sold, "dispense").verdict == "accepted"
    with pytest.raises(DocumentError, match=f"code {sold} moved"):
        dock.ledger.void(again.event_id, reason="late", read=CLI)
    assert verify(dock.ledger.conn).ok


def test_each_unit_of_a_received_case_can_be_queried(tmp_path):
    from agent.ledger.reports import code_status
    from tests.support.agent import run_agent

    path = tmp_path / "ledger.db"
    manifest = make_manifest(BILL, cases=1, units_per_case=6)
    ledger = Ledger.open(path, device_id="dock-1", site_id="wh-1")
    ledger.import_manifest(read_manifest(manifest), read=CLI)
    case = manifest["codes"][0]["code"]
    read = Read(case.encode(), "stdin", "stdin")
    pack = ledger.decide_and_record(read, "receive", codes.parse(read.raw))
    unit = pack.record["pack"]["units"][2]
    status = code_status(ledger.conn, unit)
    assert status["held"] and status["dispensed"] == 0
    assert status["scans"]["received"]["via"] == case and status["scans"]["received"]["event_id"] == pack.event_id
    assert code_status(ledger.conn, "81234569999999999999")["seen"] is False
    ledger.close()
    shown = run_agent("ledger", "code", unit, "--db", str(path))
    assert shown.returncode == 0 and f"received inside {case}".encode() in shown.stdout, shown.stderr
