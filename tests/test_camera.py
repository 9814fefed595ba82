"""The camera source on frames made from real barcodes (zxingcpp.create_barcode) on larger, degraded canvases."""

from __future__ import annotations

import importlib.util
import logging
import threading
import time

import numpy as np
import pytest

from agent import codes
from agent.sources.camera import CameraSource
from agent.sources.camera.agreement import Agreement
from agent.sources.camera.barcodes import FrameDecoder
from agent.sources.camera.frames import ImageFiles, Picamera2Frames
from tests.support.frames import Frame, barcode, blank, code128, gs1_datamatrix, save_frames
from tests.support.net import wait_until

TRACE = "81234567890123456789"
OTHER = "81234567890000000017"
GS1 = "(01)04012345678901(21)ABC123XYZ(17)261231(10)LOT42"


def trace_frame(digits: str = TRACE, angle: float = 0.0, seed: int = 0) -> np.ndarray:
    return Frame(seed=seed).place(code128(digits), at=(320, 240), angle=angle).blur(0.8).noise(6).luma()


def feed(camera: CameraSource, frames: list[np.ndarray], start: float = 0.0, fps: float = 30.0) -> list:
    """Frames decoded one after another, ``fps`` apart, as the decoder thread would; every read."""
    reads = []
    for n, frame in enumerate(frames):
        reads += camera.process(frame, now=start + n / fps)
    return reads


@pytest.mark.parametrize(
    ("angle", "blur", "noise", "contrast"),
    [
        (0, 0, 2, (0, 255)),
        (8, 0.8, 6, (0, 255)),
        (-12, 1.0, 8, (0, 255)),
        (88, 0.8, 6, (0, 255)),
        (183, 0.6, 6, (0, 255)),
        (5, 0.8, 5, (90, 160)),  # dim and washed out
    ],
)
def test_code128_trace_code_decodes_from_a_degraded_frame(angle, blur, noise, contrast):
    frame = Frame().place(code128(TRACE), at=(330, 250), angle=angle).contrast(*contrast).blur(blur).noise(noise)
    found = FrameDecoder().decode(frame.luma())
    assert [(f.symbology, f.content) for f in found] == [("]C0", TRACE.encode())]
    parsed = codes.parse(found[0].raw)
    assert (parsed.kind, parsed.code, parsed.symbology) == ("nmpa20", TRACE, "]C0")


@pytest.mark.parametrize("angle", [0, 33, 90, 147])
def test_gs1_datamatrix_decodes_with_gs_separators_and_parses_as_gs1(angle):
    frame = Frame(seed=angle).place(gs1_datamatrix(GS1), at=(200, 300), angle=angle)
    found = FrameDecoder().decode(frame.contrast(60, 190).blur(0.8).noise(5).luma())
    assert len(found) == 1
    assert found[0].symbology == "]d2"
    assert found[0].content == b"010401234567890121ABC123XYZ\x1d17261231" + b"10LOT42"
    parsed = codes.parse(found[0].raw, accept_gs1=True)
    assert parsed.valid, parsed
    assert (parsed.kind, parsed.code, parsed.expiry, parsed.lot) == (
        "gs1",
        "(01)04012345678901(21)ABC123XYZ",
        "261231",
        "LOT42",
    )
    assert codes.parse(found[0].raw).reason == "gs1_not_accepted"


def test_plain_datamatrix_says_d1_and_ean13_says_e0():
    frame = Frame().place(barcode(TRACE, "DataMatrix", scale=5), at=(160, 240), angle=20)
    frame.place(barcode("6901234567892", "EAN13", scale=2), at=(460, 240))
    decoder = FrameDecoder(("Code128", "DataMatrix", "EAN13"))
    found = {(f.symbology, f.content) for f in decoder.decode(frame.noise(4).luma())}
    assert found == {("]d1", TRACE.encode()), ("]E0", b"6901234567892")}


def test_formats_limit_what_is_decoded():
    frame = Frame().place(barcode("6901234567892", "EAN13", scale=2), at=(320, 240)).luma()
    assert FrameDecoder().decode(frame) == []  # default: Code 128 and DataMatrix only
    assert len(FrameDecoder(("EAN13",)).decode(frame)) == 1


def test_roi_looks_only_inside_the_region():
    frame = Frame().place(code128(TRACE), at=(480, 240)).luma()  # right half
    assert FrameDecoder(roi=(0.5, 0.0, 0.5, 1.0)).decode(frame)[0].content == TRACE.encode()
    assert FrameDecoder(roi=(0.0, 0.0, 0.5, 1.0)).decode(frame) == []


