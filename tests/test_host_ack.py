"""Scanner profiles and host-ACK: the verdict's bytes arrive back on a real socat pty."""

from __future__ import annotations

import os
import select
from types import SimpleNamespace

import pytest

from agent.config import ConfigError
from agent.ledger import Ledger, connect
from agent.pipeline import Pipeline
from agent.read import Read
from agent.sinks.feedback import NoFeedback
from agent.sinks.host_ack import HostAck, host_ack_for
from agent.sinks.profiles import load_profile, load_profiles

GOOD = "1B 07 0D"
BAD = "1B 31 0D"

PROFILE = f"""
model = "Test 1900"
vendor = "Testware"
manual = "Test 1900 User Guide, rev B"

[host_ack]
supported = true
good = "{GOOD}"
bad = "{BAD}"
source = "Test 1900 User Guide, rev B, section Host ACK"

[setup]   # another reader's table: left alone
codes = ["PAPHHC"]
"""

NO_ACK = """
model = "Plain 100"
vendor = "Testware"
manual = "Plain 100 Guide"
[host_ack]
supported = false
"""


@pytest.fixture
def profiles(tmp_path):
    d = tmp_path / "profiles"
    d.mkdir()
    (d / "test-1900.toml").write_text(PROFILE)
    (d / "plain-100.toml").write_text(NO_ACK)
    return d


def test_profiles_load_from_a_directory(profiles):
    loaded = load_profiles(profiles)
    assert sorted(loaded) == ["plain-100", "test-1900"]
    p = loaded["test-1900"]
    assert (p.model, p.vendor) == ("Test 1900", "Testware")
    assert p.host_ack.good == b"\x1b\x07\r" and p.host_ack.bad == b"\x1b1\r"
    assert "section Host ACK" in p.host_ack.source
    assert p.acks and not loaded["plain-100"].acks


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (PROFILE.replace(GOOD, "1B 0G"), "[host_ack] good: '1B 0G' is not allowed"),
        (PROFILE.replace(f'bad = "{BAD}"', ""), "[host_ack] bad: missing"),
        (PROFILE.replace("supported = true", "supported = true\ntimeout = 3"), "[host_ack] timeout: unknown key"),
        (PROFILE.replace('model = "Test 1900"', ""), "model: must not be empty"),
        ("model = ", "not valid TOML"),
    ],
)
def test_a_bad_profile_names_its_file_and_key(tmp_path, text, message):
    (tmp_path / "broken.toml").write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_profile("broken", tmp_path)
    assert message in str(caught.value)
    assert "broken.toml" in str(caught.value)


def test_a_missing_profile_lists_the_known_ones(profiles):
    with pytest.raises(ConfigError, match=r"'nope'.*known profiles: plain-100, test-1900"):
        load_profile("nope", profiles)


def test_host_ack_for_takes_the_scanners_that_name_a_profile(profiles):
    scanners = [
        SimpleNamespace(name="counter", kind="serial", profile="test-1900"),
        SimpleNamespace(name="dock", kind="serial", profile="plain-100"),
        SimpleNamespace(name="console", kind="stdin"),
    ]
    ack = host_ack_for(scanners, profiles)
    assert set(ack.commands) == {"counter"}  # plain-100 has no host ACK; stdin has no profile
    assert not host_ack_for(scanners[1:], profiles)
    with pytest.raises(ConfigError, match="missing-model"):
        host_ack_for([SimpleNamespace(name="x", profile="missing-model")], profiles)


def read_exactly(fd: int, n: int, timeout: float = 5.0) -> bytes:
    got = b""
    while len(got) < n:
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            break
        got += os.read(fd, n - len(got))
    return got


def nothing_waiting(fd: int, timeout: float = 0.3) -> bool:
    return not select.select([fd], [], [], timeout)[0]


def test_verdict_bytes_arrive_back_on_the_scanner_pty(pty_pair, profiles, tmp_path):
    host = os.open(pty_pair.host, os.O_RDWR | os.O_NOCTTY)
    device = pty_pair.open_device()
    feedback = NoFeedback()
    ack = HostAck({"counter": "test-1900"}, load_profiles(profiles), in_fault=lambda: feedback.is_on("fault"))
    ledger = Ledger.open(tmp_path / "ledger.db", device_id="k", site_id="s", double_read_window_s=1.0)
    pipeline = Pipeline(ledger, sinks=[feedback, ack])
    pipeline.start()

    def scan(raw: bytes, scanner: str = "counter") -> None:
        pipeline.submit(Read(raw, "serial", f"tty:{scanner}", scanner=scanner, reply=lambda b: os.write(host, b)))

    good, bad = bytes.fromhex(GOOD), bytes.fromhex(BAD)
    try:
        scan(b"81234567890123456789\r")
        assert read_exactly(device, 3) == good
        scan(b"123\r")
        assert read_exactly(device, 3) == bad
        scan(b"6901234567892\r")  # the product barcode: bad
        assert read_exactly(device, 3) == bad
        scan(b"6901234567892\r")  # a double read gets the answer of the read it repeats
        assert read_exactly(device, 3) == bad
        scan(b"81234567890123456789\r", scanner="dock")  # another scanner: a duplicate, no ACK profile
        scan(b"81234567890123456789\r")  # the counter's duplicate: bad
        assert read_exactly(device, 3) == bad
        feedback.set_state("fault", True, cause="disk_full")
        scan(b"81234567890123456788\r")  # recorded, but the station is in fault: bad
        assert read_exactly(device, 3) == bad
        assert nothing_waiting(device)
    finally:
        pipeline.stop()
        ledger.close()
        os.close(host)
        os.close(device)
    verdicts = [r["verdict"] for r in ledger_rows(tmp_path / "ledger.db")]
    assert verdicts == ["accepted", "rejected", "rejected", "double_read", "duplicate", "duplicate", "accepted"]


def ledger_rows(path):
    return [{"verdict": v} for (v,) in connect(path).execute("SELECT verdict FROM scans ORDER BY id")]


def test_an_unplugged_scanner_misses_its_beep_and_nothing_else(pty_pair, profiles, tmp_path, caplog):
    host = os.open(pty_pair.host, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    pty_pair.kill()  # the cable is pulled before the answer is sent
    seen = []

    class Collect:
        def decided(self, decision):
            seen.append(decision.verdict)

    ack = HostAck({"counter": "test-1900"}, load_profiles(profiles))
    ledger = Ledger.open(tmp_path / "ledger.db", device_id="k", site_id="s")
    pipeline = Pipeline(ledger, sinks=[ack, Collect()])
    pipeline.start()
    pipeline.submit(
        Read(b"81234567890123456789", "serial", "tty", scanner="counter", reply=lambda b: os.write(host, b))
    )
    pipeline.stop()
    ledger.close()
    os.close(host)
    assert seen == ["accepted"]  # the sink after it still heard
    assert "host ACK to scanner counter failed" in caplog.text
