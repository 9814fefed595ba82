"""A virtual USB CDC-ACM scanner against ``scan-agent run``, inside the bench VM."""

from __future__ import annotations

import time

import pytest

from tests.usb.conftest import CODES, REPLUGS
from tests.usb.scanning import OPENED, trace_codes, wait_ready

pytestmark = pytest.mark.usb_vm


def serial_scanner(serial: str) -> str:
    # By the udev by-id link, as a kiosk would name it: ttyACMn changes when a
    # port is replugged while the old one is still held open.
    return f'[[scanners]]\nkind = "serial"\nname = "cdc"\nport = "/dev/serial/by-id/usb-Newland_*_{serial}-if*"\n\n'


def test_crlf_codes_arrive_once_each(make_gadget, agent_factory):
    scanner = make_gadget("cdc", serial="NLS0101", hid=False, acm=True)
    agent = agent_factory(serial_scanner("NLS0101"))
    wait_ready(agent, scanner.tty_device, OPENED)
    codes = trace_codes(CODES, 41)
    for code in codes:
        scanner.send(code.encode() + b"\r\n")
        time.sleep(0.002)
    decisions = agent.wait_for(len(codes), timeout=30 + len(codes) / 5)
    assert [d["code"] for d in decisions] == codes, agent.log_text()
    assert {d["verdict"] for d in decisions} == {"accepted"}
    assert agent.quiet(1.0) == [], "a CR LF made a second (empty) scan"
    # The USB serial number names the scanner (as VID:PID:serial or its by-id link).
    assert all("NLS0101" in d["source"] for d in decisions), decisions[0]["source"]


def test_unplug_and_replug_twenty_times(make_gadget, agent_factory):
    scanner = make_gadget("cdc", serial="NLS0102", hid=False, acm=True)
    agent = agent_factory(serial_scanner("NLS0102"))
    wait_ready(agent, scanner.tty_device, OPENED)
    codes = trace_codes(REPLUGS + 1, 42)
    late = []
    for i, code in enumerate(codes[:-1]):
        scanner.unplug()
        scanner.wait_gone()
        time.sleep(0.2)
        assert agent.alive, agent.log_text()
        since = len(agent.log)
        replugged = time.monotonic()
        scanner.plug()
        wait_ready(agent, scanner.tty_device, OPENED, since, timeout=10)
        scanner.send(code.encode() + b"\r\n")
        d = agent.next(timeout=10)
        assert d is not None, f"replug {i + 1}: {code} never decided; log:\n{agent.log_text()}"
        assert (d["code"], d["verdict"]) == (code, "accepted")
        late.append(round(d["at"] - replugged, 2))
    print("seconds from replug to decision:", late)
    assert max(late) <= 2.0, f"decided later than 2 s after the replug: {late}"
    scanner.send(codes[-1].encode() + b"\r\n")
    d = agent.next(timeout=10)
    assert d is not None and d["code"] == codes[-1]
    assert agent.quiet(0.5) == []
    assert agent.stop() == 0, agent.log_text()
