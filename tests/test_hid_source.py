"""HidSource's device handling: matching, grabbing, per-device buffers, unplug and replug.

There is no /dev/uinput here, so devices are the stand-ins of
tests/support/inputdev.py in a watched temporary directory (real inotify,
real select on pipes, real evdev.InputEvent objects). What they cannot show,
the VM issue shows with a real kernel device: EVIOCGRAB really keeping keys
from the console, the kernel's ENODEV timing on unplug, udev's by-id links.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest
from evdev import InputEvent
from evdev import ecodes as e

from agent import codes
from agent.ledger import Ledger
from agent.pipeline import Pipeline
from agent.sources.hid import DeviceInfo, DeviceMatch, HidSource
from tests.support.inputdev import StandInInputs
from tests.support.net import wait_until

CODE = "81234567890123456789"
OTHER = "81234567890123450000"
DIGIT = {str(n): getattr(e, f"KEY_{n}") for n in range(10)}

NEWLAND = DeviceInfo("", "Newland FM430 Keyboard", 0x1EAB, 0x1D06, "NLS0001", "usb-0000:01:00.0-1.2/input0")
NEWLAND_2 = DeviceInfo("", "Newland FM430 Keyboard", 0x1EAB, 0x1D06, "NLS0002", "usb-0000:01:00.0-1.3/input0")
KEYBOARD = DeviceInfo("", "AT Translated Set 2 keyboard", 0x0001, 0x0001, "", "isa0060/serio0/input0")


def keys(code: str) -> list[int]:
    return [DIGIT[d] for d in code] + [e.KEY_ENTER]


@pytest.fixture
def inputs(tmp_path):
    return StandInInputs(tmp_path)


@pytest.fixture
def reads():
    return []


def start(inputs, reads, **kwargs):
    kwargs.setdefault("name", "counter")
    kwargs.setdefault("opener", inputs.open)
    source = HidSource(kwargs.pop("match", DeviceMatch(vendor_id=0x1EAB)), input_dir=inputs.dir, **kwargs)
    source.start(reads.append)
    return source


def test_only_matching_devices_are_grabbed_and_read(inputs, reads):
    keyboard = inputs.plug("event0", KEYBOARD)
    scanner = inputs.plug("event5", NEWLAND)
    source = start(inputs, reads, movement="receive")
    try:
        wait_until(lambda: scanner.grabbed, 2, what="scanner grabbed")
        assert not keyboard.grabbed and keyboard.closed
        scanner.type_keys(keys(CODE))
        wait_until(lambda: reads, 2, what="a read")
        read = reads[0]
        assert read.raw == CODE.encode() + b"\n"
        assert (read.source_kind, read.source_id) == ("hid", "1eab:1d06:NLS0001")
        assert (read.scanner, read.movement) == ("counter", "receive")
        assert read.t_first <= read.t_last
    finally:
        source.stop()
    assert not scanner.grabbed and scanner.closed  # released on exit


def test_two_scanners_typing_at_once_never_mix(inputs, reads):
    first = inputs.plug("event5", NEWLAND)
    second = inputs.plug("event6", NEWLAND_2)
    source = start(inputs, reads)
    try:
        wait_until(lambda: first.grabbed and second.grabbed, 2, what="both grabbed")
        typing = [
            threading.Thread(target=first.type_keys, args=(keys(CODE),)),
            threading.Thread(target=second.type_keys, args=(keys(OTHER),)),
        ]
        for t in typing:
            t.start()
        for t in typing:
            t.join()
        wait_until(lambda: len(reads) == 2, 3, what="two reads")
        got = {r.source_id: r.raw for r in reads}
        assert got == {"1eab:1d06:NLS0001": CODE.encode() + b"\n", "1eab:1d06:NLS0002": OTHER.encode() + b"\n"}
    finally:
        source.stop()


def test_unplug_is_survived_and_a_replugged_scanner_is_decided_within_2_s(inputs, caplog, tmp_path):
    caplog.set_level(logging.INFO, logger="agent.sources.hid")
    decided = []

    class Collect:
        def decided(self, decision):
            decided.append(decision)

    pipeline = Pipeline(Ledger.open(":memory:", device_id="k", site_id="s"), sinks=[Collect()])
    pipeline.start()
    scanner = inputs.plug("event5", NEWLAND)
    source = HidSource(DeviceMatch(vendor_id=0x1EAB), name="counter", input_dir=inputs.dir, opener=inputs.open)
    source.start(pipeline.submit)
    try:
        wait_until(lambda: scanner.grabbed, 2, what="grabbed")
        scanner.type_keys(keys(CODE)[:8])  # unplugged mid-scan
        inputs.unplug("event5")
        wait_until(lambda: not source.devices, 2, what="device dropped")
        wait_until(lambda: decided, 2, what="the cut-off scan recorded")
        assert decided[0].verdict == "rejected" and decided[0].reason == "wrong_length"
        assert source._reader.is_alive()

        replugged = inputs.plug("event7", NEWLAND)  # the kernel gives it a new node
        wait_until(lambda: replugged.grabbed, 2, what="replugged scanner grabbed within 2 s")
        replugged.type_keys(keys(CODE))
        wait_until(lambda: len(decided) == 2, 2, what="scan after replug decided")
        assert decided[1].verdict == "accepted"
        assert decided[1].read.source_id == "1eab:1d06:NLS0001"  # same identity, new node
    finally:
        source.stop()
        pipeline.stop()
    assert "unplugged" in caplog.text


def test_a_missing_scanner_is_logged_once_not_in_a_loop(inputs, reads, caplog):
    caplog.set_level(logging.INFO, logger="agent.sources.hid")
    inputs.plug("event0", KEYBOARD)
    source = start(inputs, reads)
    try:
        # Wake the source many times (inotify on every node change) and let the
        # periodic re-check run a few times too.
        for n in range(20):
            node = Path(inputs.dir) / f"event{100 + n}"
            node.touch()
            node.unlink()
        threading.Event().wait(2.5)
        assert caplog.text.count("no input device matches vendor_id=0x1eab") == 1
        scanner = inputs.plug("event5", NEWLAND)
        wait_until(lambda: scanner.grabbed, 2, what="grabbed once it appears")
    finally:
        source.stop()


def test_a_device_someone_else_grabbed_is_not_read(inputs, reads, caplog):
    busy = inputs.plug("event5", NEWLAND, busy=True)
    source = start(inputs, reads)
    try:
        wait_until(lambda: "cannot grab" in caplog.text, 2, what="grab refusal logged")
        assert busy.closed and not source.devices
    finally:
        source.stop()


def test_selected_by_stable_path(inputs, reads):
    scanner = inputs.plug("event5", NEWLAND)
    twin = inputs.plug("event6", NEWLAND_2)
    by_id = Path(inputs.dir) / "by-id"
    by_id.mkdir()
    link = by_id / "usb-Newland_FM430_NLS0001-event-kbd"
    link.symlink_to("../event5")
    source = start(inputs, reads, match=DeviceMatch(path=str(link)))
    try:
        wait_until(lambda: scanner.grabbed, 2, what="grabbed by path")
        # The finder grabs, then hands the device to the reader.
        wait_until(lambda: list(source.devices) == [str(Path(inputs.dir) / "event5")], 2, what="read: only event5")
        assert not twin.grabbed
    finally:
        source.stop()


def test_device_match_selectors():
    info = DeviceInfo("/dev/input/event5", "Newland FM430 Keyboard", 0x1EAB, 0x1D06, "NLS0001")
    assert DeviceMatch(vendor_id=0x1EAB, product_id=0x1D06, serial="NLS0001").matches(info)
    assert not DeviceMatch(vendor_id=0x1EAB, serial="NLS0002").matches(info)
    assert not DeviceMatch(product_id=0x0001).matches(info)
    assert DeviceMatch(name_pattern="Newland*").matches(info)
    assert not DeviceMatch(name_pattern="Honeywell*").matches(info)
    # The scanner's consumer-control interface has the same USB ids but types nothing.
    assert not DeviceMatch(vendor_id=0x1EAB).matches(
        DeviceInfo("/dev/input/event6", "x", 0x1EAB, 0x1D06, keyboard=False)
    )


def test_the_agents_own_virtual_keyboard_is_never_a_scanner_even_for_a_broad_selector(inputs, reads):
    from agent.sources.hid.device import WEDGE_PHYS, own_keyboard

    # Another scan-agent's wedge (or this one's): on the virtual bus, with the wedge's phys.
    wedge = inputs.plug("event9", DeviceInfo("", "scan-agent wedge", bus=e.BUS_VIRTUAL, phys=WEDGE_PHYS))
    # One this process made, whatever it reports.
    mine = inputs.plug("event8", DeviceInfo("", "scan-agent wedge", bus=e.BUS_USB))
    own_keyboard(str(Path(inputs.dir) / "event8"))
    scanner = inputs.plug("event5", NEWLAND)
    everything = DeviceMatch(name_pattern="*")
    assert everything.matches(NEWLAND) and everything.matches(DeviceInfo("", "x", bus=e.BUS_VIRTUAL))
    source = start(inputs, reads, match=everything)
    try:
        wait_until(lambda: scanner.grabbed, 2, what="scanner grabbed")
        wait_until(lambda: wedge.closed and mine.closed, 2, what="wedges looked at and let go")
        assert not wedge.grabbed and not mine.grabbed
        scanner.type_keys(keys(CODE))
        wait_until(lambda: reads, 2, what="a read")
        assert [r.raw for r in reads] == [CODE.encode() + b"\n"]
    finally:
        source.stop()
        own_keyboard(str(Path(inputs.dir) / "event8"), made=False)
    assert not DeviceMatch(name_pattern="*").matches(
        DeviceInfo("/x", "scan-agent wedge", bus=e.BUS_VIRTUAL, phys=WEDGE_PHYS)
    )


def test_identity_without_usb_serial_uses_the_usb_port():
    info = DeviceInfo("/dev/input/event5", "Scanner", 0x0C2E, 0x0B61, "", "usb-0000:01:00.0-1.2/input0")
    assert info.identity == "0c2e:0b61@usb-0000:01:00.0-1.2/input0"


def test_an_input_directory_that_appears_later_is_watched(tmp_path, reads):
    inputs = StandInInputs(tmp_path / "later")
    inputs.dir.rmdir()
    inputs.dir.parent.rmdir()  # neither it nor its parent exists when the source starts
    source = start(inputs, reads)
    try:
        threading.Event().wait(0.2)
        inputs.dir.mkdir(parents=True)
        scanner = inputs.plug("event5", NEWLAND)
        wait_until(lambda: scanner.grabbed, 2, what="grabbed after the directory appeared")
        scanner.type_keys(keys(CODE))
        wait_until(lambda: reads, 2, what="a read")
        assert reads[0].raw == CODE.encode() + b"\n"
    finally:
        source.stop()


def test_a_node_that_is_not_an_input_device_is_skipped_quietly(inputs, reads, caplog):
    (Path(inputs.dir) / "event9").touch()  # exists, but the opener cannot make a device of it
    calls = []

    def opener(path, links):
        calls.append(path)
        if path.endswith("event9"):
            raise OSError(25, "Inappropriate ioctl for device")
        return inputs.open(path, links)

    source = HidSource(DeviceMatch(vendor_id=0x1EAB), input_dir=inputs.dir, opener=opener)
    source.start(reads.append)
    try:
        threading.Event().wait(2.5)  # two periodic re-checks
        assert calls.count(str(Path(inputs.dir) / "event9")) == 1
        scanner = inputs.plug("event5", NEWLAND)
        wait_until(lambda: scanner.grabbed, 2, what="grabbed")
    finally:
        source.stop()


def test_a_by_id_link_made_after_the_node_still_selects_it(inputs, reads):
    # udev makes /dev/input/eventN first and the by-id link a moment later.
    scanner = inputs.plug("event5", NEWLAND)
    link = Path(inputs.dir) / "by-id" / "usb-Newland_FM430_NLS0001-event-kbd"
    source = start(inputs, reads, match=DeviceMatch(path=str(link)))
    try:
        threading.Event().wait(0.3)
        assert not scanner.grabbed
        link.parent.mkdir()
        link.symlink_to("../event5")
        wait_until(lambda: scanner.grabbed, 2, what="grabbed once its link appeared")
        scanner.type_keys(keys(CODE))
        wait_until(lambda: reads, 2, what="a read")
    finally:
        source.stop()


def test_the_real_evdev_opener_on_a_node_that_is_not_an_input_device(tmp_path, reads, caplog):
    # The one part of EvdevDevice this machine can run: evdev refusing a
    # non-input node (ENOTTY) is skipped, not retried in a loop, not fatal.
    caplog.set_level(logging.INFO, logger="agent.sources.hid")
    input_dir = tmp_path / "input"
    input_dir.mkdir()
    (input_dir / "event3").symlink_to("/dev/null")
    source = HidSource(DeviceMatch(vendor_id=0x1EAB), name="real", input_dir=input_dir)
    source.start(reads.append)
    try:
        threading.Event().wait(1.5)
        assert source._reader.is_alive() and not source.devices
        assert str(input_dir / "event3") in source._skip
        assert caplog.text.count("no input device matches") == 1
    finally:
        source.stop()


def test_keys_lost_between_scans_are_logged_and_the_fragment_is_rejected(inputs, reads, caplog):
    # The kernel overflowed before the reader saw any key of this scan: the decoder
    # had nothing unfinished to discard, but the keys lost must still be told.
    caplog.set_level(logging.WARNING, logger="agent.sources.hid")
    scanner = inputs.plug("event5", NEWLAND)
    source = start(inputs, reads)
    try:
        wait_until(lambda: scanner.grabbed, 2, what="grabbed")
        scanner.emit([InputEvent(0, 0, e.EV_SYN, e.SYN_DROPPED, 0), InputEvent(0, 0, e.EV_SYN, e.SYN_REPORT, 0)])
        scanner.type_keys(keys(CODE[11:]))
        wait_until(lambda: reads, 2, what="the fragment read")
    finally:
        source.stop()
    assert [r.raw for r in reads] == [CODE[11:].encode() + b"\n"]
    assert codes.parse(reads[0].raw).reason == "wrong_length"
    assert "keys lost: the kernel's event buffer overflowed" in caplog.text
    assert "1eab:1d06:NLS0001" in caplog.text


def test_scans_are_read_while_the_finder_is_busy_with_another_device(inputs, reads):
    # udev is still working on a freshly plugged device and probing it is slow:
    # the scanner already open must be read meanwhile, or its keys overflow the kernel's buffer.
    scanner = inputs.plug("event5", NEWLAND)
    probing, release = threading.Event(), threading.Event()

    def opener(path, links):
        if path.endswith("event9"):
            probing.set()
            release.wait(10)
        return inputs.open(path, links)

    source = start(inputs, reads, opener=opener)
    try:
        wait_until(lambda: scanner.grabbed, 2, what="grabbed")
        inputs.plug("event9", KEYBOARD)
        wait_until(probing.is_set, 2, what="the finder probing event9")
        scanner.type_keys(keys(CODE))
        wait_until(lambda: reads, 2, what="the scan read while event9 is still being probed")
        assert reads[0].raw == CODE.encode() + b"\n"
        assert not release.is_set()
    finally:
        release.set()
        source.stop()
    assert scanner.closed


def test_a_scanner_replugged_under_the_same_node_is_read_again(inputs, reads):
    # The kernel usually gives a replugged scanner its old eventN back.
    first = inputs.plug("event5", NEWLAND)
    source = start(inputs, reads)
    try:
        wait_until(lambda: first.grabbed, 2, what="grabbed")
        for round_ in range(3):
            inputs.unplug("event5")
            wait_until(lambda: not source.devices, 2, what=f"round {round_}: dropped")
            again = inputs.plug("event5", NEWLAND)
            wait_until(lambda again=again: again.grabbed, 2, what=f"round {round_}: grabbed again")
            again.type_keys(keys(CODE))
            wait_until(lambda round_=round_: len(reads) == round_ + 1, 2, what=f"round {round_}: read")
    finally:
        source.stop()
    assert [r.raw for r in reads] == [CODE.encode() + b"\n"] * 3


def test_a_device_the_finder_opens_while_stopping_is_released(inputs, reads):
    scanner = inputs.plug("event5", NEWLAND)
    probing, release = threading.Event(), threading.Event()

    def opener(path, links):
        probing.set()
        release.wait(20)  # a driver slow to answer while the agent stops
        return inputs.open(path, links)

    source = start(inputs, reads, opener=opener)
    wait_until(probing.is_set, 2, what="probing")
    stopper = threading.Thread(target=source.stop)
    stopper.start()
    # stop() gives up on the finder after its join timeout and stops the reader.
    wait_until(source._reader.stopping.is_set, 15, what="the reader stopping")
    release.set()
    stopper.join(15)
    wait_until(lambda: scanner.closed, 5, what="the late device closed")
    assert not scanner.grabbed
