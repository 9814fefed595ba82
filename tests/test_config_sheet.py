"""firmware_config/ profiles are complete, and scripts/config-sheet renders
sheets whose every bar code decodes (zxing-cpp) to the command it stands for."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import zxingcpp
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PROFILES = sorted((ROOT / "firmware_config").glob("*.toml"))
HEX_BYTES = re.compile(r"^([0-9A-F]{2})( [0-9A-F]{2})*$")


def load_script():
    loader = importlib.machinery.SourceFileLoader("config_sheet", str(ROOT / "scripts" / "config-sheet"))
    spec = importlib.util.spec_from_loader("config_sheet", loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules["config_sheet"] = module  # dataclasses look their module up there
    loader.exec_module(module)
    return module


sheet_mod = load_script()


@pytest.mark.parametrize("path", PROFILES, ids=[p.stem for p in PROFILES])
def test_profile_has_every_field_and_setting(path):
    profile = tomllib.loads(path.read_text())
    for key in ("model", "vendor", "usb_vendor_id", "manual"):
        assert isinstance(profile[key], str) and profile[key], key
    assert re.fullmatch(r"[0-9a-f]{4}", profile["usb_vendor_id"])
    settings = " ".join(e["setting"] for e in profile["setup"]).lower()
    for needed in ("cdc", "keyboard", "cr", "code 128", "data matrix", "gs1", "aim"):
        assert needed in settings, f"{path.name} lacks a {needed!r} setting"
    for entry in profile["setup"]:
        assert {"setting", "command", "section", "verified"} <= set(entry), entry
        assert isinstance(entry["verified"], bool)
        if not entry["verified"]:
            assert entry.get("note"), f"unverified {entry['command']!r} needs a note saying why"
    ack = profile["host_ack"]
    assert isinstance(ack["supported"], bool) and ack["source"]
    if ack["supported"]:
        assert HEX_BYTES.match(ack["good"]) and HEX_BYTES.match(ack["bad"]) and ack["good"] != ack["bad"]


def test_each_vendor_has_a_profile():
    vendors = {tomllib.loads(p.read_text())["usb_vendor_id"] for p in PROFILES}
    assert {"1eab", "0c2e", "05e0"} <= vendors


def test_honeywell_host_ack_bytes():
    profile = sheet_mod.find_profile("Xenon 1950g")
    assert bytes.fromhex(profile["host_ack"]["good"]) == b"\x1b7,"
    assert bytes.fromhex(profile["host_ack"]["bad"]) == b"\x1b8,"


@pytest.mark.parametrize("path", PROFILES, ids=[p.stem for p in PROFILES])
def test_every_barcode_on_the_sheet_decodes_to_its_command(path):
    profile = tomllib.loads(path.read_text())
    sheet = sheet_mod.render(profile)
    printed = [p for p in sheet.placed if p.barcode is not None]
    assert len(sheet.placed) == len(profile["setup"]), "every entry is on the sheet"
    for page_number, page in enumerate(sheet.pages):
        found = zxingcpp.read_barcodes(page)
        expected = [p for p in printed if p.page == page_number]
        assert len(found) == len(expected)
        for barcode in found:
            assert barcode.format == zxingcpp.BarcodeFormat.Code128
            y = (barcode.position.top_left.y + barcode.position.bottom_left.y) / 2
            (owner,) = [p for p in expected if p.box[1] <= y <= p.box[3]]
            assert barcode.text == owner.barcode == owner.entry.get("barcode", owner.entry["command"])


def test_cli_writes_png_and_pdf(tmp_path):
    png = tmp_path / "hr32.png"
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "config-sheet"), "NLS-HR32", "-o", str(png)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    texts = {b.text for b in zxingcpp.read_barcodes(Image.open(png))}
    assert "@128ENA1" in texts and "@AIDENA1" in texts
    pdf = tmp_path / "ds2208.pdf"
    assert sheet_mod.main(["ds2208", "-o", str(pdf)]) == 0
    assert pdf.read_bytes().startswith(b"%PDF")


def test_unknown_model_names_the_known_ones():
    with pytest.raises(SystemExit, match=r"known: .*Xenon 1950g"):
        sheet_mod.find_profile("LS9999")
