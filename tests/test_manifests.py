"""The supplier manifest: the issue's shape imports as it is; every bad input is refused whole, naming its row."""

from __future__ import annotations

import copy
import hashlib
import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.codes import parse
from agent.ledger.manifests import (
    LEVELS,
    ManifestError,
    full_count,
    read_manifest,
    read_manifest_file,
)
from tests.support.manifests import code, make_manifest

CASE = code("8123450", 1)
UNITS = [code("8123456", n) for n in range(2, 5)]


def sample() -> dict:
    """The issue's shape: one line, one case, its units (three here)."""
    return {
        "bill_code": "DN00000001",
        "supplier": "Acme Pharma",
        "ship_date": "2026-11-20",
        "lines": [
            {"product_id": "8123456", "name": "Amoxicillin", "batch": "B1", "expiry": "2028-01-31", "quantity": 3}
        ],
        "codes": [{"code": CASE, "level": "case", "parent": None}]
        + [{"code": u, "level": "unit", "parent": CASE} for u in UNITS],
    }


def refused(data: dict) -> ManifestError:
    with pytest.raises(ManifestError) as caught:
        read_manifest(data)
    return caught.value


def test_the_issue_shape_imports_as_it_is_with_extra_fields():
    data = sample()
    data["carrier"] = "extra fields are allowed"
    data["codes"][1]["scanned_at_factory"] = "2026-11-01"
    m = read_manifest(data)
    assert (m.bill_code, m.supplier, m.ship_date) == ("DN00000001", "Acme Pharma", "2026-11-20")
    assert m.units_under(CASE) == tuple(UNITS)
    assert m.units_under(UNITS[0]) == ()
    assert m.code(CASE).level == "case" and m.code("89999990000000000000") is None
    assert m.line_for(UNITS[1]).quantity == 3
    assert m.line_for(CASE) is None
    assert m.code(UNITS[0]).product_id == "8123456"
    assert m.unit_count == 3


def test_generated_codes_are_codes_the_agent_accepts():
    data = make_manifest("DN1", products=3, cases=3, units_per_case=10, seed=5)
    for row in data["codes"]:
        assert parse(row["code"]).valid, row


@pytest.mark.parametrize(
    ("change", "row", "field", "words"),
    [
        (lambda d: d["codes"].append(dict(d["codes"][2])), "codes[4]", "code", "listed twice"),
        (lambda d: d["codes"][2].update(code="8123456000000001234"), "codes[2]", "code", "wrong_length"),
        (lambda d: d["codes"][2].update(code="71234560000000012345"), "codes[2]", "code", "bad_prefix"),
        (lambda d: d["codes"][2].update(code="6901234567892"), "codes[2]", "code", "product_barcode"),
        (lambda d: d["codes"][2].update(code=" " + UNITS[1]), "codes[2]", "code", "bare code"),
        (lambda d: d["codes"][2].update(code=12345), "codes[2]", "code", "as text"),
        (lambda d: d["codes"][3].update(level="pallet"), "codes[3]", "level", "allowed: case, middle, unit"),
        (lambda d: d["codes"][3].update(parent="81234560000000099999"), "codes[3]", "parent", "not in the manifest"),
        (lambda d: d["codes"][3].update(parent=UNITS[0]), "codes[3]", "parent", "is a unit"),
        (lambda d: d["codes"][0].update(parent=CASE), "codes[0]", "parent", "its own parent"),
        (lambda d: d["lines"][0].update(quantity=4), "lines[0]", "quantity", "list 3"),
        (lambda d: d["lines"][0].update(quantity=0), "lines[0]", "quantity", "whole number"),
        (lambda d: d["lines"][0].update(quantity=True), "lines[0]", "quantity", "whole number"),
        (lambda d: d["lines"][0].update(product_id="812345"), "lines[0]", "product_id", "7-digit"),
        (lambda d: d["lines"][0].update(expiry="2028-02-30"), "lines[0]", "expiry", "ISO date"),
        (lambda d: d["lines"][0].update(expiry="20280131"), "lines[0]", "expiry", "ISO date"),
        (lambda d: d["lines"].append(dict(d["lines"][0])), "lines[1]", "batch", "on lines[0] already"),
        (lambda d: d["codes"][1].update(code=code("8123457", 9)), "codes[1]", "code", "on no line"),
        (lambda d: d["codes"][1].update(batch="B2"), "codes[1]", "batch", "batch B2 is on no line"),
        (lambda d: d["codes"][1].update(expiry="2029-01-31"), "codes[1]", "expiry", "differs"),
        (lambda d: d["codes"][0].update(ratio="1:4"), "codes[0]", "ratio", "holds 3 units, its ratio 1:4 says 4"),
        (lambda d: d["codes"][0].update(ratio="1:2"), "codes[0]", "ratio", "holds 3 units"),
        (lambda d: d["codes"][0].update(ratio="2:3"), "codes[0]", "ratio", "starts with 1"),
        (lambda d: d["codes"][0].update(ratio="lots"), "codes[0]", "ratio", "1:10:600"),
        (lambda d: d["codes"][1].update(partial=True), "codes[1]", "partial", "a unit cannot be partial"),
        (lambda d: d["codes"][1].update(partial="yes"), "codes[1]", "partial", "true or false"),
        (lambda d: d.update(bill_code=""), "", "bill_code", "1 to 64"),
        (lambda d: d.update(bill_code="DN\x1d1"), "", "bill_code", "printable"),
        (lambda d: d.update(bill_code="D" * 65), "", "bill_code", "1 to 64"),
        (lambda d: d.update(ship_date="20/11/2026"), "", "ship_date", "ISO date"),
        (lambda d: d.pop("supplier"), "", "supplier", "text of 1"),
        (lambda d: d.update(codes={"a": 1}), "", "codes", "must be a list"),
        (lambda d: d.pop("lines"), "", "lines", "must be a list"),
        (lambda d: d["codes"].__setitem__(1, "81234560000000000002"), "codes[1]", "", "must be an object"),
    ],
)
def test_a_bad_manifest_is_refused_naming_the_row_and_field(change, row, field, words):
    data = sample()
    change(data)
    error = refused(data)
    assert (error.row, error.field) == (row, field), str(error)
    assert words in str(error)
    assert str(error).startswith(", ".join(p for p in (row, f"field {field}" if field else "") if p))


