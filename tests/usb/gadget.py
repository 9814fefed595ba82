"""Virtual USB scanners made with the kernel's USB gadget framework (configfs + dummy_hcd).

Inside the bench VM (see ``scripts/usb-vm-tests``) the kernel is both the USB
device and the USB host: a gadget bound to a ``dummy_udc.N`` controller is
enumerated by the same kernel's real ``usbhid`` and ``cdc_acm`` drivers, so the
agent sees a real ``/dev/input/eventN`` keyboard and a real ``/dev/ttyACMn``.

    bench = GadgetBench.setup(controllers=2)
    scanner = ScannerGadget(bench, "nls", vendor_id=0x1EAB, product_id=0x1D06, serial="NLS0001", acm=True)
    scanner.plug()
    scanner.type_codes(["81234567890123456789"], interval=0.001)
    scanner.send(b"81234567890123456789\\r\\n")   # to /dev/ttyACMn through /dev/ttyGSn
    scanner.unplug(); scanner.plug()
    scanner.remove()

:func:`keyboard_reports` (text to 8-byte boot-keyboard reports) is pure and is
tested outside the VM too.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import subprocess
import time
import tty
from collections.abc import Iterable, Iterator
from pathlib import Path

CONFIGFS = Path("/sys/kernel/config")
GADGETS = CONFIGFS / "usb_gadget"
UDC_CLASS = Path("/sys/class/udc")

MODULES = ("dummy_hcd", "libcomposite", "usbhid", "cdc_acm", "usb_f_hid", "usb_f_acm", "configfs")

# A standard boot-keyboard report descriptor (HID 1.11, appendix B.1): modifier
# byte, reserved byte, six key codes; five LED output bits padded to a byte.
BOOT_KEYBOARD_DESCRIPTOR = bytes.fromhex(
    "0501 0906 a101"  # Usage Page (Generic Desktop), Usage (Keyboard), Collection (Application)
    "0507 19e0 29e7 1500 2501 7501 9508 8102"  # 8 modifier bits (left ctrl .. right GUI)
    "9501 7508 8103"  # reserved byte
    "9505 7501 0508 1901 2905 9102"  # 5 LED outputs (num lock .. kana)
    "9501 7503 9103"  # LED padding
    "9506 7508 1500 2565 0507 1900 2965 8100"  # 6 key codes, usages 0..0x65
    "c0"  # End Collection
)

LEFT_SHIFT = 0x02
#: Longest wait for the host to take one keyboard report before typing gives up.
REPORT_TIMEOUT_S = 5.0
RELEASE = bytes(8)

# US layout: character -> (usage id, shift held).
_US: dict[str, tuple[int, bool]] = {}
for _i, _c in enumerate("abcdefghijklmnopqrstuvwxyz"):
    _US[_c] = (0x04 + _i, False)
    _US[_c.upper()] = (0x04 + _i, True)
for _i, _c in enumerate("1234567890"):
    _US[_c] = (0x1E + _i, False)
for _i, _c in enumerate("!@#$%^&*()"):
    _US[_c] = (0x1E + _i, True)
_US.update(
    {
        "\r": (0x28, False),
        "\n": (0x28, False),
        "\t": (0x2B, False),
        " ": (0x2C, False),
        "-": (0x2D, False),
        "_": (0x2D, True),
        "=": (0x2E, False),
        "+": (0x2E, True),
        "[": (0x2F, False),
        "{": (0x2F, True),
        "]": (0x30, False),
        "}": (0x30, True),
        "\\": (0x31, False),
        "|": (0x31, True),
        ";": (0x33, False),
        ":": (0x33, True),
        "'": (0x34, False),
        '"': (0x34, True),
        "`": (0x35, False),
        "~": (0x35, True),
        ",": (0x36, False),
        "<": (0x36, True),
        ".": (0x37, False),
        ">": (0x37, True),
        "/": (0x38, False),
        "?": (0x38, True),
    }
)
# Keypad digits: what a scanner set to "emulate numeric keypad" sends.
_KEYPAD = {c: 0x59 + i for i, c in enumerate("123456789")} | {"0": 0x62}


def keyboard_reports(text: str, *, keypad: bool = False) -> Iterator[bytes]:
    """The 8-byte boot-keyboard reports that type ``text``: a key-down then a release per character.

    Every character is released before the next one, as scanners do, so
    repeated characters ("00") arrive as separate presses.

    >>> [r.hex() for r in keyboard_reports("1A")]
    ['00001e0000000000', '0000000000000000', '0200040000000000', '0000000000000000']
    >>> [r.hex() for r in keyboard_reports("0", keypad=True)][0]
    '0000620000000000'
    >>> next(keyboard_reports("é"))
    Traceback (most recent call last):
    ValueError: no US-layout key for 'é'
    """
    for ch in text:
        if keypad and ch in _KEYPAD:
            usage, shift = _KEYPAD[ch], False
        else:
            try:
                usage, shift = _US[ch]
            except KeyError:
                raise ValueError(f"no US-layout key for {ch!r}") from None
        yield bytes([LEFT_SHIFT if shift else 0, 0, usage, 0, 0, 0, 0, 0])
        yield RELEASE


class GadgetBench:
    """The kernel side: modules loaded, configfs mounted, ``controllers`` dummy UDCs."""

    def __init__(self, udcs: list[str]) -> None:
        self.udcs = udcs
        self._taken: set[str] = set()

    @classmethod
    def setup(cls, controllers: int = 3) -> GadgetBench:
        """Load the modules (dummy_hcd with ``num=controllers``) and mount configfs."""
        subprocess.run(["modprobe", "-a", *MODULES[1:]], check=True)
        have = sorted(p.name for p in UDC_CLASS.glob("dummy_udc.*")) if UDC_CLASS.exists() else []
        if len(have) < controllers:
            # num= only counts when the module is loaded, so reload it.
            subprocess.run(["modprobe", "-r", "dummy_hcd"], check=False)
            subprocess.run(["modprobe", "dummy_hcd", f"num={controllers}"], check=True)
        if not GADGETS.exists():
            subprocess.run(["mount", "-t", "configfs", "none", str(CONFIGFS)], check=True)
        udcs = sorted(p.name for p in UDC_CLASS.glob("dummy_udc.*"))
        if len(udcs) < controllers:
            raise RuntimeError(f"dummy_hcd made {len(udcs)} controllers, wanted {controllers}")
        return cls(udcs)

    def take_udc(self) -> str:
        for udc in self.udcs:
            if udc not in self._taken:
                self._taken.add(udc)
                return udc
        raise RuntimeError(f"all {len(self.udcs)} dummy controllers are in use")

    def give_back(self, udc: str) -> None:
        self._taken.discard(udc)


class ScannerGadget:
    """One virtual USB scanner: a HID boot keyboard, a CDC-ACM serial port, or both.

    Manufacturer and product strings become the evdev device name
    (``"Newland NLS-HR22"``); ``serial`` becomes the USB serial number (evdev's
    ``uniq``, the ``serial`` of ``/dev/ttyACMn``).
    """

    def __init__(
        self,
        bench: GadgetBench,
        name: str,
        *,
        vendor_id: int = 0x1EAB,
        product_id: int = 0x1D06,
        serial: str = "",
        manufacturer: str = "Newland",
        product: str = "NLS-HR22",
        hid: bool = True,
        acm: bool = False,
    ) -> None:
        self.bench = bench
        self.name = name
        self.vendor_id = vendor_id
        self.product_id = product_id
        self.serial = serial
        self.manufacturer = manufacturer
        self.product = product
        self.dir = GADGETS / name
        self.udc: str | None = None
        self._hidg: int | None = None
        self._ttygs: int | None = None
        self._tty_fd: int | None = None
        self._build(hid, acm)

    # -- configfs ---------------------------------------------------------------

    def _build(self, hid: bool, acm: bool) -> None:
        d = self.dir
        d.mkdir()
        _write(d / "idVendor", f"0x{self.vendor_id:04x}")
        _write(d / "idProduct", f"0x{self.product_id:04x}")
        _write(d / "bcdUSB", "0x0200")
        _write(d / "bcdDevice", "0x0100")
        strings = d / "strings/0x409"
        strings.mkdir(parents=True)
        _write(strings / "manufacturer", self.manufacturer)
        _write(strings / "product", self.product)
        _write(strings / "serialnumber", self.serial)
        config = d / "configs/c.1"
        config.mkdir(parents=True)
        _write(config / "MaxPower", "100")
        if acm:
            # A composite device with an interface association needs these
            # class codes, or the host's cdc_acm does not bind.
            _write(d / "bDeviceClass", "0xEF")
            _write(d / "bDeviceSubClass", "0x02")
            _write(d / "bDeviceProtocol", "0x01")
        if hid:
            f = d / "functions/hid.usb0"
            f.mkdir(parents=True)
            _write(f / "protocol", "1")  # keyboard
            _write(f / "subclass", "1")  # boot interface
            _write(f / "report_length", "8")
            (f / "report_desc").write_bytes(BOOT_KEYBOARD_DESCRIPTOR)
            (config / "hid.usb0").symlink_to(f)
            self._hidg = int((f / "dev").read_text().split(":")[1])
        if acm:
            f = d / "functions/acm.usb0"
            f.mkdir(parents=True)
            (config / "acm.usb0").symlink_to(f)
            self._ttygs = int((f / "port_num").read_text())

    def plug(self) -> None:
        """Bind to a dummy controller: the host enumerates the device."""
        if self.udc is None:
            self.udc = self.bench.take_udc()
        _write(self.dir / "UDC", self.udc)

    def unplug(self) -> None:
        """Unbind: to the host, the cable was pulled."""
        self._close_tty()
        _write(self.dir / "UDC", "\n")

    def remove(self) -> None:
        """Unplug and take the gadget apart (configfs wants it in reverse order)."""
        self._close_tty()
        if not self.dir.exists():
            return
        with contextlib.suppress(OSError):
            self.unplug()
        config = self.dir / "configs/c.1"
        for link in config.iterdir():
            if link.is_symlink():
                link.unlink()
        for sub in (config / "strings/0x409", config, self.dir / "strings/0x409"):
            if sub.exists():
                sub.rmdir()
        for f in (self.dir / "functions").iterdir():
            f.rmdir()
        self.dir.rmdir()
        if self.udc is not None:
            self.bench.give_back(self.udc)
            self.udc = None

    # -- the device side --------------------------------------------------------

    @property
    def hidg(self) -> Path:
        """``/dev/hidgN``: the scanner end of the keyboard."""
        if self._hidg is None:
            raise RuntimeError(f"gadget {self.name} has no HID function")
        return Path(f"/dev/hidg{self._hidg}")

    @property
    def ttygs(self) -> Path:
        """``/dev/ttyGSN``: the scanner end of the CDC-ACM port."""
        if self._ttygs is None:
            raise RuntimeError(f"gadget {self.name} has no ACM function")
        return Path(f"/dev/ttyGS{self._ttygs}")

    def type_codes(
        self, codes: Iterable[str], *, interval: float = 0.001, suffix: str = "\r", keypad: bool = False
    ) -> None:
        """Type each code plus ``suffix``, one report every ``interval`` seconds.

        The gadget takes a report only when the host has polled the previous one,
        so reports are never lost, only delayed; a host that stops polling for
        ``REPORT_TIMEOUT_S`` raises :class:`TimeoutError` instead of hanging the test.
        """
        fd = os.open(self.hidg, os.O_WRONLY | os.O_NONBLOCK)
        try:
            for code in codes:
                for report in keyboard_reports(code + suffix, keypad=keypad):
                    self._put_report(fd, report)
                    if interval:
                        time.sleep(interval)
        finally:
            os.close(fd)

    def _put_report(self, fd: int, report: bytes) -> None:
        deadline = time.monotonic() + REPORT_TIMEOUT_S
        while True:
            try:
                os.write(fd, report)
                return
            except BlockingIOError:
                pass  # the previous report is still waiting for the host
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.hidg} ({self.name}): the host took no report for {REPORT_TIMEOUT_S} s")
            select.select([], [fd], [], min(left, 0.05))

    def send(self, data: bytes) -> None:
        """Write bytes on the serial function; they come out of the host's ``/dev/ttyACMn``."""
        if self._tty_fd is None:
            # Kept open while plugged in: closing a gadget tty may drop bytes the host has not read yet.
            self._tty_fd = os.open(self.ttygs, os.O_WRONLY | os.O_NOCTTY)
            tty.setraw(self._tty_fd)  # no CR/LF translation: the bytes go out as written
        _write_all(self._tty_fd, data)

    def _close_tty(self) -> None:
        # An unplug hangs the gadget tty up: writes on the old descriptor fail with EIO.
        if self._tty_fd is not None:
            os.close(self._tty_fd)
            self._tty_fd = None

    # -- the host side ----------------------------------------------------------

    def _usb_device(self) -> Path | None:
        """The host's sysfs directory of this gadget's USB device, when enumerated."""
        for dev in Path("/sys/bus/usb/devices").iterdir():
            try:
                if (
                    int((dev / "idVendor").read_text(), 16) == self.vendor_id
                    and int((dev / "idProduct").read_text(), 16) == self.product_id
                    and _read(dev / "serial") == self.serial
                    and _read(dev / "product") == self.product
                ):
                    return dev
            except (OSError, ValueError):
                continue
        return None

    def event_device(self) -> Path | None:
        """``/dev/input/eventN`` of this gadget's keyboard, or None while not enumerated."""
        dev = self._usb_device()
        if dev is None:
            return None
        for event in sorted(dev.glob("*/*/input/input*/event*")):
            node = Path("/dev/input") / event.name
            if node.exists():
                return node
        return None

    def tty_device(self) -> Path | None:
        """``/dev/ttyACMn`` of this gadget's serial port, or None while not enumerated."""
        dev = self._usb_device()
        if dev is None:
            return None
        for port in sorted(dev.glob("*/tty/ttyACM*")):
            node = Path("/dev") / port.name
            if node.exists():
                return node
        return None

    def wait_enumerated(self, timeout: float = 20.0) -> None:
        """Wait until the host has made the device nodes this gadget's functions give."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (self._hidg is None or self.event_device()) and (self._ttygs is None or self.tty_device()):
                return
            time.sleep(0.02)
        raise TimeoutError(f"gadget {self.name} not enumerated after {timeout} s")

    def wait_gone(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while self._usb_device() is not None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"gadget {self.name} still enumerated after {timeout} s")
            time.sleep(0.02)


def _write(path: Path, text: str) -> None:
    path.write_text(text)


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _write_all(fd: int, data: bytes) -> None:
    while data:
        try:
            n = os.write(fd, data)
        except OSError as problem:
            if problem.errno in (errno.EAGAIN, errno.EINTR):
                time.sleep(0.001)
                continue
            raise
        data = data[n:]
