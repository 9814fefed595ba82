"""Finding barcodes in one camera frame with zxing-cpp: what a camera source decodes with.

A frame is a greyscale (luma) image as a 2-D ``uint8`` numpy array. Each code
found comes back as a :class:`Found`: the AIM symbology identifier zxing-cpp
reports and the raw bytes of the content, with GS (0x1D) separators kept, so
``agent.codes`` reads it exactly as it reads a handheld scanner that sends an
AIM prefix.

>>> import numpy as np, zxingcpp
>>> code = zxingcpp.create_barcode("81234567890123456789", zxingcpp.Code128)
>>> frame = np.asarray(zxingcpp.write_barcode_to_image(code, scale=2))
>>> FrameDecoder().decode(frame)
[Found(symbology=']C0', content=b'81234567890123456789')]
>>> FrameDecoder().decode(frame)[0].raw
b']C081234567890123456789'
"""

from __future__ import annotations

from dataclasses import dataclass

import zxingcpp

#: What a camera decodes unless told otherwise: the two symbologies trace codes use.
DEFAULT_FORMATS = ("Code128", "DataMatrix")
BINARIZERS = ("LocalAverage", "GlobalHistogram", "FixedThreshold", "BoolCast")


@dataclass(frozen=True)
class Found:
    """One code in one frame."""

    symbology: str
    content: bytes

    @property
    def raw(self) -> bytes:
        """What a scanner with AIM prefixes on would send: identifier, then content."""
        return self.symbology.encode("ascii") + self.content


def format_flags(names: tuple[str, ...] | list[str]) -> zxingcpp.BarcodeFormats:
    """zxing-cpp format names (``"Code128"``, ``"DataMatrix"``, ``"EAN13"``...) as one set.

    >>> format_flags(["Code128", "DataMatrix"])
    Code 128, Data Matrix
    >>> format_flags(["Code 12"])
    Traceback (most recent call last):
    ...
    ValueError: 'Code 12' is not a zxing-cpp barcode format
    """
    for name in names:
        try:
            zxingcpp.barcode_format_from_str(name)
        except ValueError:
            raise ValueError(f"{name!r} is not a zxing-cpp barcode format") from None
    return zxingcpp.barcode_formats_from_str(",".join(names))


class FrameDecoder:
    """zxing-cpp with the options of one camera, applied to whole frames or a region.

    ``roi`` is ``(x, y, width, height)`` as fractions of the frame, so it does
    not depend on the resolution. The defaults are the fastest settings that
    still read a trace code held up to the lens (see ``bench/camera.py``):
    no downscaled or inverted passes, and rotation on, because a pack is
    held at any angle and Code 128 is otherwise read only near horizontal.
    """

    def __init__(
        self,
        formats: tuple[str, ...] = DEFAULT_FORMATS,
        *,
        try_rotate: bool = True,
        try_downscale: bool = False,
        try_invert: bool = False,
        binarizer: str = "LocalAverage",
        roi: tuple[float, float, float, float] | None = None,
    ) -> None:
        if binarizer not in BINARIZERS:
            raise ValueError(f"binarizer {binarizer!r} is not one of {', '.join(BINARIZERS)}")
        self.formats = format_flags(formats)
        self.roi = roi
        self.options = {
            "formats": self.formats,
            "try_rotate": try_rotate,
            "try_downscale": try_downscale,
            "try_invert": try_invert,
            "binarizer": getattr(zxingcpp.Binarizer, binarizer),
            # Plain keeps GS separators as bytes; HRI would turn GS1 into "(01)...".
            "text_mode": zxingcpp.TextMode.Plain,
        }

    def crop(self, frame):
        """The region of interest of ``frame`` (a view, no copy)."""
        if self.roi is None:
            return frame
        height, width = frame.shape[:2]
        x, y, w, h = self.roi
        left, top = int(x * width), int(y * height)
        return frame[top : top + max(1, int(h * height)), left : left + max(1, int(w * width))]

    def decode(self, frame) -> list[Found]:
        """Every distinct code in ``frame``, in the order zxing-cpp found them."""
        found: list[Found] = []
        for barcode in zxingcpp.read_barcodes(self.crop(frame), **self.options):
            item = Found(barcode.symbology_identifier, barcode.bytes)
            if item not in found:  # the same label twice in view is still one code
                found.append(item)
        return found