def test_a_code_under_two_parents_is_refused_at_its_second_listing():
    data = sample()
    other = code("8123450", 90)
    data["codes"].insert(1, {"code": other, "level": "case", "parent": None})
    data["codes"].append({"code": UNITS[0], "level": "unit", "parent": other})
    error = refused(data)
    assert (error.row, error.field) == ("codes[5]", "code")
    assert "listed twice (first at codes[2])" in str(error)


def test_a_cycle_between_two_packs_is_named_as_a_cycle():
    data = sample()
    middle = code("8123451", 7)
    data["codes"][0]["parent"] = middle
    data["codes"].append({"code": middle, "level": "middle", "parent": CASE})
    error = refused(data)
    assert (error.row, error.field) == ("codes[0]", "parent")
    assert "cycle" in str(error)


@pytest.mark.parametrize(
    ("packs", "words"),
    [
        ([("middle", CASE), ("middle", "m0")], "a middle's parent may be: case"),
        ([("case", CASE)], "a case's parent may be: none"),
        ([("middle", None)], "must have a case"),
    ],
)
def test_the_level_order_is_kept(packs, words):
    data = sample()
    made = []
    for n, (level, parent) in enumerate(packs):
        pack = code("8123451", 50 + n)
        parent = made[0] if parent == "m0" else parent
        data["codes"].append({"code": pack, "level": level, "parent": parent})
        made.append(pack)
    data["codes"].append({"code": code("8123456", 60), "level": "unit", "parent": made[-1]})
    data["lines"][0]["quantity"] = 4
    error = refused(data)
    assert (error.row, error.field) == (f"codes[{3 + len(packs)}]", "parent"), str(error)
    assert words in str(error)


def test_a_pack_without_units_is_refused():
    data = sample()
    data["codes"].append({"code": code("8123450", 70), "level": "case", "parent": None})
    error = refused(data)
    assert (error.row, error.field) == ("codes[4]", "code") and "no unit codes" in str(error)


def test_a_line_without_codes_is_fine_and_a_line_with_some_must_list_them_all():
    data = sample()
    data["lines"].append({"product_id": "8123499", "name": "", "batch": "X", "expiry": "2027-05-01", "quantity": 40})
    assert read_manifest(data).lines[1].quantity == 40
    data["codes"].append({"code": code("8123499", 3), "level": "unit", "parent": None})
    error = refused(data)
    assert (error.row, error.field) == ("lines[1]", "quantity") and "codes list 1" in str(error)


def test_two_batches_of_a_product_need_the_batch_on_each_unit():
    data = sample()
    data["lines"][0]["quantity"] = 2
    data["lines"].append(dict(data["lines"][0], batch="B2", quantity=1))
    error = refused(data)
    assert (error.row, error.field) == ("codes[1]", "batch") and "B1, B2" in str(error)
    for row, batch in zip(data["codes"][1:], ("B1", "B2", "B1"), strict=True):
        row["batch"] = batch
    m = read_manifest(data)
    assert [m.line_for(u).batch for u in UNITS] == ["B1", "B2", "B1"]


