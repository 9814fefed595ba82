"""[[scanners]] of kind hid and serial: defaults, and errors that name the key."""

from __future__ import annotations

import pytest

from agent.config import ConfigError, HidScannerConfig, SerialScannerConfig, parse_toml
from agent.runner import Runner
from agent.sources.hid import HidSource
from agent.sources.serial import SerialSource


def scanners(body: str):
    return parse_toml("[[scanners]]\n" + body).scanners


def test_hid_defaults_and_keys():
    (hid,) = scanners('kind = "hid"\nname = "counter"\nvendor_id = 0x1EAB\nproduct_id = 0x1D06\nmovement = "receive"\n')
    assert hid == HidScannerConfig(name="counter", movement="receive", vendor_id=0x1EAB, product_id=0x1D06)
    assert (hid.layout, hid.key_timeout_ms, hid.tab_terminates) == ("us", 100, False)
    (hid,) = scanners(
        'kind = "hid"\nname_pattern = "Newland*"\nserial = "NLS1"\npath = "/dev/input/by-id/usb-x-event-kbd"\n'
        'layout = "fr"\nkey_timeout_ms = 250\ntab_terminates = true\n'
    )
    assert (hid.layout, hid.key_timeout_ms, hid.tab_terminates, hid.serial) == ("fr", 250, True, "NLS1")


def test_serial_defaults_and_keys():
    (ser,) = scanners('kind = "serial"\nport = "/dev/serial/by-id/usb-Newland*"\n')
    assert ser == SerialScannerConfig(port="/dev/serial/by-id/usb-Newland*", name="scanner1")
    assert (ser.baudrate, ser.terminator, ser.read_timeout_ms, ser.profile) == (9600, "any", None, None)
    (ser,) = scanners(
        'kind = "serial"\nport = "/dev/ttyACM0"\nbaudrate = 115200\nterminator = "crlf"\n'
        'read_timeout_ms = 50\nprofile = "newland-hr22"\nparity = "even"\nbytesize = 7\n'
    )
    assert (ser.baudrate, ser.terminator, ser.read_timeout_ms, ser.profile) == (115200, "crlf", 50, "newland-hr22")
    assert (ser.parity, ser.bytesize) == ("even", 7)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('kind = "hid"', "needs at least one of vendor_id"),
        ('kind = "hid"\npath = "/dev/input/event3"', "path: '/dev/input/event3' changes from boot to boot"),
        ('kind = "hid"\nvendor_id = "1eab"', "vendor_id: '1eab' is not allowed; allowed: a whole number"),
        ('kind = "hid"\nvendor_id = 70000', "vendor_id: 70000 is not allowed"),
        ('kind = "hid"\nvendor_id = 1\nlayout = "uk"', "layout: 'uk' is not allowed; allowed: us, de, fr"),
        ('kind = "hid"\nvendor_id = 1\nkey_timeout_ms = 0', "key_timeout_ms: 0 is not allowed"),
        ('kind = "hid"\nvendor_id = 1\nport = "/dev/ttyACM0"', "port: unknown key"),
        ('kind = "serial"', "port: must not be empty"),
        ('kind = "serial"\nport = "/dev/ttyACM0"\nterminator = "cr+lf"', "terminator: 'cr+lf' is not allowed"),
        ('kind = "serial"\nport = "/dev/ttyACM0"\nbaudrate = 0', "baudrate: 0 is not allowed"),
        ('kind = "serial"\nport = "/dev/ttyACM0"\nread_timeout_ms = 0', "read_timeout_ms: 0 is not allowed"),
        ('kind = "serial"\nport = "/dev/ttyACM0"\nprofile = ""', "profile: must not be empty"),
        ('kind = "serial"\nport = "/dev/ttyACM0"\nstopbits = 3', "stopbits: 3.0 is not allowed"),
        ('kind = "serial"\nport = "/dev/ttyACM0"\nlayout = "us"', "layout: unknown key"),
    ],
)
def test_errors_name_the_key(body, message):
    with pytest.raises(ConfigError, match=None) as caught:
        scanners(body)
    assert message in str(caught.value)


def test_make_source_builds_each_kind():
    config = parse_toml(
        '[[scanners]]\nkind = "serial"\nname = "a"\nport = "/dev/ttyACM0"\nread_timeout_ms = 40\nmovement = "use"\n'
        '[[scanners]]\nkind = "hid"\nname = "b"\nvendor_id = 0x1EAB\nlayout = "de"\nkey_timeout_ms = 80\n'
    )
    runner = Runner(config)
    serial, hid = (runner.make_source(s) for s in config.scanners)
    assert isinstance(serial, SerialSource)
    assert (serial.port, serial.read_timeout, serial.movement, serial.name) == ("/dev/ttyACM0", 0.04, "use", "a")
    assert isinstance(hid, HidSource)
    assert (hid.match.vendor_id, hid.layout, hid.key_timeout, hid.name) == (0x1EAB, "de", 0.08, "b")
