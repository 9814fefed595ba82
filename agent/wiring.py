"""One table of what each scanner kind is made of, and the factories for sources and sinks.

A ``[[scanners]]`` kind is three things kept together in :data:`SCANNER_KINDS`:
the reader of its config keys, the constructor of its source, and the
presence check ``scan-agent doctor`` runs. The runner, doctor and config all
look a kind up here; none keeps a dispatch of its own. A kind's libraries
(pyserial, evdev, numpy and zxing-cpp) are imported only when a config uses it.

>>> sorted(SCANNER_KINDS)
['camera', 'hid', 'serial', 'stdin']
>>> from agent.config import StdinScannerConfig
>>> make_source(StdinScannerConfig(name="console")).name
'console'
"""

from __future__ import annotations

import glob
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from agent import config
from agent.config import ConfigError, FeedbackConfig, ScannerConfig, Table
from agent.ops.checks import Check, device_present
from agent.read import Read
from agent.sinks.feedback import ConsoleFeedback, Feedback, NoFeedback

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from agent.pipeline import Pipeline
    from agent.sinks.api import LocalApi
    from agent.sinks.feedback import Feedback
    from agent.sinks.uplink import Uplink
    from agent.sinks.wedge import Wedge
    from agent.station import Station


@dataclass(frozen=True)
class ScannerKind:
    """Everything the agent knows about one kind of scanner."""

    #: reads the kind's own keys of one ``[[scanners]]`` table (``t``, name, movement)
    read_config: Callable[[Table, str, str | None], ScannerConfig]
    #: the source for one entry; ``stdin`` is the stream a stdin scanner reads
    make_source: Callable[[Any, BinaryIO | None], Any]
    #: doctor's check that the entry's device is there
    check_present: Callable[[Any], Check]


def _stdin_source(scanner: Any, stdin: BinaryIO | None) -> Any:
    from agent.sources.stdin import StdinSource

    return StdinSource.from_config(scanner, stdin)


def _serial_source(scanner: Any, stdin: BinaryIO | None) -> Any:
    from agent.sources.serial import SerialSource  # pyserial only for a serial scanner

    return SerialSource.from_config(scanner)


def _hid_source(scanner: Any, stdin: BinaryIO | None) -> Any:
    from agent.sources.hid import HidSource  # evdev only for a HID scanner

    return HidSource.from_config(scanner)


def _camera_source(scanner: Any, stdin: BinaryIO | None) -> Any:
    from agent.sources.camera import CameraSource  # numpy and zxing-cpp only for a camera

    return CameraSource.from_config(scanner)


def stdin_present(scanner) -> Check:
    # Always there; but under systemd stdin is empty, so an agent whose only
    # scanner is stdin ends at once: worth a warning on a kiosk.
    return Check(
        f"scanner {scanner.name}",
        "warn",
        "standard input: fine from a terminal, but under systemd it is empty and the agent stops at once",
        "name the kiosk's scanner under [[scanners]] (device /dev/scanner/..., see hardware.md)",
    )


def serial_present(scanner) -> Check:
    matches = sorted(glob.glob(scanner.port)) if glob.has_magic(scanner.port) else [scanner.port]
    return device_present(
        f"scanner {scanner.name}",
        matches[0] if matches else scanner.port,
        "plug the scanner in and set it to USB serial (CDC) mode (scripts/config-sheet); check `ls /dev/serial/by-id/`",
    )


def hid_present(scanner, input_dir: str = "/dev/input") -> Check:
    from agent.sources.hid import DeviceMatch, EvdevDevice  # evdev only for a HID scanner

    match = DeviceMatch.from_config(scanner)
    seen = []
    for node in sorted(Path(input_dir).glob("event*")):
        try:
            device = EvdevDevice(str(node))
        except Exception:  # not readable, or not an input device: not ours either way
            continue
        try:
            if match.matches(device.info):
                return Check(f"scanner {scanner.name}", "ok", f"{node}: {device.info.name} ({device.info.identity})")
            seen.append(device.info.name)
        finally:
            device.close()
    others = f"; keyboards here: {', '.join(seen)}" if seen else ""
    return Check(
        f"scanner {scanner.name}",
        "fail",
        f"no input device matches {match}{others}",
        "plug the scanner in; compare its ids with `cat /proc/bus/input/devices` and the [[scanners]] selectors",
    )


def camera_present(scanner) -> Check:
    name = f"scanner {scanner.name}"
    if scanner.backend == "images":
        files = sorted(glob.glob(str(Path(scanner.path) / "*") if Path(scanner.path).is_dir() else scanner.path))
        if files:
            return Check(name, "ok", f"{len(files)} image files at {scanner.path}")
        return Check(name, "fail", f"no image files at {scanner.path}", "point [[scanners]] path at frames to replay")
    try:
        import picamera2  # noqa: F401
    except ImportError:
        return Check(name, "fail", "picamera2 is not installed", "sudo apt install python3-picamera2 (see install.sh)")
    nodes = glob.glob("/dev/video*") + glob.glob("/dev/media*")
    if nodes:
        return Check(name, "ok", f"camera devices: {', '.join(sorted(nodes)[:3])}")
    return Check(name, "fail", "no /dev/video* or /dev/media* device", "check the camera ribbon; `rpicam-hello --list`")