def test_a_partial_case_may_hold_fewer_never_more():
    data = sample()
    data["codes"][0].update(ratio="1:600")
    assert "mark it partial" in str(refused(data))
    data["codes"][0]["partial"] = True
    assert read_manifest(data).code(CASE).partial
    data["codes"][0]["ratio"] = "1:2"
    error = refused(data)
    assert error.field == "ratio" and "holds 3 units, its ratio 1:2 says 2" in str(error)


def test_ratio_readings():
    assert full_count("600", "case") == (None, 600)
    assert full_count("1:4:600", "case") == (4, 600)
    assert full_count("1:4:600", "middle") == (None, 150)
    with pytest.raises(ValueError, match="split evenly"):
        full_count("1:7:600", "middle")
    data = sample()
    data["codes"][0]["ratio"] = 3  # a number, as some exports give it
    assert read_manifest(data).code(CASE).ratio == "3"
    data["codes"][1]["ratio"] = "1:10:600"  # kept on a unit, never checked
    assert read_manifest(data).code(UNITS[0]).ratio == "1:10:600"


def test_a_case_with_middle_packs_counts_both_levels():
    data = make_manifest("DN2", cases=2, units_per_case=20, middle_per_case=4, seed=1)
    m = read_manifest(data)
    case = next(c for c in m.codes if c.level == "case")
    middles = [c for c in m.children(case.code) if c.level == "middle"]
    assert len(middles) == 4 and case.ratio == "1:4:20"
    assert m.units_under(case.code) == tuple(u for mid in middles for u in m.units_under(mid.code))
    assert len(m.units_under(middles[0].code)) == 5
    # One middle pack short: the case's ratio says 4.
    bad = copy.deepcopy(data)
    gone = middles[-1].code
    bad["codes"] = [c for c in bad["codes"] if c["code"] != gone and c["parent"] != gone]
    bad["lines"][0]["quantity"] -= 5
    error = refused(bad)
    assert error.row == "codes[0]" and error.field == "ratio" and "holds 15 units" in str(error)


def test_a_mixed_case_holds_units_of_several_products_and_lines_match():
    data = make_manifest("DN3", products=3, cases=3, units_per_case=12, mixed=2, seed=2)
    m = read_manifest(data)
    mixed = [c for c in m.codes if c.level == "case" and not c.ratio]
    assert len(mixed) == 2
    products = {m.code(u).product_id for u in m.units_under(mixed[0].code)}
    assert len(products) == 3
    assert {m.line_for(u).product_id for u in m.units_under(mixed[0].code)} == products


def test_partial_and_600_unit_cases_from_the_generator():
    data = make_manifest("DN4", products=2, cases=6, units_per_case=600, partial=2, seed=9)
    m = read_manifest(data)
    cases = [c for c in m.codes if c.level == "case"]
    sizes = [len(m.units_under(c.code)) for c in cases]
    assert sizes[:4] == [600] * 4
    assert all(1 <= s < 600 for s in sizes[4:]) and all(c.partial for c in cases[4:])
    assert sum(line.quantity for line in m.lines) == m.unit_count == sum(sizes)


def test_codes_from_a_csv(tmp_path):
    data = sample()
    rows = data.pop("codes")
    rows[0]["ratio"] = "1:3"
    (tmp_path / "m.json").write_text(json.dumps(data))
    csv_text = "code,level,parent,batch,expiry,ratio,partial,note\n" + "".join(
        f"{r['code']},{r['level']},{r['parent'] or ''},,,{r.get('ratio', '')},,x\n" for r in rows
    )
    (tmp_path / "codes.csv").write_text(csv_text)
    m = read_manifest_file(tmp_path / "m.json", tmp_path / "codes.csv")
    assert m.units_under(CASE) == tuple(UNITS) and m.code(CASE).ratio == "1:3"
    # The same manifest as one JSON file has the same digest.
    (tmp_path / "whole.json").write_text(json.dumps(dict(data, codes=rows)))
    assert read_manifest_file(tmp_path / "whole.json").digest() == m.digest()
    # A bad row is named by its line in the file (the header is line 1).
    (tmp_path / "codes.csv").write_text(csv_text.replace(",unit,", ",box,", 1))
    with pytest.raises(ManifestError) as caught:
        read_manifest_file(tmp_path / "m.json", tmp_path / "codes.csv")
    assert (caught.value.row, caught.value.field) == ("codes.csv line 3", "level")
    (tmp_path / "codes.csv").write_text(csv_text.replace(",,x\n", ",maybe,x\n", 1))
    with pytest.raises(ManifestError) as caught:
        read_manifest_file(tmp_path / "m.json", tmp_path / "codes.csv")
    assert (caught.value.row, caught.value.field) == ("codes.csv line 2", "partial")
    (tmp_path / "codes.csv").write_text("code,level\n" + rows[0]["code"] + ",case\n")
    with pytest.raises(ManifestError) as caught:
        read_manifest_file(tmp_path / "m.json", tmp_path / "codes.csv")
    assert (caught.value.row, caught.value.field) == ("codes.csv line 1", "parent")
    (tmp_path / "codes.csv").write_text(csv_text.replace(",x\n", ",x,extra\n", 1))
    with pytest.raises(ManifestError) as caught:
        read_manifest_file(tmp_path / "m.json", tmp_path / "codes.csv")
    assert caught.value.row == "codes.csv line 2" and "9 columns" in str(caught.value)
    (tmp_path / "codes.csv").write_text(csv_text)
    (tmp_path / "both.json").write_text(json.dumps(dict(data, codes=rows)))
    with pytest.raises(ManifestError) as caught:
        read_manifest_file(tmp_path / "both.json", tmp_path / "codes.csv")
    assert caught.value.field == "codes"


