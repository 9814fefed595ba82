"""A virtual USB keyboard-wedge scanner against ``scan-agent run``, inside the bench VM."""

from __future__ import annotations

import threading
import time

import pytest

from tests.usb.conftest import CODES, REPLUGS
from tests.usb.scanning import GRABBED, Bystander, trace_codes, wait_ready

pytestmark = pytest.mark.usb_vm

# Generous: an emulated VM on a shared machine can stall for a while between two
# keys, and a stall must not split a code (every code here ends with Enter anyway).
KEY_TIMEOUT_MS = 500


def hid_scanner(name: str, selector: str) -> str:
    return f'[[scanners]]\nkind = "hid"\nname = "{name}"\n{selector}\nkey_timeout_ms = {KEY_TIMEOUT_MS}\n\n'


def assert_decided(decisions: list[dict], codes: list[str], agent) -> None:
    got = [d["code"] for d in decisions]
    wrong = [(i, a, b) for i, (a, b) in enumerate(zip(got, codes, strict=False)) if a != b]
    assert got == codes, f"{len(got)} of {len(codes)} decided; first wrong: {wrong[:3]}; log:\n{agent.log_text()}"
    assert {d["verdict"] for d in decisions} == {"accepted"}


@pytest.mark.parametrize("interval_ms", [1, 8])
def test_every_typed_code_is_decided_and_nobody_else_sees_the_keys(make_gadget, agent_factory, interval_ms):
    scanner = make_gadget("nls", serial="NLS0001")
    agent = agent_factory(hid_scanner("counter", "vendor_id = 0x1EAB"))
    node = wait_ready(agent, scanner.event_device, GRABBED)
    bystander = Bystander(node)
    try:
        assert not bystander.can_grab(), "the agent opened the scanner but does not hold its grab"
        codes = trace_codes(CODES, interval_ms)
        scanner.type_codes(codes, interval=interval_ms / 1000)
        decisions = agent.wait_for(len(codes), timeout=30 + len(codes))
        assert_decided(decisions, codes, agent)
        assert agent.quiet(1.0) == []
        assert bystander.key_events() == [], "keys typed on a grabbed scanner reached another reader"
        assert not bystander.can_grab()
    finally:
        bystander.close()
    assert {d["source"] for d in decisions} == {"1eab:1d06:NLS0001"}


def test_two_scanners_typing_at_once_do_not_mix(make_gadget, agent_factory):
    left = make_gadget("left", serial="NLS0011")
    right = make_gadget("right", serial="NLS0012")
    agent = agent_factory(hid_scanner("left", 'serial = "NLS0011"') + hid_scanner("right", 'serial = "NLS0012"'))
    wait_ready(agent, left.event_device, GRABBED)
    wait_ready(agent, right.event_device, GRABBED)
    count = max(CODES // 4, 10)
    codes = {left: trace_codes(count, 21), right: trace_codes(count, 22)}
    failures: list[BaseException] = []

    def type_all(g):
        try:
            g.type_codes(codes[g], interval=0.001)
        except BaseException as problem:
            failures.append(problem)

    typists = [threading.Thread(target=type_all, args=(g,)) for g in codes]
    for t in typists:
        t.start()
    for t in typists:
        t.join(60 + 2 * count)
    assert failures == [], failures
    decisions = agent.wait_for(2 * count, timeout=30 + 2 * count)
    assert agent.quiet(1.0) == []
    assert {d["verdict"] for d in decisions} == {"accepted"}, agent.log_text()
    for g in codes:
        mine = [d["code"] for d in decisions if d["source"] == f"1eab:1d06:{g.serial}"]
        assert mine == codes[g], f"scanner {g.name}: codes missing, mixed or out of order"


def test_unplug_and_replug_twenty_times(make_gadget, agent_factory):
    scanner = make_gadget("nls", serial="NLS0021")
    agent = agent_factory(hid_scanner("counter", 'serial = "NLS0021"'))
    wait_ready(agent, scanner.event_device, GRABBED)
    codes = trace_codes(REPLUGS + 1, 31)
    late = []
    for i, code in enumerate(codes[:-1]):
        scanner.unplug()
        scanner.wait_gone()
        time.sleep(0.2)  # unplugged for a moment, as a person would
        assert agent.alive, agent.log_text()
        since = len(agent.log)
        replugged = time.monotonic()
        scanner.plug()
        wait_ready(agent, scanner.event_device, GRABBED, since, timeout=10)
        scanner.type_codes([code])
        d = agent.next(timeout=10)
        if d is None:
            # Tell a stuck agent from keys lost on the way: does a second try get through?
            scanner.type_codes([code])
            again = agent.next(timeout=10)
            raise AssertionError(
                f"replug {i + 1}: {code} never decided; typed again: {again and again['verdict']};"
                f" log:\n{agent.log_text()}"
            )
        assert (d["code"], d["verdict"]) == (code, "accepted"), f"replug {i + 1}; log:\n{agent.log_text()}"
        late.append(round(d["at"] - replugged, 2))
    print("seconds from replug to decision:", late)
    assert max(late) <= 2.0, f"decided later than 2 s after the replug: {late}"
    scanner.type_codes([codes[-1]])
    d = agent.next(timeout=10)
    assert d is not None and d["code"] == codes[-1]
    assert agent.stop() == 0, agent.log_text()
