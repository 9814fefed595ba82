"""The USB scanner bench: tests marked ``usb_vm`` run only inside the bench VM.

``scripts/usb-vm-tests`` boots a kernel with dummy_hcd under qemu and runs
``pytest -m usb_vm`` there with ``SCAN_AGENT_USB_VM=1``. Anywhere else these
tests skip, saying how to run them.

``SCAN_AGENT_USB_CODES`` and ``SCAN_AGENT_USB_REPLUGS`` scale the long tests
(defaults 200 codes, 20 replugs; CI runs fewer to stay in its time budget).
"""

from __future__ import annotations

import os

import pytest

IN_VM = os.environ.get("SCAN_AGENT_USB_VM") == "1"
SKIP_REASON = "needs the USB gadget VM; run scripts/usb-vm-tests"

CODES = int(os.environ.get("SCAN_AGENT_USB_CODES", "200"))
REPLUGS = int(os.environ.get("SCAN_AGENT_USB_REPLUGS", "20"))


def pytest_collection_modifyitems(config, items):
    if IN_VM:
        return
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if "usb_vm" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def gadget_bench():
    """Modules loaded, configfs mounted, three dummy USB controllers (three devices at once)."""
    from tests.usb.gadget import GadgetBench

    return GadgetBench.setup(controllers=3)


@pytest.fixture
def make_gadget(gadget_bench):
    """``make_gadget(name, **ScannerGadget options)``: a plugged-in, enumerated virtual device,
    taken apart after the test."""
    from tests.usb.gadget import ScannerGadget

    made = []

    def make(name: str, *, plug: bool = True, **options) -> ScannerGadget:
        g = ScannerGadget(gadget_bench, name, **options)
        made.append(g)
        if plug:
            g.plug()
            g.wait_enumerated()
        return g

    yield make
    for g in reversed(made):
        g.remove()


@pytest.fixture
def agent_factory(tmp_path):
    """``agent_factory(scanners_toml, extra_toml="")``: a running ``scan-agent run --json``, stopped after the test."""
    from tests.usb.agent_proc import RunningAgent

    started = []

    def start(scanners: str, extra: str = "") -> RunningAgent:
        a = RunningAgent.start(tmp_path, scanners, extra)
        started.append(a)
        return a

    yield start
    for a in started:
        a.stop()
