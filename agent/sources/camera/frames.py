"""Where camera frames come from: a Raspberry Pi camera, or image files replayed.

A frame source yields greyscale (luma) frames as 2-D ``uint8`` numpy arrays
until ``stop`` is set or its input ends::

    for frame in ImageFiles("frames/*.png", fps=30, loop=False).frames(stop):
        ...

A camera that fails raises out of :meth:`frames`; the camera source logs it
and opens the camera again, so an unplugged camera never stops the agent.
"""

from __future__ import annotations

import glob
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".ppm", ".tif", ".tiff", ".webp")
PICAMERA2_HELP = (
    "picamera2 is not installed: on Raspberry Pi OS run `sudo apt install python3-picamera2` "
    "and make the agent's virtualenv with --system-site-packages so it can import it"
)


class CameraUnavailable(RuntimeError):
    """The camera cannot be used at all on this machine (not: it failed just now)."""


class FrameSource(Protocol):
    #: True when the end of :meth:`frames` is the end of the input for good (a
    #: replay); a camera's frames end only when stopped or when it fails.
    finite: bool

    def frames(self, stop: threading.Event) -> Iterator[np.ndarray]: ...


class ImageFiles:
    """Image files replayed as camera frames at ``fps`` (0: as fast as they load).

    ``path`` is a directory (its image files in name order) or a glob
    pattern. With ``loop`` the files repeat until stopped; without, one pass.
    Colour images are turned into luma (ITU-R 601), as the camera delivers.
    """

    finite = True

    def __init__(self, path: str | Path, *, fps: float = 30.0, loop: bool = True) -> None:
        self.path = str(path)
        self.fps = fps
        self.loop = loop

    def paths(self) -> list[Path]:
        """The files to replay, in order."""
        where = Path(self.path)
        candidates = sorted(where.iterdir()) if where.is_dir() else [Path(p) for p in sorted(glob.glob(self.path))]
        return [p for p in candidates if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]

    def frames(self, stop: threading.Event) -> Iterator[np.ndarray]:
        from PIL import Image  # only this backend needs Pillow

        paths = self.paths()
        if not paths:
            log.error("camera images: no image files at %s (looked for %s)", self.path, " ".join(IMAGE_SUFFIXES))
            return
        period = 1.0 / self.fps if self.fps > 0 else 0.0
        due = time.monotonic()
        bad: set[Path] = set()
        while not stop.is_set():
            for path in paths:
                if path in bad:
                    continue
                try:
                    with Image.open(path) as image:
                        frame = np.asarray(image.convert("L"))
                except (OSError, ValueError) as problem:  # PIL's errors for unreadable images
                    log.warning("camera images: skipping %s: %s", path, problem)
                    bad.add(path)
                    continue
                if period:
                    due += period
                    if stop.wait(max(0.0, due - time.monotonic())):
                        return
                    due = max(due, time.monotonic() - period)  # a stall is not made up with a burst
                yield frame
            if not self.loop or len(bad) == len(paths):
                return


class Picamera2Frames:
    """Frames from a libcamera camera through picamera2 (Raspberry Pi OS: apt ``python3-picamera2``).

    Asks for YUV420, whose first plane is the luma the decoder wants, so no
    colour conversion is spent per frame; ``queue=False`` makes each capture
    wait for a fresh frame rather than hand over one already buffered.
    """

    finite = False

    def __init__(self, camera: int = 0, *, width: int = 640, height: int = 480, fps: float = 30.0) -> None:
        self.camera = camera
        self.width = width
        self.height = height
        self.fps = fps

    def check(self) -> None:
        """Raise :class:`CameraUnavailable` if picamera2 cannot be imported here."""
        try:
            import picamera2  # noqa: F401
        except ImportError as problem:
            raise CameraUnavailable(f"{PICAMERA2_HELP} ({problem})") from problem

    def frames(self, stop: threading.Event) -> Iterator[np.ndarray]:
        self.check()
        from picamera2 import Picamera2

        camera = Picamera2(self.camera)
        try:
            controls = {"FrameRate": self.fps} if self.fps > 0 else {}
            camera.configure(
                camera.create_video_configuration(
                    main={"size": (self.width, self.height), "format": "YUV420"},
                    controls=controls,
                    queue=False,
                )
            )
            camera.start()
            log.info("camera %d started at %dx%d", self.camera, self.width, self.height)
            while not stop.is_set():
                # YUV420 comes as one array: height rows of luma (maybe padded
                # to the stride), then the chroma planes.
                yield camera.capture_array("main")[: self.height, : self.width]
        finally:
            try:
                camera.stop()
            finally:
                camera.close()