def test_a_malformed_or_missing_file_is_a_manifest_error(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"bill_code": "DN1",')
    with pytest.raises(ManifestError, match="not JSON") as caught:
        read_manifest_file(bad)
    assert caught.value.row == ""
    bad.write_bytes(b"\xff\xfe{}")
    with pytest.raises(ManifestError, match="not UTF-8"):
        read_manifest_file(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(ManifestError, match="must be a JSON object"):
        read_manifest_file(bad)
    with pytest.raises(ManifestError, match="cannot read"):
        read_manifest_file(tmp_path / "missing.json")


def test_the_digest_is_stable_across_key_order_row_order_and_reserialisation():
    data = make_manifest("DN5", products=2, cases=3, units_per_case=8, middle_per_case=2, mixed=1, partial=1, seed=4)
    digest = read_manifest(data).digest()
    shuffled = json.loads(json.dumps(data, indent=3))
    shuffled = {k: shuffled[k] for k in reversed(list(shuffled))}
    shuffled["codes"] = [dict(reversed(list(c.items()))) for c in reversed(shuffled["codes"])]
    shuffled["lines"].reverse()
    assert read_manifest(shuffled).digest() == digest
    m = read_manifest(data)
    assert read_manifest(m.canonical()).canonical() == m.canonical()
    assert read_manifest(json.loads(json.dumps(m.canonical()))).digest() == digest
    changed = copy.deepcopy(data)
    changed["ship_date"] = "2026-11-21"
    assert read_manifest(changed).digest() != digest


@settings(max_examples=40, deadline=None)
@given(
    products=st.integers(1, 4),
    cases=st.integers(0, 5),
    units=st.integers(1, 12),
    middles=st.sampled_from([0, 1, 2, 3]),
    mixed=st.integers(0, 2),
    loose=st.integers(0, 3),
    data=st.data(),
)
def test_generated_manifests_validate_and_their_top_packs_partition_the_units(
    products, cases, units, middles, mixed, loose, data
):
    if middles and units % middles:
        units = middles * max(1, units // middles)
    partial = data.draw(st.integers(0, cases))
    seed = data.draw(st.integers(0, 2**16))
    body = make_manifest(
        "DN6", products=products, cases=cases, units_per_case=units, middle_per_case=middles,
        mixed=mixed, partial=partial, loose=loose, seed=seed,
    )  # fmt: skip
    if not body["codes"]:
        return
    m = read_manifest(body)
    all_units = [c.code for c in m.codes if c.level == "unit"]
    under = [u for c in m.codes if c.level == "case" for u in m.units_under(c.code)]
    loose_units = [c.code for c in m.codes if c.level == "unit" and c.parent is None]
    assert sorted(under + loose_units) == sorted(all_units)
    assert len(set(under)) == len(under)
    assert all(m.line_for(u) is not None for u in all_units)
    assert set(LEVELS) >= {c.level for c in m.codes}


def test_a_50000_code_manifest_reads_well_under_a_second():
    data = json.loads(json.dumps(make_manifest("DN7", products=4, cases=83, units_per_case=600, middle_per_case=10)))
    assert len(data["codes"]) >= 50_000
    started = time.perf_counter()
    m = read_manifest(data)
    m.digest()
    elapsed = time.perf_counter() - started
    assert m.unit_count == 49_800
    assert elapsed < 1.0, f"{elapsed:.2f} s"


def test_the_digest_hashes_the_canonical_json_text():
    data = make_manifest("DN8", products=2, cases=2, units_per_case=6, middle_per_case=3, mixed=1, partial=1, loose=2)
    data["codes"][0]["batch"] = '批号 "7"'  # a field that needs escaping takes the slow road
    data["lines"][0]["batch"] = '批号 "7"'
    m = read_manifest(data)
    text = json.dumps(m.canonical(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert m.canonical_text() == text
    assert m.digest() == hashlib.sha256(text.encode()).hexdigest()