def test_a_code_in_one_frame_only_is_not_a_scan():
    camera = CameraSource(None)
    frames = [blank()] * 5 + [trace_frame()] + [blank()] * 40
    assert feed(camera, frames) == []
    assert camera.stats.decoded == 46


def test_a_code_seen_twice_but_further_apart_than_the_window_is_not_a_scan():
    camera = CameraSource(None, agreement=Agreement(agree_frames=2, agree_window_s=0.5))
    assert camera.process(trace_frame(), now=0.0) == []
    assert camera.process(trace_frame(seed=1), now=2.0) == []
    assert len(camera.process(trace_frame(seed=2), now=2.1)) == 1


def test_a_code_held_for_100_frames_is_one_scan():
    camera = CameraSource(None, name="cart-3", movement="use")
    frames = [trace_frame(angle=(n % 7) - 3, seed=n) for n in range(100)]
    reads = feed(camera, frames, start=10.0)
    assert len(reads) == 1
    read = reads[0]
    assert read.raw == b"]C0" + TRACE.encode()
    assert (read.symbology, read.source_kind, read.source_id) == ("]C0", "camera", "camera:cart-3")
    assert (read.scanner, read.movement) == ("cart-3", "use")
    assert (read.t_first, read.t_last) == (10.0, 10.0 + 1 / 30)


def test_removed_and_shown_again_is_a_second_scan_but_a_short_gap_is_not():
    camera = CameraSource(None, agreement=Agreement(rearm_frames=10, rearm_s=5.0))
    held = [trace_frame(seed=n) for n in range(5)]
    assert len(feed(camera, held + [blank()] * 9 + held, start=0.0)) == 1  # out of view for 9 frames: same scan
    assert len(feed(camera, [blank()] * 10 + held, start=10.0)) == 1  # out for 10 frames: a new scan


def test_absence_for_rearm_s_rearms_even_within_rearm_frames():
    camera = CameraSource(None, agreement=Agreement(rearm_frames=1000, rearm_s=1.0))
    assert len(feed(camera, [trace_frame(), trace_frame(seed=1)], start=0.0)) == 1
    assert camera.process(blank(), now=1.5) == []
    assert len(feed(camera, [trace_frame(seed=2), trace_frame(seed=3)], start=1.6)) == 1


def test_two_codes_in_one_frame_are_two_scans():
    def both(seed):
        frame = Frame(seed=seed).place(code128(TRACE), at=(200, 120), angle=4)
        return frame.place(gs1_datamatrix(GS1), at=(420, 340), angle=25).blur(0.7).noise(5).luma()

    camera = CameraSource(None)
    reads = feed(camera, [both(n) for n in range(20)])
    assert sorted(r.symbology for r in reads) == ["]C0", "]d2"]
    assert {codes.parse(r.raw, accept_gs1=True).kind for r in reads} == {"nmpa20", "gs1"}


class NumberedFrames:
    """Frames as fast as they can be made; each carries its number in its first pixels."""

    finite = True

    def __init__(self, count: int) -> None:
        self.count = count
        self.picture = trace_frame()

    def frames(self, stop):
        for n in range(1, self.count + 1):
            if stop.is_set():
                return
            frame = self.picture.copy()
            frame[0, 0], frame[0, 1] = n // 256, n % 256
            time.sleep(0.001)  # a camera faster than the decoder, but not a busy loop
            yield frame


class SlowDecoder(FrameDecoder):
    """The real decoder, made slow; notes how far behind the camera each frame it takes is."""

    def __init__(self, camera_stats=None):
        super().__init__()
        self.camera_stats = camera_stats
        self.behind: list[int] = []

    def decode(self, frame):
        number = int(frame[0, 0]) * 256 + int(frame[0, 1])
        self.behind.append(self.camera_stats.captured - number)
        time.sleep(0.03)
        return super().decode(frame)


def test_a_slow_decoder_drops_frames_and_always_takes_the_latest():
    decoder = SlowDecoder()
    camera = CameraSource(NumberedFrames(400), decoder=decoder)
    decoder.camera_stats = camera.stats
    reads = []
    camera.start(reads.append)
    assert camera.done.wait(30)
    camera.stop()
    stats = camera.stats
    assert stats.captured == 400
    assert stats.max_backlog <= 1
    assert stats.dropped > 0
    assert stats.decoded + stats.dropped == stats.captured  # every frame decoded or dropped, none queued
    # The frame taken was the newest, or one arrived between taking it and looking.
    assert max(decoder.behind) <= 1
    assert len(reads) == 1


