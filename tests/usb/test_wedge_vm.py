"""The validated keyboard wedge inside the bench VM: a virtual USB scanner types into the agent,
and a reader on the agent's own uinput keyboard (as the POS would be) gets only the accepted codes.

The reader decodes what it receives with the agent's own HID decoder, in the wedge's layout.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import evdev
import pytest

from agent.sources.hid import KeyDecoder
from tests.usb.conftest import CODES
from tests.usb.scanning import GRABBED, Bystander, trace_codes, wait_ready

pytestmark = pytest.mark.usb_vm

WEDGE_NAME = "scan-agent wedge vm"
EAN13 = "6901234567892"
GARBAGE = "NOT-A-CODE/42"


@pytest.fixture(autouse=True, scope="module")
def uinput():
    """The uinput module, as scripts/install.sh loads it on a kiosk (/etc/modules-load.d)."""
    subprocess.run(["modprobe", "uinput"], check=True)
    assert Path("/dev/uinput").exists()


def scanner_toml(selector: str) -> str:
    # Every code ends with Enter; the long timeout keeps a VM stall from splitting one.
    return f'[[scanners]]\nkind = "hid"\nname = "counter"\n{selector}\nkey_timeout_ms = 500\n'


def wedge_toml(layout: str = "us", suffix: str = "enter", prefix: str = "") -> str:
    # double_read_window_s = 0: a code scanned again is a duplicate, not a double read.
    return (
        "[codes]\ndouble_read_window_s = 0\n\n"
        f'[wedge]\nenabled = true\nlayout = "{layout}"\nsuffix = "{suffix}"\nprefix = "{prefix}"\n'
        f'key_delay_ms = 1\ndevice_name = "{WEDGE_NAME}"\n'
    )


def wedge_node(agent, timeout: float = 20.0) -> Path:
    """The agent's virtual keyboard, found by its name as a POS machine's udev rule would."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in evdev.list_devices():
            try:
                device = evdev.InputDevice(path)
            except OSError:
                continue
            name = device.name
            device.close()
            if name == WEDGE_NAME:
                return Path(path)
        assert agent.alive, f"the agent exited:\n{agent.log_text()}"
        time.sleep(0.05)
    raise AssertionError(f"no input device named {WEDGE_NAME!r} within {timeout} s:\n{agent.log_text()}")


def received(reader: Bystander, layout: str, count: int, timeout: float, tab: bool = False) -> list[str]:
    """What the reader has decoded (one entry per terminator), waiting until ``count`` or ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        decoder = KeyDecoder(layout, key_timeout=5.0, tab_terminates=tab)
        got = [t.raw.decode() for ev in list(reader.events) for t in decoder.feed(ev)]
        if len(got) >= count or time.monotonic() > deadline:
            rest = decoder.flush()
            return got + ([rest.raw.decode()] if rest else [])
        time.sleep(0.1)


def mix(batch: int, count: int) -> tuple[list[str], list[str]]:
    """What the scanner types (valid codes with a duplicate, an EAN-13 and garbage between them),
    and the codes among it that are accepted."""
    valid = trace_codes(count, batch)
    typed: list[str] = []
    for i, code in enumerate(valid):
        typed.append(code)
        if i % 3 == 1:
            typed += [EAN13, valid[i - 1]]  # a product barcode, then a duplicate
        if i % 5 == 2:
            typed.append(GARBAGE)
    return typed, valid


def run_mix(make_gadget, agent_factory, *, layout: str, suffix: str, prefix: str, selector: str, batch: int):
    scanner = make_gadget("nls", serial=f"NLS00{batch}")
    agent = agent_factory(scanner_toml(selector), wedge_toml(layout, suffix, prefix))
    wait_ready(agent, scanner.event_device, GRABBED)
    node = wedge_node(agent)
    reader = Bystander(node)
    try:
        typed, accepted = mix(batch, max(CODES // 10, 6))
        scanner.type_codes(typed, interval=0.001)
        decisions = agent.wait_for(len(typed), timeout=30 + len(typed))
        assert [d["code"] for d in decisions if d["verdict"] == "accepted"] == accepted, agent.log_text()
        assert len(decisions) == len(typed), agent.log_text()
        end = {"enter": "\n", "tab": "\t", "none": ""}[suffix]
        got = received(reader, layout, len(accepted), timeout=30, tab=suffix == "tab")
        dropped = [ev for ev in reader.events if ev.type == evdev.ecodes.EV_SYN and ev.code == evdev.ecodes.SYN_DROPPED]
        assert not dropped, "the reader fell behind and the kernel dropped keys (a starved VM, not the wedge)"
        assert got == [prefix + code + end for code in accepted], agent.log_text()
        assert agent.quiet(1.0) == [], "something typed on the wedge came back as a scan"
        assert received(reader, layout, len(accepted) + 1, timeout=0.5, tab=suffix == "tab") == got
        assert reader.can_grab(), "the agent grabbed its own virtual keyboard"
    finally:
        reader.close()
    return agent, node


def test_only_accepted_codes_reach_the_pos_with_the_suffix_in_order(make_gadget, agent_factory):
    run_mix(make_gadget, agent_factory, layout="us", suffix="enter", prefix="", selector="vendor_id = 0x1EAB", batch=41)


def test_an_azerty_pos_gets_the_codes_typed_for_its_layout(make_gadget, agent_factory):
    # fr: digits are Shift + the number row; the prefix's "*" is a plain key there.
    run_mix(make_gadget, agent_factory, layout="fr", suffix="tab", prefix="*", selector="vendor_id = 0x1EAB", batch=42)


def test_the_agents_own_keyboard_is_never_taken_for_a_scanner(make_gadget, agent_factory):
    # A selector that matches every keyboard, the wedge's included, if it were not left alone.
    agent, node = run_mix(
        make_gadget, agent_factory, layout="de", suffix="enter", prefix="", selector='name_pattern = "*"', batch=43
    )
    assert not any(f"grabbed {node} " in line for line in agent.log), agent.log_text()
