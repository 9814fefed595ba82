"""How fast the camera source decodes, against a bare zxing-cpp call on the same frames.

    .venv/bin/python bench/camera.py [--seconds 8]

For 640x480 and 1280x720 frames made with zxing-cpp (trace codes in Code 128,
GS1 DataMatrix, empty frames, all blurred and noisy) it prints:

- bare: ``zxingcpp.read_barcodes`` in a loop, with the camera's default options;
- source: the same frames through :class:`agent.sources.camera.CameraSource`
  (capture thread, one-frame slot, decoder thread, agreement, Read objects),
  with a capture that delivers the next frame as soon as the decoder takes
  one, so every frame is decoded once and none wait for the camera;
- ratio: source time per frame / bare time per frame (target <= 1.1);
- free-running: a capture faster than the decoder, as a real camera often is:
  frames decoded per second and how many were dropped (latest frame wins);
- for 640x480, bare fps with zxing-cpp's own defaults (rotate, downscale and
  invert all on), to show what the camera's defaults save.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import zxingcpp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.sources.camera import CameraSource  # noqa: E402
from agent.sources.camera.barcodes import FrameDecoder  # noqa: E402
from bench.machine import describe  # noqa: E402
from tests.support.frames import Frame, code128, gs1_datamatrix  # noqa: E402

SIZES = ((640, 480), (1280, 720))
ROUNDS = 4


def test_frames(width: int, height: int, count: int = 30) -> list:
    """A third trace codes in Code 128, a third GS1 DataMatrix, a third nothing."""
    scale = 2 if width <= 640 else 3
    frames = []
    for n in range(count):
        frame = Frame(width, height, seed=n)
        centre = (width // 2 + (n % 5) * 7, height // 2 - (n % 3) * 9)
        if n % 3 == 0:
            digits = f"8{n:019d}"
            frame.place(code128(digits, scale=scale), at=centre, angle=(n % 11) - 5)
        elif n % 3 == 1:
            frame.place(gs1_datamatrix(f"(01)04012345678901(21)SN{n:05d}", scale=scale + 3), at=centre, angle=n * 7)
        frame.blur(0.7).noise(5)
        frames.append(frame.luma())
    return frames


def bare(frames: list, seconds: float, **options) -> tuple[float, int]:
    """Seconds per frame of a bare read_barcodes loop, and how many codes it found per pass."""
    found = sum(len(zxingcpp.read_barcodes(f, **options)) for f in frames)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for frame in frames:
            zxingcpp.read_barcodes(frame, **options)
        done += len(frames)
    return (time.perf_counter() - started) / done, found


class Replay:
    """Frames from memory, forever, until stopped; in lockstep with the decoder or free-running."""

    finite = False

    def __init__(self, frames: list, lockstep: bool) -> None:
        self.pictures = frames
        self.lockstep = lockstep
        self.taken = threading.Semaphore(1)

    def frames(self, stop: threading.Event):
        n = 0
        while not stop.is_set():
            if self.lockstep:
                self.taken.acquire()
            else:
                time.sleep(0.0005)  # a camera faster than any decoder here
            yield self.pictures[n % len(self.pictures)]
            n += 1


class SignallingDecoder(FrameDecoder):
    """The camera's decoder, telling the lockstep replay that its frame was taken."""

    replay: Replay | None = None

    def decode(self, frame):
        if self.replay is not None:
            self.replay.taken.release()
        return super().decode(frame)


def through_source(frames: list, seconds: float, lockstep: bool) -> tuple[float, CameraSource]:
    """Seconds per decoded frame through a running CameraSource."""
    replay = Replay(frames, lockstep)
    decoder = SignallingDecoder()
    decoder.replay = replay if lockstep else None
    camera = CameraSource(replay, decoder=decoder, name="bench")
    reads = []
    camera.start(reads.append)
    time.sleep(0.3)  # warm up
    first, started = camera.stats.decoded, time.perf_counter()
    time.sleep(seconds)
    decoded, elapsed = camera.stats.decoded - first, time.perf_counter() - started
    camera.stop()
    return elapsed / max(decoded, 1), camera


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="measuring time per figure")
    args = parser.parse_args()
    print(f"# bench/camera.py  {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(f"# {describe()}, zxing-cpp {version('zxing-cpp')}")
    print()
    print("| frames | bare fps | bare ms/frame | source fps | source ms/frame | ratio | free-running fps | dropped |")
    print("|---|---|---|---|---|---|---|---|")
    defaults = FrameDecoder().options
    for width, height in SIZES:
        frames = test_frames(width, height)
        # Bare and source take turns, so load from other work on the machine falls on both alike.
        bare_s = source_s = 0.0
        for _ in range(ROUNDS):
            seconds, found = bare(frames, args.seconds / ROUNDS, **defaults)
            bare_s += seconds / ROUNDS
            source_s += through_source(frames, args.seconds / ROUNDS, lockstep=True)[0] / ROUNDS
        free_s, free = through_source(frames, args.seconds, lockstep=False)
        dropped = free.stats.dropped / max(free.stats.captured, 1)
        print(
            f"| {width}x{height} ({found}/{len(frames) * 2 // 3} codes found) | {1 / bare_s:.0f} | {bare_s * 1000:.2f} "
            f"| {1 / source_s:.0f} | {source_s * 1000:.2f} | {source_s / bare_s:.3f} "
            f"| {1 / free_s:.0f} | {dropped:.0%} |"
        )
    frames = test_frames(640, 480)
    everything = dict(defaults, try_downscale=True, try_invert=True)
    all_on_s, found = bare(frames, args.seconds, **everything)
    print()
    print(
        f"640x480 bare with rotate+downscale+invert on (zxing-cpp defaults): "
        f"{1 / all_on_s:.0f} fps, {all_on_s * 1000:.2f} ms/frame ({found} codes found)"
    )


if __name__ == "__main__":
    main()
