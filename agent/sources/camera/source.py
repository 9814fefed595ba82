"""Scans read from a camera: frames decoded by zxing-cpp, agreed over several frames.

Two threads per camera. The *capture* thread takes frames from the backend
(:mod:`agent.sources.camera.frames`) and leaves the newest in a one-frame slot; the
*decoder* thread takes whatever is in the slot, decodes it
(:mod:`agent.sources.camera.barcodes`, zxing-cpp releases the GIL) and feeds the
codes to :class:`~agent.sources.camera.agreement.Agreement`. A frame that arrives
while the decoder is busy replaces the one waiting, so latency never grows:
the decoder always works on the latest frame and at most one waits.

>>> import numpy as np, zxingcpp
>>> image = zxingcpp.write_barcode_to_image(zxingcpp.create_barcode("81234567890123456789", zxingcpp.Code128))
>>> frame = np.asarray(image)
>>> camera = CameraSource(frames=None, name="cart")
>>> camera.process(frame, now=0.0), camera.process(frame, now=0.04)[0].raw
([], b']C081234567890123456789')
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent.read import Read
from agent.sources.camera.agreement import Agreement
from agent.sources.camera.barcodes import FrameDecoder
from agent.sources.camera.frames import CameraUnavailable, FrameSource, ImageFiles, Picamera2Frames

log = logging.getLogger(__name__)

BACKENDS = ("picamera2", "images")
RETRY_S = (1.0, 2.0, 5.0, 10.0)  # waits before reopening a failed camera
PRESENT_S = 3.0  # no frame for this long: the camera counts as missing


@dataclass
class CameraStats:
    """What a camera source has done so far (read it for diagnostics and benchmarks)."""

    captured: int = 0  # frames the backend delivered
    decoded: int = 0  # frames the decoder looked at
    dropped: int = 0  # frames replaced by a newer one before the decoder got to them
    max_backlog: int = 0  # most frames ever waiting for the decoder (1 by design)
    reads: int = 0  # scans handed to the pipeline
    decode_s: float = 0.0  # time spent decoding


class LatestFrame:
    """A one-frame mailbox between capture and decoder: a new frame replaces a waiting one."""

    def __init__(self, stats: CameraStats) -> None:
        self.stats = stats
        self._cond = threading.Condition()
        self._frame: tuple[int, float, np.ndarray] | None = None
        self._closed = False

    def put(self, frame: np.ndarray, now: float) -> None:
        with self._cond:
            self.stats.captured += 1
            if self._frame is not None:
                self.stats.dropped += 1
            self._frame = (self.stats.captured, now, frame)
            self.stats.max_backlog = max(self.stats.max_backlog, 1)
            self._cond.notify()

    def take(self) -> tuple[int, float, np.ndarray] | None:
        """The waiting frame (its number, capture time, pixels); None once closed and empty."""
        with self._cond:
            while self._frame is None and not self._closed:
                self._cond.wait()
            taken, self._frame = self._frame, None
            return taken

    def close(self) -> None:
        """No more frames: :meth:`take` hands over the last one, then returns None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class CameraSource:
    """One camera as a scanner source (``kind = "camera"`` in ``[[scanners]]``).

    ``frames`` is a frame source from :mod:`agent.sources.camera.frames`; ``done`` is
    set only when it ends for good (an ``images`` pass without ``loop``).
    """

    kind = "camera"

    def __init__(
        self,
        frames: FrameSource | None,
        *,
        decoder: FrameDecoder | None = None,
        agreement: Agreement | None = None,
        name: str = "camera",
        movement: str | None = None,
    ) -> None:
        self.frames = frames
        self.decoder = decoder or FrameDecoder()
        self.agreement = agreement or Agreement()
        self.name = name
        self.movement = movement
        self.stats = CameraStats()
        self.done = threading.Event()
        self._stop = threading.Event()
        self._slot = LatestFrame(self.stats)
        self.last_frame_at = float("-inf")
        self._threads: list[threading.Thread] = []
        self._submit: Callable[[Read], None] | None = None

    @classmethod
    def from_config(cls, config: Any) -> CameraSource:
        """Build from a ``CameraScannerConfig`` (read by attribute, so sources need not import config)."""
        if config.backend == "images":
            frames: FrameSource = ImageFiles(config.path, fps=config.fps, loop=config.loop)
        elif config.backend == "picamera2":
            frames = Picamera2Frames(config.camera, width=config.width, height=config.height, fps=config.fps)
        else:
            raise ValueError(f"camera backend {config.backend!r} is not one of {', '.join(BACKENDS)}")
        decoder = FrameDecoder(
            tuple(config.formats),
            try_rotate=config.try_rotate,
            try_downscale=config.try_downscale,
            try_invert=config.try_invert,
            binarizer=config.binarizer,
            roi=config.roi,
        )
        agreement = Agreement(
            agree_frames=config.agree_frames,
            agree_window_s=config.agree_window_s,
            rearm_frames=config.rearm_frames,
            rearm_s=config.rearm_s,
        )
        return cls(frames, decoder=decoder, agreement=agreement, name=config.name, movement=config.movement)

    @property
    def source_id(self) -> str:
        return f"camera:{self.name}"

    def start(self, submit: Callable[[Read], None]) -> None:
        self._submit = submit
        check = getattr(self.frames, "check", None)
        if check is not None:
            try:
                check()
            except CameraUnavailable as problem:
                # Said once, loudly; the other scanners of this kiosk keep working.
                log.error("camera %s cannot start: %s", self.name, problem)
                return
        self._threads = [
            threading.Thread(target=self._capture, name=f"camera:{self.name}:capture", daemon=True),
            threading.Thread(target=self._decode_latest, name=f"camera:{self.name}:decode", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def present(self) -> bool:
        """True while frames arrive (or a finished replay, which has nothing left to miss)."""
        return self.done.is_set() or time.monotonic() - self.last_frame_at < PRESENT_S

    def stop(self) -> None:
        self._stop.set()
        self._slot.close()
        for thread in self._threads:
            thread.join(5.0)

    def process(self, frame: np.ndarray, now: float) -> list[Read]:
        """Decode one frame taken at ``now`` and return the scans it completes."""
        started = time.perf_counter()
        found = self.decoder.decode(frame)
        self.stats.decode_s += time.perf_counter() - started
        self.stats.decoded += 1
        reads = []
        for sighting in self.agreement.frame(((f.symbology, f.content) for f in found), now):
            symbology, content = sighting.key
            reads.append(
                Read(
                    symbology.encode("ascii") + content,
                    self.kind,
                    self.source_id,
                    symbology=symbology,
                    t_first=sighting.t_first,
                    t_last=sighting.t_last,
                    movement=self.movement,
                    scanner=self.name,
                )
            )
        self.stats.reads += len(reads)
        return reads

    def _capture(self) -> None:
        failures = 0
        try:
            while not self._stop.is_set():
                try:
                    for frame in self.frames.frames(self._stop):
                        self.last_frame_at = time.monotonic()
                        self._slot.put(frame, self.last_frame_at)
                        failures = 0
                except CameraUnavailable as problem:
                    log.error("camera %s cannot start: %s", self.name, problem)
                    return
                except Exception as problem:
                    wait = RETRY_S[min(failures, len(RETRY_S) - 1)]
                    failures += 1
                    log.error("camera %s failed: %s; opening it again in %.0f s", self.name, problem, wait)
                    self._stop.wait(wait)
                    continue
                if self._stop.is_set() or getattr(self.frames, "finite", False):
                    return  # stopped, or a replay that ended has ended for good
                log.warning("camera %s stopped delivering frames; opening it again", self.name)
                self._stop.wait(RETRY_S[0])
        finally:
            self._slot.close()

    def _decode_latest(self) -> None:
        errors = 0
        try:
            while (taken := self._slot.take()) is not None:
                _, now, frame = taken
                try:
                    for read in self.process(frame, now):
                        self._submit(read)
                except Exception:
                    # Nothing raises out of this thread: one bad frame must not end the camera.
                    errors += 1
                    if errors == 1 or errors % 1000 == 0:
                        log.exception("camera %s: decoding a frame failed (%d so far)", self.name, errors)
        finally:
            if not self._stop.is_set() and getattr(self.frames, "finite", False):
                log.info(
                    "camera %s: images replayed: %d frames, %d decoded, %d dropped, %d scans",
                    self.name,
                    self.stats.captured,
                    self.stats.decoded,
                    self.stats.dropped,
                    self.stats.reads,
                )
                self.done.set()
