"""A camera in the agent: its ``[[scanners]]`` config, and ``scan-agent run`` deciding codes seen in replayed frames."""

from __future__ import annotations

import json

import pytest

from agent.config import CameraScannerConfig, ConfigError, parse_toml
from agent.runner import Runner
from agent.sources.camera import CameraSource
from agent.sources.camera.frames import ImageFiles, Picamera2Frames
from tests.support.agent import run_agent
from tests.support.frames import Frame, barcode, blank, code128, gs1_datamatrix, save_frames

TRACE = "81234567890123456789"
GS1 = "(01)04012345678901(21)SN0001(17)271130"


def camera_config(body: str):
    return parse_toml(f'[[scanners]]\nkind = "camera"\nname = "cart"\n{body}')


def test_camera_defaults_are_the_fast_settings_for_trace_codes():
    (scanner,) = camera_config("").scanners
    assert scanner == CameraScannerConfig(name="cart")
    assert (scanner.backend, scanner.width, scanner.height, scanner.fps) == ("picamera2", 640, 480, 30.0)
    assert scanner.formats == ("Code128", "DataMatrix")
    assert (scanner.agree_frames, scanner.try_downscale, scanner.try_invert) == (2, False, False)


def test_every_camera_key_is_read():
    (scanner,) = camera_config(
        'backend = "images"\npath = "/srv/frames/*.png"\nloop = false\nfps = 15\nwidth = 1280\nheight = 720\n'
        'formats = ["Code128", "EAN13"]\nagree_frames = 3\nagree_window_s = 0.8\nrearm_frames = 12\nrearm_s = 2\n'
        "roi = [0.25, 0, 0.5, 1]\ntry_rotate = false\ntry_downscale = true\ntry_invert = true\n"
        'binarizer = "GlobalHistogram"\ncamera = 1\nmovement = "receive"\n'
    ).scanners
    assert scanner.path == "/srv/frames/*.png" and scanner.loop is False and scanner.fps == 15.0
    assert (scanner.width, scanner.height, scanner.formats) == (1280, 720, ("Code128", "EAN13"))
    assert (scanner.agree_frames, scanner.agree_window_s, scanner.rearm_frames, scanner.rearm_s) == (3, 0.8, 12, 2.0)
    assert scanner.roi == (0.25, 0.0, 0.5, 1.0)
    assert (scanner.try_rotate, scanner.try_downscale, scanner.try_invert) == (False, True, True)
    assert (scanner.binarizer, scanner.camera, scanner.movement) == ("GlobalHistogram", 1, "receive")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('backend = "opencv"', "backend: 'opencv' is not allowed; allowed: picamera2, images"),
        ('backend = "images"', "path: the images backend needs a directory or glob"),
        ('formats = ["Code128", "QR"]', "formats: 'QR' is not a zxing-cpp barcode format"),
        ("formats = []", "formats: [] is not allowed"),
        ("roi = [0.5, 0.5, 0.6, 0.2]", "roi: [0.5, 0.5, 0.6, 0.2] is not allowed; allowed: [x, y, width, height]"),
        ("agree_frames = 0", "agree_frames: 0 is not allowed; allowed: a whole number from 1 to 30"),
        ('binarizer = "Otsu"', "binarizer: 'Otsu' is not allowed; allowed: LocalAverage, GlobalHistogram"),
        ("fps = -1", "fps: -1.0 is not allowed"),
        ("exposure = 3", "exposure: unknown key; known keys here:"),
    ],
)
def test_bad_camera_keys_are_named(body, message):
    with pytest.raises(ConfigError) as caught:
        camera_config(body)
    assert message in str(caught.value)
    assert str(caught.value).startswith("[[scanners]] #1 ")


def test_runner_makes_a_camera_source_per_backend():
    cfg = camera_config('backend = "images"\npath = "/tmp/x"\nformats = ["EAN13"]\nroi = [0, 0, 0.5, 0.5]')
    source = Runner(cfg).make_source(cfg.scanners[0])
    assert isinstance(source, CameraSource) and isinstance(source.frames, ImageFiles)
    assert (source.source_id, source.decoder.roi) == ("camera:cart", (0.0, 0.0, 0.5, 0.5))
    pi = camera_config("width = 1280\nheight = 720\ncamera = 1")
    frames = Runner(pi).make_source(pi.scanners[0]).frames
    assert isinstance(frames, Picamera2Frames) and (frames.camera, frames.width, frames.height) == (1, 1280, 720)


def test_scan_agent_run_decides_codes_seen_by_a_camera_end_to_end(tmp_path):
    def held(picture, count):
        return [picture(n) for n in range(count)]

    def trace(n):
        return Frame(seed=n).place(code128(TRACE), at=(300 + n, 250), angle=6).blur(0.8).noise(6).luma()

    def gs1(n):
        return Frame(seed=n).place(gs1_datamatrix(GS1), at=(320, 240), angle=30 + n).noise(5).luma()

    def ean(n):
        return Frame(seed=n).place(barcode("6901234567892", "EAN13"), at=(320, 240)).noise(5).luma()

    gap = [blank()] * 6
    frames = held(trace, 10) + gap + held(gs1, 10) + gap + held(ean, 10) + gap + held(trace, 10)
    (tmp_path / "frames").mkdir()
    save_frames(tmp_path / "frames", frames)
    config = tmp_path / "agent.toml"
    config.write_text(
        f"""
[station]
movement = "dispense"
[codes]
accept_gs1 = true
double_read_window_s = 0
lifecycle = "off"  # the cart dispenses codes this ledger never received
[ledger]
path = "{tmp_path / "ledger.db"}"
[feedback]
backend = "none"
[[scanners]]
kind = "camera"
name = "cart"
backend = "images"
path = "{tmp_path / "frames"}"
loop = false
fps = 20
formats = ["Code128", "DataMatrix", "EAN13"]
rearm_frames = 3
agree_window_s = 2  # generous: a busy test machine may decode only a few of the frames
"""
    )
    run = run_agent("run", "--config", str(config), "--json", timeout=60)
    assert run.returncode == 0, run.stderr.decode()
    decisions = [json.loads(line) for line in run.stdout.decode().splitlines()]
    assert [(d["verdict"], d["reason"], d["kind"]) for d in decisions] == [
        ("accepted", None, "nmpa20"),
        ("accepted", None, "gs1"),
        ("rejected", "product_barcode", None),
        ("duplicate", "already_dispensed", "nmpa20"),
    ], run.stderr.decode()
    assert decisions[0]["code"] == TRACE and decisions[1]["code"] == "(01)04012345678901(21)SN0001"
    assert {d["source"] for d in decisions} == {"camera:cart"}
    assert "images replayed: 58 frames" in run.stderr.decode()
    export = run_agent("ledger", "export", "--db", str(tmp_path / "ledger.db"), "--format", "jsonl")
    rows = [json.loads(line) for line in export.stdout.decode().splitlines()]
    assert [row["symbology"] for row in rows] == ["]C0", "]d2", "]E0", "]C0"]
