"""A scanner's stable identity for :attr:`Read.source_id`: the USB ids, never ``eventN`` or ``ttyACM0``.

>>> usb_identity(0x1EAB, 0x1D06, "NLS123")
'1eab:1d06:NLS123'
>>> usb_identity(0x1EAB, 0x1D06, "", location="1-1.2")
'1eab:1d06@1-1.2'

Two identical scanners without a USB serial number would share ``VID:PID``;
the USB port they sit in tells them apart (and stays the same across replugs
into the same socket).
"""

from __future__ import annotations


def usb_identity(vendor: int, product: int, serial: str | None, *, location: str = "") -> str:
    """``VID:PID:serial`` in lower-case hex, or ``VID:PID@location`` without a serial."""
    ids = f"{vendor:04x}:{product:04x}"
    serial = (serial or "").strip()
    if serial:
        return f"{ids}:{serial}"
    return f"{ids}@{location}" if location else ids
