"""The agent reads only the scanner its config names, with an unrelated keyboard plugged in too."""

from __future__ import annotations

import pytest
from evdev import ecodes

from tests.usb.scanning import GRABBED, Bystander, trace_codes, wait_ready

pytestmark = pytest.mark.usb_vm

NEWLAND = {"vendor_id": 0x1EAB, "product_id": 0x1D06, "manufacturer": "Newland", "product": "NLS-HR22"}
LOGITECH = {"vendor_id": 0x046D, "product_id": 0xC31C, "manufacturer": "Logitech", "product": "USB Keyboard"}


@pytest.mark.parametrize(
    ("selector", "other"),
    [
        # A keyboard of another make: the vendor id tells them apart.
        ("vendor_id = 0x1EAB", {**LOGITECH, "serial": "KB0001"}),
        # The same make and model (a second scanner left in keyboard mode): only the serial differs.
        ('serial = "NLS0201"', {**NEWLAND, "serial": "NLS0202"}),
    ],
    ids=["by-vendor-id", "by-serial"],
)
def test_selection_picks_the_right_device(make_gadget, agent_factory, selector, other):
    keyboard = make_gadget("other", **other)
    scanner = make_gadget("scanner", **NEWLAND, serial="NLS0201")
    agent = agent_factory(f'[[scanners]]\nkind = "hid"\nname = "counter"\n{selector}\nkey_timeout_ms = 500\n')
    wait_ready(agent, scanner.event_device, GRABBED)
    keyboard_node = keyboard.event_device()
    assert not agent.holds(keyboard_node), "the agent opened the unrelated keyboard"
    bystander = Bystander(keyboard_node)
    try:
        typed_on_keyboard, typed_on_scanner = trace_codes(3, 51), trace_codes(3, 52)
        keyboard.type_codes(typed_on_keyboard)
        scanner.type_codes(typed_on_scanner)
        decisions = agent.wait_for(3, timeout=30)
        assert [d["code"] for d in decisions] == typed_on_scanner, agent.log_text()
        assert agent.quiet(1.0) == [], "keys of the unrelated keyboard were decided as scans"
        # The keyboard was left alone: its own readers still get its keys (3 codes x 21 keys, down and up).
        keys = bystander.key_events()
        assert len([e for e in keys if e.type == ecodes.EV_KEY and e.value in (0, 1)]) == 3 * 21 * 2, keys[:5]
    finally:
        bystander.close()
    assert not agent.holds(keyboard_node)
