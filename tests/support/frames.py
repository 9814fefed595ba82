"""Camera frames made from real barcodes: ``zxingcpp.create_barcode`` placed on a larger canvas.

frame = Frame(640, 480).place(code128("81234567890123456789"), at=(320, 240), angle=12).blur(1).noise(6).luma()

Each step returns the frame, so a test can say what degrades the picture.
"""

from __future__ import annotations

import numpy as np
import zxingcpp
from PIL import Image, ImageFilter


def barcode(content: str, fmt: str = "Code128", *, scale: int = 2, gs1: bool = False) -> Image.Image:
    """A barcode made by zxing-cpp, as a greyscale PIL image with its quiet zones."""
    options = {"gs1": True} if gs1 else {}
    made = zxingcpp.create_barcode(content, zxingcpp.barcode_format_from_str(fmt), **options)
    return Image.fromarray(np.asarray(zxingcpp.write_barcode_to_image(made, scale=scale)))


def code128(digits: str, scale: int = 2) -> Image.Image:
    return barcode(digits, "Code128", scale=scale)


def gs1_datamatrix(element_string: str, scale: int = 5) -> Image.Image:
    """A GS1 DataMatrix from a bracketed element string, e.g. ``"(01)04012345678901(21)ABC"``."""
    return barcode(element_string, "DataMatrix", scale=scale, gs1=True)


class Frame:
    """A canvas the size of a camera frame, with codes placed on it."""

    def __init__(self, width: int = 640, height: int = 480, background: int = 200, seed: int = 0) -> None:
        self.image = Image.new("L", (width, height), background)
        self.rng = np.random.default_rng(seed)

    def place(self, code: Image.Image, at: tuple[int, int], angle: float = 0.0) -> Frame:
        """Put ``code`` centred on ``at``, turned ``angle`` degrees anticlockwise."""
        turned = code.rotate(angle, resample=Image.BICUBIC, expand=True, fillcolor=255)
        self.image.paste(turned, (at[0] - turned.width // 2, at[1] - turned.height // 2))
        return self

    def blur(self, radius: float) -> Frame:
        self.image = self.image.filter(ImageFilter.GaussianBlur(radius))
        return self

    def contrast(self, low: int, high: int) -> Frame:
        """Squeeze black..white into ``low..high`` (a dim, washed-out picture)."""
        pixels = np.asarray(self.image, dtype=np.float32)
        self.image = Image.fromarray((low + pixels * (high - low) / 255).astype(np.uint8))
        return self

    def noise(self, sigma: float) -> Frame:
        """Gaussian sensor noise of ``sigma`` grey levels."""
        pixels = np.asarray(self.image, dtype=np.float32) + self.rng.normal(0, sigma, self.image.size[::-1])
        self.image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        return self

    def luma(self) -> np.ndarray:
        """The frame as a camera source sees it: a 2-D uint8 array."""
        return np.asarray(self.image, dtype=np.uint8).copy()

    def save(self, path) -> None:
        self.image.save(path)


def blank(width: int = 640, height: int = 480) -> np.ndarray:
    """A frame with nothing in it."""
    return Frame(width, height).noise(4).luma()


def save_frames(directory, frames: list[np.ndarray]) -> list:
    """Write luma frames as ``000.png``, ``001.png``... (what the ``images`` backend replays)."""
    paths = []
    for n, frame in enumerate(frames):
        path = directory / f"{n:03}.png"
        Image.fromarray(frame).save(path)
        paths.append(path)
    return paths
