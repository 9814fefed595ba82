"""End to end: codes typed into ``scan-agent run`` (in process, stdin a pipe) drive the
gpio backend on gpiozero's MockFactory, set as the default pin factory."""

from __future__ import annotations

import io
import os
import threading
import time

import pytest
from gpiozero import Device

from agent.config import parse_toml
from agent.runner import Runner
from tests.support.agent import run_agent
from tests.support.gpio import assert_runs, mock_factory
from tests.support.net import wait_until

T, F = True, False


@pytest.fixture
def pins():
    before = Device.pin_factory
    Device.pin_factory = factory = mock_factory()
    yield factory
    Device.pin_factory = before


def test_scans_through_the_runner_give_the_pin_sequences(pins, tmp_path):
    config = parse_toml(
        f"""
[ledger]
path = "{tmp_path / "ledger.db"}"
[codes]
double_read_window_s = 0.5
lifecycle = "off"   # a first dispense here is not flagged never_received (the plain accept)
[feedback]
backend = "gpio"
green_pin = 5
red_pin = 6
amber_pin = 13
buzzer_pin = 12
[feedback.states.ready]   # no ready blip on green, so green shows only the accept
"""
    )
    read_end, write_end = os.pipe()
    out = io.StringIO()
    runner = Runner(config, out=out, stdin=os.fdopen(read_end, "rb"))
    result = []
    thread = threading.Thread(target=lambda: result.append(runner.run()))
    thread.start()
    green, red, amber, buzzer = (pins.pin(n) for n in (5, 6, 13, 12))
    wait_until(lambda: runner.feedback is not None and runner.pipeline is not None, what="agent up")
    for p in (green, red, amber, buzzer):
        p.clear_states()

    def scan(text: str, then: float) -> None:
        lines = out.getvalue().count("\n")
        os.write(write_end, text.encode() + b"\n")
        wait_until(lambda: out.getvalue().count("\n") > lines, what=f"decision on {text}")
        time.sleep(then)

    try:
        scan("81234567890123456789", then=0.1)
        scan("81234567890123456789", then=0.7)  # double read: nothing, and the accept plays on
        scan("81234567890123456789", then=1.4)  # duplicate
        scan("6901234567892", then=0.9)  # the product barcode
    finally:
        os.close(write_end)
        thread.join(30)
    assert result == [0]
    assert [line.split()[0] for line in out.getvalue().splitlines()] == [
        "accepted",
        "double_read",
        "duplicate",
        "rejected",
    ]
    assert "product_barcode" in out.getvalue().splitlines()[3]
    assert_runs(green, [(T, 0.3), (F, None)])
    assert_runs(red, [(T, 1.0), (F, None)])
    assert_runs(amber, [(T, 0.25), (F, 0.15), (T, 0.25), (F, None)])
    # beep; (double read: nothing); long low tone; two medium beeps. Gaps are the test's own pace.
    assert_runs(buzzer, [(T, 0.08), (F, None), (T, 0.8), (F, None), (T, 0.25), (F, 0.15), (T, 0.25), (F, None)])


def test_scan_agent_run_with_the_gpio_backend_starts_and_stops_cleanly(tmp_path):
    """The real command line, gpiozero choosing its mock factory from the environment."""
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[ledger]\npath = "{tmp_path / "l.db"}"\n[feedback]\nbackend = "gpio"\nbuzzer = "tonal"\n')
    done = run_agent(
        "run",
        "--config",
        str(cfg),
        input=b"81234567890123456789\n6901234567892\n",
        GPIOZERO_PIN_FACTORY="mock",
        GPIOZERO_MOCK_PIN_CLASS="mockpwmpin",
    )
    assert done.returncode == 0, done.stderr.decode()
    assert [line.split()[0] for line in done.stdout.decode().splitlines()] == ["accepted", "rejected"]
    assert b"Traceback" not in done.stderr


def test_scan_agent_run_says_what_is_wrong_without_gpio(tmp_path):
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[ledger]\npath = "{tmp_path / "l.db"}"\n[feedback]\nbackend = "gpio"\n')
    done = run_agent("run", "--config", str(cfg), input=b"", GPIOZERO_PIN_FACTORY="no-such-factory")
    assert done.returncode == 2
    assert b'bad config: [feedback] backend = "gpio": cannot drive the pins' in done.stderr
    # Refused before the ledger was opened: at most the empty file the one-writer lock is taken on.
    db = tmp_path / "l.db"
    assert not db.exists() or db.stat().st_size == 0
