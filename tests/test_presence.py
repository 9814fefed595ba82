"""Scanner presence: sources say whether their device is there; the runner shows
``scanner_missing`` on the feedback while one is gone, and doctor checks each kind."""

import threading

from agent import config
from agent.config import parse_toml
from agent.ops.doctor import check_scanners
from agent.runner import Runner
from agent.wiring import hid_present
from tests.support.net import wait_until
from tests.support.pty import PtyPair


def serial_config(tmp_path, port) -> config.Config:
    return parse_toml(
        f"""
[ledger]
path = "{tmp_path / "ledger.db"}"
[feedback]
backend = "none"
[[scanners]]
kind = "serial"
name = "counter"
port = "{port}"
"""
    )


def test_unplugged_serial_scanner_shows_scanner_missing_until_replugged(tmp_path):
    pair = PtyPair(tmp_path)
    pair.start()
    runner = Runner(serial_config(tmp_path, pair.host))
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: runner.feedback is not None, what="runner started")
        states = runner.feedback.states
        wait_until(lambda: "ready" in states(), what="ready")
        pair.kill()
        wait_until(lambda: "scanner_missing" in states(), timeout=10, what="scanner_missing on")
        pair.start()
        wait_until(lambda: "scanner_missing" not in states(), timeout=10, what="scanner_missing off")
    finally:
        runner.request_stop()
        thread.join(10)
        pair.kill()
    assert not thread.is_alive()


def test_doctor_finds_a_serial_scanner_and_names_a_missing_one(tmp_path):
    pair = PtyPair(tmp_path)
    pair.start()
    try:
        (ok,) = check_scanners(serial_config(tmp_path, pair.host).scanners)
        (glob_ok,) = check_scanners(serial_config(tmp_path, str(tmp_path / "scanner-h*")).scanners)
    finally:
        pair.kill()
    (gone,) = check_scanners(serial_config(tmp_path, pair.host).scanners)
    assert ok.status == "ok" and glob_ok.status == "ok"
    assert gone.status == "fail" and "is not there" in gone.detail and "CDC" in gone.fix


def test_doctor_names_a_missing_hid_scanner(tmp_path):
    cfg = parse_toml('[[scanners]]\nkind = "hid"\nname = "wedge"\nvendor_id = 0x1EAB\n')
    check = hid_present(cfg.scanners[0], input_dir=str(tmp_path))
    assert check.status == "fail" and "vendor_id=0x1eab" in check.detail and check.fix


def test_doctor_checks_camera_replay_files(tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    cfg = parse_toml(f'[[scanners]]\nkind = "camera"\nbackend = "images"\npath = "{frames}"\n')
    (empty,) = check_scanners(cfg.scanners)
    (frames / "f1.png").write_bytes(b"")
    (full,) = check_scanners(cfg.scanners)
    assert empty.status == "fail" and full.status == "ok" and "1 image" in full.detail