def test_images_backend_replays_a_directory_in_name_order_and_skips_a_bad_file(tmp_path, caplog):
    for n in range(3):
        Frame(seed=n).place(code128(TRACE), at=(320, 240)).save(tmp_path / f"{n:03}.png")
    (tmp_path / "001b.png").write_bytes(b"not a png")
    (tmp_path / "notes.txt").write_text("ignored")
    stop = threading.Event()
    with caplog.at_level(logging.WARNING):
        frames = list(ImageFiles(tmp_path, fps=0, loop=False).frames(stop))
    assert len(frames) == 3
    assert all(f.ndim == 2 and f.dtype == np.uint8 and f.shape == (480, 640) for f in frames)
    assert "001b.png" in caplog.text
    assert [p.name for p in ImageFiles(str(tmp_path / "00[02].png")).paths()] == ["000.png", "002.png"]


def test_images_backend_loops_until_stopped(tmp_path):
    Frame().save(tmp_path / "a.png")
    stop = threading.Event()
    frames = ImageFiles(tmp_path, fps=0, loop=True).frames(stop)
    assert len([next(frames) for _ in range(5)]) == 5
    stop.set()
    assert list(frames) == []


def test_camera_source_on_images_submits_reads_and_ends(tmp_path):
    # Each code held for 10 frames, so a busy machine that drops some still agrees on two.
    pictures = [trace_frame(seed=n) for n in range(10)] + [blank()] * 3
    pictures += [Frame(seed=n).place(gs1_datamatrix(GS1), at=(300, 200), angle=15).noise(4).luma() for n in range(10)]
    save_frames(tmp_path, pictures)
    camera = CameraSource(ImageFiles(tmp_path, fps=30, loop=False), name="dock")
    reads = []
    camera.start(reads.append)
    assert camera.done.wait(30)
    camera.stop()
    assert [r.symbology for r in reads] == ["]C0", "]d2"]
    assert camera.stats.captured == len(pictures)


def test_images_backend_with_no_files_ends_with_a_clear_log(tmp_path, caplog):
    camera = CameraSource(ImageFiles(tmp_path / "nothing-*.png", loop=True))
    with caplog.at_level(logging.ERROR):
        camera.start(lambda read: None)
        assert camera.done.wait(10)
    camera.stop()
    assert "no image files" in caplog.text


@pytest.mark.skipif(importlib.util.find_spec("picamera2") is not None, reason="picamera2 is installed here")
def test_picamera2_missing_names_the_apt_package_and_does_not_crash(caplog):
    camera = CameraSource(Picamera2Frames(0), name="pi")
    with caplog.at_level(logging.ERROR):
        camera.start(lambda read: None)
    camera.stop()
    assert "python3-picamera2" in caplog.text
    assert "camera pi cannot start" in caplog.text
    assert not camera.done.is_set()  # a camera never ends by itself


def test_a_decoder_that_raises_is_logged_and_the_camera_keeps_going(caplog):
    class Flaky(FrameDecoder):
        calls = 0

        def decode(self, frame):
            Flaky.calls += 1
            if Flaky.calls <= 3:
                raise RuntimeError("zxing hiccup")
            return super().decode(frame)

    camera = CameraSource(NumberedFrames(60), decoder=Flaky())
    reads = []
    with caplog.at_level(logging.ERROR):
        camera.start(reads.append)
        assert camera.done.wait(30)
    camera.stop()
    assert "zxing hiccup" in caplog.text
    assert len(reads) == 1


class FailingCamera:
    """A camera that fails (as when unplugged) after a few frames the first time it is opened."""

    finite = False

    def __init__(self) -> None:
        self.opened = 0
        self.picture = trace_frame()

    def frames(self, stop):
        self.opened += 1
        for _ in range(3 if self.opened == 1 else 1000):
            if stop.is_set():
                return
            time.sleep(0.005)
            yield self.picture
        if self.opened == 1:
            raise OSError("camera unplugged")


def test_a_camera_that_fails_is_logged_and_opened_again(caplog):
    failing = FailingCamera()
    camera = CameraSource(failing)
    reads = []
    with caplog.at_level(logging.ERROR):
        camera.start(reads.append)
        wait_until(lambda: failing.opened == 2 and camera.stats.decoded > 10, timeout=20, what="camera reopened")
    camera.stop()
    assert "camera camera failed: camera unplugged; opening it again in 1 s" in caplog.text
    assert not camera.done.is_set()
    assert camera.stats.captured > 3  # frames flow again after the reopen
    assert len(reads) == 1  # the pack stayed in view across the failure: still one scan