#: kind -> its config reader, source and presence check.
SCANNER_KINDS: dict[str, ScannerKind] = {
    "stdin": ScannerKind(config.read_stdin_scanner, _stdin_source, stdin_present),
    "camera": ScannerKind(config.read_camera_scanner, _camera_source, camera_present),
    "hid": ScannerKind(config.read_hid_scanner, _hid_source, hid_present),
    "serial": ScannerKind(config.read_serial_scanner, _serial_source, serial_present),
}


def make_source(scanner: ScannerConfig, stdin: BinaryIO | None = None) -> Any:
    """The source object for one ``[[scanners]]`` entry."""
    return SCANNER_KINDS[scanner.kind].make_source(scanner, stdin)


def make_feedback(feedback: FeedbackConfig) -> Feedback:
    """The operator's feedback for a ``[feedback]`` table: terminal, GPIO pins or none."""
    if feedback.backend == "console":
        return ConsoleFeedback()
    if feedback.backend == "gpio":
        from agent.sinks.gpio import GpioFeedback  # gpiozero only where it is used

        try:
            return GpioFeedback(feedback)
        except Exception as problem:  # gpiozero: no pin factory here, pin in use, ...
            raise ConfigError(f'[feedback] backend = "gpio": cannot drive the pins: {problem}') from problem
    return NoFeedback()


def make_ack_button(cfg: config.Config, station: Station, *, pin_factory=None):
    """The supervisor's acknowledge button on ``[documents] ack_pin`` (a gpiozero ``Button``), or None.

    Pressed, it lifts the station's lock; a press while not locked is logged and changes nothing.
    """
    pin = cfg.documents.ack_pin
    if pin is None:
        return None
    from gpiozero import Button

    def pressed() -> None:  # on gpiozero's thread: waits for the pipeline, never runs on it
        try:
            station.acknowledge({"by": "button"}, via="button", source_id=f"gpio:{pin}")
        except ValueError as problem:
            log.warning("acknowledge button: %s", problem)

    button = Button(pin, pull_up=True, bounce_time=0.05, pin_factory=pin_factory)
    button.when_pressed = pressed
    return button


def make_uplink(
    cfg: config.Config,
    pipeline: Pipeline,
    sources: list,
    *,
    station: Station | None = None,
    reload: Callable[[], dict],
    on_state: Callable[..., None] | None,
    on_conflict: Callable | None = None,
) -> Uplink:
    """The MQTT uplink for ``cfg``, added to the pipeline's sinks, with its command hooks
    (and, with ``[site] peers``, the site's other stations' events and ``on_conflict``)."""
    from agent.sinks.uplink import Uplink  # paho only when MQTT is on

    names = [s.name for s in cfg.scanners]
    uplink = Uplink(
        cfg.mqtt,
        db_path=cfg.ledger.path,
        device_id=cfg.station.device_id,
        site_id=cfg.station.site_id,
        set_context=pipeline.set_context,
        station=station,
        reload=reload,
        scanners=lambda: {n: s.present() for n, s in zip(names, sources, strict=True)},
        on_state=on_state,
        backlog_alert_s=cfg.feedback.backlog_alert_s,
        peers=cfg.peers,
        split_packs=cfg.codes.split_packs,
        on_conflict=on_conflict,
    )
    pipeline.sinks.append(uplink)
    return uplink


def make_conflict_handler(cfg: config.Config, pipeline: Pipeline, feedback: Feedback) -> Callable:
    """What a conflict with another station does here (called on ``uplink-peers``): the
    feedback's ``conflict`` pattern, and, if ``[documents] lock_on`` has ``conflict``, the
    station's lock, recorded on the pipeline thread (not waited for)."""
    lock = "conflict" in cfg.documents.lock_on

    def on_conflict(conflict) -> None:
        feedback.alarm("conflict")
        if lock:
            ledger = pipeline.ledger
            cause = {**conflict.record(), "alarm_id": conflict.alarm_id}
            read = Read(b"", source_kind="peers", source_id=conflict.peer["device_id"])
            pipeline.call(lambda: ledger.lock_for_conflict(cause, read=read))

    return on_conflict


def make_wedge(cfg: config.Config) -> Wedge | None:
    """The validated keyboard wedge for ``[wedge]`` (a uinput keyboard), or None when it is off."""
    if not cfg.wedge.enabled:
        return None
    from agent.sinks.wedge import Wedge  # evdev's uinput only where the wedge is on

    return Wedge.from_config(cfg.wedge)


def make_api(
    cfg: config.Config,
    pipeline: Pipeline,
    station: Station,
    sources: list,
    *,
    uplink: Uplink | None,
    feedback: Feedback,
) -> LocalApi:
    """The local HTTP API for ``[api]``, added to the pipeline's sinks (its stream hears each decision)."""
    from agent.sinks.api import LocalApi  # the HTTP library only where the API is on

    api = LocalApi.from_config(
        cfg, pipeline=pipeline, station=station, sources=sources, uplink=uplink, feedback=feedback
    )
    pipeline.sinks.append(api)
    return api
