"""USB keyboard-wedge scanners: the key decoder, the device finder and the source.

- :mod:`~agent.sources.hid.decoder`: key events in, scans out (pure);
- :mod:`~agent.sources.hid.keymaps`: what each key types on each layout;
- :mod:`~agent.sources.hid.device`: which devices are ours, and opening one;
- :mod:`~agent.sources.hid.source`: :class:`HidSource`, the finder and reader threads.
"""

from agent.sources.hid.decoder import UNMAPPED, KeyDecoder, Typed
from agent.sources.hid.device import DeviceInfo, DeviceMatch, EvdevDevice, InputDeviceLike
from agent.sources.hid.source import HidSource

__all__ = [
    "UNMAPPED",
    "DeviceInfo",
    "DeviceMatch",
    "EvdevDevice",
    "HidSource",
    "InputDeviceLike",
    "KeyDecoder",
    "Typed",
]
