"""The agent's configuration: TOML in, frozen dataclasses out, or a clear error.

>>> cfg = parse_toml('[station]\\nmovement = "receive"\\n')
>>> cfg.station.movement
'receive'
>>> parse_toml('[station]\\nmovement = "sell"\\n')
Traceback (most recent call last):
...
agent.config.ConfigError: [station] movement: 'sell' is not allowed; allowed: receive, dispense, ...
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.codes import REASONS
from agent.domain import DOCUMENT_KINDS, LEDGER_REASONS, LIFECYCLES, check_movement
from agent.sinks.patterns import (
    DEFAULT_LOOKS,
    DEFAULT_PATTERNS,
    PATTERN_NAMES,
    STATES,
    Pattern,
    Step,
    read_look,
    read_pattern,
)

DEFAULT_PATH = Path("/etc/scan-agent/agent.toml")
SYSTEM_LEDGER = Path("/var/lib/scan-agent/ledger.db")
FEEDBACK_BACKENDS = ("console", "gpio", "none")
BUZZER_KINDS = ("active", "tonal", "none")
MQTT_PROTOCOLS = ("5", "3.1.1")


class ConfigError(ValueError):
    """A config that the agent refuses to start with; the message names the key."""


@dataclass(frozen=True)
class StationConfig:
    device_id: str = "kiosk-0001"
    site_id: str = "site-01"
    movement: str = "dispense"
    operator: str = ""


@dataclass(frozen=True)
class CodesConfig:
    leading_digits: tuple[str, ...] = ("8",)
    accept_gs1: bool = False
    double_read_window_s: float = 2.0
    split_packs: dict[str, int] = field(default_factory=dict)
    #: Whether a code's history across movements at this site is checked (see agent.ledger.rules).
    lifecycle: str = "warn"


#: Trace codes no document pattern may match (a pattern that did would swallow scans).
_TRACE_SAMPLES = ("81234567890123456789", "89000000000000000001", "80000000000000000000", "(01)09501101530003(21)A1")


@dataclass(frozen=True)
class DocumentsConfig:
    """``[documents]``: how a document is opened, closed and locked from the scanner."""

    #: kind -> regex: scanning a barcode that matches (whole) opens a document of that kind.
    patterns: dict[str, str] = field(default_factory=dict)
    #: Scanning this closes the open document ("" = no such code).
    close_code: str = ""
    #: Scanning this lifts the station's lock ("" = no such code).
    ack_code: str = ""
    #: A supervisor's button (GPIO pin) that lifts the lock; None = no button.
    ack_pin: int | None = None
    #: An open document with no scan for this long is closed (0 = never).
    idle_close_s: float = 600.0
    #: Another document opened while one is open: close the open one, or refuse the new one.
    on_new: str = "close_previous"
    #: Verdicts and reasons that lock the station (inside a document) until acknowledged.
    lock_on: tuple[str, ...] = ("dispensed_before", "duplicate")


@dataclass(frozen=True)
class LedgerConfig:
    path: Path = SYSTEM_LEDGER
    #: A damaged ledger at start is moved aside; then "refuse" to run, or start a "new" one.
    on_corrupt: str = "refuse"


@dataclass(frozen=True)
class StdinScannerConfig:
    """Scans typed or piped on standard input, one per line."""

    name: str = "console"
    movement: str | None = None
    kind: str = "stdin"


@dataclass(frozen=True)
class CameraScannerConfig:
    """A camera whose frames zxing-cpp decodes (README "Camera" has every key)."""

    name: str = "camera"
    movement: str | None = None
    backend: str = "picamera2"
    path: str = ""
    camera: int = 0
    loop: bool = True
    fps: float = 30.0
    width: int = 640
    height: int = 480
    formats: tuple[str, ...] = ("Code128", "DataMatrix")
    agree_frames: int = 2
    agree_window_s: float = 0.5
    rearm_frames: int = 30
    rearm_s: float = 1.0
    roi: tuple[float, float, float, float] | None = None
    try_rotate: bool = True
    try_downscale: bool = False
    try_invert: bool = False
    binarizer: str = "LocalAverage"
    kind: str = "camera"


@dataclass(frozen=True)
class HidScannerConfig:
    """A USB keyboard-wedge scanner read through evdev, chosen by any of the selectors."""

    name: str = "hid"
    movement: str | None = None
    vendor_id: int | None = None
    product_id: int | None = None
    serial: str | None = None
    name_pattern: str | None = None
    path: str | None = None
    layout: str = "us"
    key_timeout_ms: int = 100
    tab_terminates: bool = False
    kind: str = "hid"


@dataclass(frozen=True)
class SerialScannerConfig:
    """A serial scanner (USB CDC or RS-232) on ``port``, a path or a glob."""

    port: str = ""
    name: str = "serial"
    movement: str | None = None
    baudrate: int = 9600
    bytesize: int = 8
    parity: str = "none"
    stopbits: float = 1
    terminator: str = "any"
    read_timeout_ms: int | None = None
    profile: str | None = None
    kind: str = "serial"


#: Every ``[[scanners]]`` entry is one of these; each has ``kind``, ``name`` and ``movement``.
ScannerConfig = StdinScannerConfig | HidScannerConfig | SerialScannerConfig | CameraScannerConfig


@dataclass(frozen=True)
class FeedbackConfig:
    """How decisions and device states are shown. Pins are BCM numbers (``gpio`` backend).

    ``patterns`` and ``states`` hold the defaults of :mod:`agent.sinks.patterns` with the
    config's own tables replacing whole entries. ``backlog_alert_s``: events older than
    this still undelivered show the ``backlog`` state.
    """

    backend: str = "console"
    green_pin: int = 23
    red_pin: int = 24
    amber_pin: int = 25
    buzzer_pin: int = 18
    buzzer: str = "active"
    active_high: bool = True
    buzzer_active_high: bool = True
    backlog_alert_s: float = 900.0
    patterns: dict[str, Pattern] = field(default_factory=lambda: dict(DEFAULT_PATTERNS))
    states: dict[str, dict[str, Step]] = field(default_factory=lambda: {k: dict(v) for k, v in DEFAULT_LOOKS.items()})


MQTT_TLS_PORT = 8883


@dataclass(frozen=True)
class MqttConfig:
    """The uplink to the regional broker (``[mqtt]``); see :mod:`agent.sinks.uplink`.

    ``port`` defaults to 1883, or :data:`MQTT_TLS_PORT` when the table sets ``tls = true``.
    ``hosts`` (``["host:port", ...]``), when set, replaces ``host``/``port``: the uplink
    connects to the first and, on a connection failure, tries the next (:meth:`endpoints`);
    ``host`` and ``port`` are then the first entry's.
    """

    enabled: bool = False
    host: str = "localhost"
    port: int = 1883
    hosts: tuple[tuple[str, int], ...] = ()
    protocol: str = "5"
    keepalive_s: int = 60
    tls: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    username: str = ""
    password_file: str = ""
    topic_prefix: str = "trace/v1"
    max_inflight: int = 100
    health_interval_s: float = 30.0
    backoff_max_s: float = 60.0
    #: The back end confirms what it stored on ``{p}/receipt``; events delivered but not
    #: covered by a receipt are sent again after ``receipt_timeout_s``.
    receipts: bool = False
    receipt_timeout_s: float = 60.0

    def endpoints(self) -> tuple[tuple[str, int], ...]:
        """The brokers to try in turn: ``hosts``, or ``host``/``port`` alone."""
        return self.hosts or ((self.host, self.port),)

    def password(self) -> str | None:
        """The password from ``password_file`` (a trailing newline is not part of it), or None.

        Raises :class:`OSError` if the file cannot be read.
        """
        if not self.password_file:
            return None
        return Path(self.password_file).read_text(encoding="utf-8").rstrip("\r\n")


@dataclass(frozen=True)
class ApiConfig:
    """The local HTTP API for the counter's POS or HIS (``[api]``); see :mod:`agent.sinks.api`.

    Off loopback it needs ``token_file``: a client then sends ``Authorization: Bearer <token>``.
    """

    enabled: bool = False
    bind: str = "127.0.0.1"
    port: int = 8765
    token_file: str = ""

    def token(self) -> str | None:
        """The token from ``token_file`` (surrounding whitespace is not part of it), or None.

        Raises :class:`OSError` if the file cannot be read.
        """
        if not self.token_file:
            return None
        return Path(self.token_file).read_text(encoding="utf-8").strip()


@dataclass(frozen=True)
class WedgeConfig:
    """The validated keyboard wedge (``[wedge]``); see :mod:`agent.sinks.wedge`.

    After the commit, each code whose verdict is in ``verdicts`` is typed into the
    host through a uinput keyboard named ``device_name``: ``prefix``, the code, ``suffix``.
    """

    enabled: bool = False
    verdicts: tuple[str, ...] = ("accepted",)
    suffix: str = "enter"
    prefix: str = ""
    layout: str = "us"
    key_delay_ms: float = 1.0
    device_name: str = "scan-agent wedge"


@dataclass(frozen=True)
class ReceivingConfig:
    """Receiving against the supplier's manifest (``[receiving]``); see :mod:`agent.ledger.manifests`.

    ``unexpected``: what a code not on a delivery's manifest gets, ``reject`` or ``flag`` (accepted, flagged).
    """

    unexpected: str = "reject"


@dataclass(frozen=True)
class SiteConfig:
    """``[site]``: the other stations of this site (``station.site_id``).

    ``peers``: subscribe to their events and count them in duplicate decisions
    (:mod:`agent.ledger.peers`). It takes effect only with ``[mqtt] enabled``; a
    config that leaves it out gets it on whenever MQTT is.
    """

    peers: bool = True


@dataclass(frozen=True)
class Config:
    station: StationConfig = field(default_factory=StationConfig)
    codes: CodesConfig = field(default_factory=CodesConfig)
    ledger: LedgerConfig = field(default_factory=LedgerConfig)
    documents: DocumentsConfig = field(default_factory=DocumentsConfig)
    scanners: tuple[ScannerConfig, ...] = (StdinScannerConfig(),)
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    wedge: WedgeConfig = field(default_factory=WedgeConfig)
    receiving: ReceivingConfig = field(default_factory=ReceivingConfig)
    site: SiteConfig = field(default_factory=SiteConfig)
    source: str = "built-in default"

    @property
    def peers(self) -> bool:
        """Whether the uplink takes the site's other stations' events (``[site] peers`` with MQTT on)."""
        return self.mqtt.enabled and self.site.peers


def user_ledger_path() -> Path:
    """Where the built-in default keeps its ledger: the user's data directory."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "scan-agent" / "ledger.db"


def builtin_default() -> Config:
    """Stdin scanner, console feedback, MQTT off, ledger in the user's data directory."""
    return Config(ledger=LedgerConfig(path=user_ledger_path()))


def load(path: str | Path | None = None) -> Config:
    """Read the config at ``path``; with none, ``/etc/scan-agent/agent.toml`` if it
    exists, else the built-in default."""
    if path is None:
        if not DEFAULT_PATH.exists():
            return builtin_default()
        path = DEFAULT_PATH
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as problem:
        raise ConfigError(f"{path}: cannot read: {problem.strerror or problem}") from problem
    except UnicodeDecodeError as problem:
        raise ConfigError(f"{path}: not UTF-8 text") from problem
    return parse_toml(text, source=str(path))


def with_overrides(config: Config, *, movement: str | None = None, db: str | None = None) -> Config:
    """The config with command-line overrides applied (``--movement``, ``--db``)."""
    from dataclasses import replace

    if movement is not None:
        config = replace(config, station=replace(config.station, movement=movement))
    if db is not None:
        config = replace(config, ledger=replace(config.ledger, path=Path(db)))
    return config


def parse_toml(text: str, source: str = "<string>") -> Config:
    """Parse and validate config text."""
    import tomllib  # only where a file is read: ``scan-agent check`` on the built-in default never is

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as problem:
        raise ConfigError(f"{source}: not valid TOML: {problem}") from problem
    top = Table("", data)
    config = Config(
        station=_station(top.table("station")),
        codes=_codes(top.table("codes")),
        ledger=_ledger(top.table("ledger")),
        documents=_documents(top.table("documents")),
        scanners=_scanners(top.array_of_tables("scanners")),
        feedback=_feedback(top.table("feedback")),
        mqtt=_mqtt(top.table("mqtt")),
        api=_api(top.table("api")),
        wedge=_wedge(top.table("wedge")),
        receiving=_receiving(top.table("receiving")),
        site=_site(top.table("site")),
        source=source,
    )
    top.finish()
    _check_topic_ids(config)
    _check_ack_pin(config)
    return config


def _station(t: Table) -> StationConfig:
    d = StationConfig()
    station = StationConfig(
        device_id=t.text("device_id", d.device_id, nonempty=True),
        site_id=t.text("site_id", d.site_id, nonempty=True),
        movement=t.movement("movement", d.movement),
        operator=t.text("operator", d.operator),
    )
    t.finish()
    return station


def _codes(t: Table) -> CodesConfig:
    d = CodesConfig()
    leading = t.get("leading_digits", list(d.leading_digits), list)
    if not leading or not all(isinstance(x, str) and len(x) == 1 and x.isdigit() for x in leading):
        t.fail("leading_digits", f'{leading!r} is not allowed; allowed: a non-empty list of single digits, e.g. ["8"]')
    packs = t.get("split_packs", {}, dict)
    for product, count in packs.items():
        if not (len(product) == 7 and product.isdigit()) and not (len(product) == 14 and product.isdigit()):
            t.fail(f"split_packs.{product}", "product id must be 7 digits (or a 14-digit GTIN)")
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            t.fail(f"split_packs.{product}", f"{count!r} is not allowed; allowed: a whole number >= 1")
    codes = CodesConfig(
        leading_digits=tuple(leading),
        accept_gs1=t.get("accept_gs1", d.accept_gs1, bool),
        double_read_window_s=t.number("double_read_window_s", d.double_read_window_s, low=0.0, high=60.0),
        split_packs=dict(packs),
        lifecycle=t.choice("lifecycle", d.lifecycle, LIFECYCLES),
    )
    t.finish()
    return codes


def _documents(t: Table) -> DocumentsConfig:
    d = DocumentsConfig()
    patterns = t.get("patterns", {}, dict)
    for kind, pattern in patterns.items():
        key = f"patterns.{kind}"
        if kind not in DOCUMENT_KINDS:
            t.fail(key, f"unknown document kind; allowed: {', '.join(DOCUMENT_KINDS)}")
        if not isinstance(pattern, str) or not pattern:
            t.fail(key, 'must be a regular expression, e.g. "^RX[0-9]{8}$"')
        try:
            compiled = re.compile(pattern)
        except re.error as problem:
            t.fail(key, f"not a regular expression: {problem}")
        matched = [code for code in _TRACE_SAMPLES if compiled.fullmatch(code)]
        if matched:
            t.fail(key, f"{pattern!r} matches the trace code {matched[0]}; a document pattern must not")
    codes = {}
    for key in ("close_code", "ack_code"):
        codes[key] = t.text(key, getattr(d, key))
        if codes[key] and (
            not codes[key].isprintable() or any(c.fullmatch(codes[key]) for c in map(re.compile, patterns.values()))
        ):
            t.fail(key, f"{codes[key]!r} must be printable and match no document pattern")
    if codes["close_code"] and codes["close_code"] == codes["ack_code"]:
        t.fail("ack_code", "must differ from close_code")
    ack_pin = t.get("ack_pin", None, int)
    if ack_pin is not None and not 0 <= ack_pin <= 27:
        t.fail("ack_pin", f"{ack_pin!r} is not allowed; allowed: a whole number from 0 to 27")
    lock_on = t.get("lock_on", list(d.lock_on), list)
    lockable = ("duplicate", "rejected", *(r for r in LEDGER_REASONS if r != "station_locked"), *REASONS)
    for name in lock_on:
        if name not in lockable:
            # A misspelt name would leave the station never locking, silently.
            t.fail("lock_on", f"{name!r} is not allowed; allowed: {', '.join(lockable)}")
    documents = DocumentsConfig(
        patterns=dict(patterns),
        ack_pin=ack_pin,
        idle_close_s=t.number("idle_close_s", d.idle_close_s, low=0.0, high=86400.0),
        on_new=t.choice("on_new", d.on_new, ("close_previous", "refuse")),
        lock_on=tuple(lock_on),
        **codes,
    )
    t.finish()
    return documents


def _ledger(t: Table) -> LedgerConfig:
    ledger = LedgerConfig(
        path=Path(t.text("path", str(SYSTEM_LEDGER), nonempty=True)),
        on_corrupt=t.choice("on_corrupt", "refuse", ("refuse", "new")),
    )
    t.finish()
    return ledger


def _scanners(tables: list[Table]) -> tuple[ScannerConfig, ...]:
    scanners = []
    # wiring's table holds each kind's reader; it imports this module, so it is looked up here.
    from agent.wiring import SCANNER_KINDS

    for t in tables:
        kind = t.choice("kind", "stdin", tuple(SCANNER_KINDS))
        name = t.text("name", f"scanner{len(scanners) + 1}", nonempty=True)
        movement = t.movement("movement", None)
        scanners.append(SCANNER_KINDS[kind].read_config(t, name, movement))
        t.finish()
    names = [s.name for s in scanners]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"[[scanners]] name: {name!r} is used twice; each scanner needs its own name")
    return tuple(scanners) if scanners else Config().scanners


def read_stdin_scanner(t: Table, name: str, movement: str | None) -> StdinScannerConfig:
    return StdinScannerConfig(name=name, movement=movement)


def read_camera_scanner(t: Table, name: str, movement: str | None) -> CameraScannerConfig:
    from agent.sources.camera.barcodes import BINARIZERS, format_flags  # zxing-cpp only when a camera is configured

    d = CameraScannerConfig()
    backend = t.choice("backend", d.backend, ("picamera2", "images"))
    path = t.text("path", d.path)
    if backend == "images" and not path.strip():
        t.fail("path", 'the images backend needs a directory or glob of image files, e.g. "/srv/frames/*.png"')
    formats = t.get("formats", list(d.formats), list)
    if not formats or not all(isinstance(f, str) for f in formats):
        t.fail(
            "formats",
            f'{formats!r} is not allowed; allowed: a non-empty list of zxing-cpp format names, e.g. ["Code128"]',
        )
    try:
        format_flags(formats)
    except ValueError as problem:
        t.fail("formats", f"{problem}; e.g. Code128, DataMatrix, EAN13, QRCode")
    roi = t.get("roi", None, list)
    if roi is not None:
        fractions = all(isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v <= 1 for v in roi)
        if len(roi) != 4 or not fractions or roi[2] <= 0 or roi[3] <= 0 or roi[0] + roi[2] > 1 or roi[1] + roi[3] > 1:
            t.fail(
                "roi",
                f"{roi!r} is not allowed; allowed: [x, y, width, height] as fractions of the frame, "
                "e.g. [0.25, 0.25, 0.5, 0.5]",
            )
        roi = tuple(float(v) for v in roi)
    return CameraScannerConfig(
        name=name,
        movement=movement,
        backend=backend,
        path=path,
        camera=t.integer("camera", d.camera, 0, 16),
        loop=t.get("loop", d.loop, bool),
        fps=t.number("fps", d.fps, low=0.0, high=240.0),
        width=t.integer("width", d.width, 64, 4096),
        height=t.integer("height", d.height, 64, 4096),
        formats=tuple(formats),
        agree_frames=t.integer("agree_frames", d.agree_frames, 1, 30),
        agree_window_s=t.number("agree_window_s", d.agree_window_s, low=0.0, high=10.0),
        rearm_frames=t.integer("rearm_frames", d.rearm_frames, 1, 100_000),
        rearm_s=t.number("rearm_s", d.rearm_s, low=0.0, high=3600.0),
        roi=roi,
        try_rotate=t.get("try_rotate", d.try_rotate, bool),
        try_downscale=t.get("try_downscale", d.try_downscale, bool),
        try_invert=t.get("try_invert", d.try_invert, bool),
        binarizer=t.choice("binarizer", d.binarizer, BINARIZERS),
    )


HID_LAYOUTS = ("us", "de", "fr")
SERIAL_TERMINATORS = ("cr", "lf", "crlf", "any")
SERIAL_PARITIES = ("none", "even", "odd")


def read_hid_scanner(t: Table, name: str, movement: str | None) -> HidScannerConfig:
    d = HidScannerConfig()
    path = t.get("path", None, str)
    if path is not None and re.fullmatch(r"/dev/input/event\d+", path):
        t.fail("path", f"{path!r} changes from boot to boot; use a /dev/input/by-id/... or by-path link")
    scanner = HidScannerConfig(
        name=name,
        movement=movement,
        vendor_id=_usb_id(t, "vendor_id"),
        product_id=_usb_id(t, "product_id"),
        serial=t.get("serial", None, str),
        name_pattern=t.get("name_pattern", None, str),
        path=path,
        layout=t.choice("layout", d.layout, HID_LAYOUTS),
        key_timeout_ms=t.integer("key_timeout_ms", d.key_timeout_ms, 5, 5000),
        tab_terminates=t.get("tab_terminates", d.tab_terminates, bool),
    )
    selectors = (scanner.vendor_id, scanner.product_id, scanner.serial, scanner.name_pattern, scanner.path)
    if all(x is None for x in selectors):
        t.fail(
            "kind",
            "a hid scanner needs at least one of vendor_id, product_id, serial, name_pattern, path"
            " (otherwise it would grab every keyboard)",
        )
    return scanner


def _usb_id(t: Table, key: str) -> int | None:
    value = t.get(key, None, int)
    if value is not None and not 0 <= value <= 0xFFFF:
        t.fail(key, f"{value!r} is not allowed; allowed: a USB id from 0 to 0xFFFF (write 0x1EAB in TOML)")
    return value


def read_serial_scanner(t: Table, name: str, movement: str | None) -> SerialScannerConfig:
    d = SerialScannerConfig()
    read_timeout = t.get("read_timeout_ms", None, int)
    if read_timeout is not None and not 1 <= read_timeout <= 60000:
        t.fail("read_timeout_ms", f"{read_timeout!r} is not allowed; allowed: a whole number from 1 to 60000")
    stopbits = t.get("stopbits", d.stopbits, float)
    if stopbits not in (1, 1.5, 2):
        t.fail("stopbits", f"{stopbits!r} is not allowed; allowed: 1, 1.5, 2")
    profile = t.get("profile", None, str)
    if profile is not None and not profile.strip():
        t.fail("profile", "must not be empty")
    return SerialScannerConfig(
        port=t.text("port", "", nonempty=True),
        name=name,
        movement=movement,
        baudrate=t.integer("baudrate", d.baudrate, 50, 4_000_000),
        bytesize=t.integer("bytesize", d.bytesize, 5, 8),
        parity=t.choice("parity", d.parity, SERIAL_PARITIES),
        stopbits=stopbits,
        terminator=t.choice("terminator", d.terminator, SERIAL_TERMINATORS),
        read_timeout_ms=read_timeout,
        profile=profile,
    )


def _feedback(t: Table) -> FeedbackConfig:
    d = FeedbackConfig()
    pins = {name: t.integer(f"{name}_pin", getattr(d, f"{name}_pin"), low=0, high=27) for name in _PINS}
    buzzer = t.choice("buzzer", d.buzzer, BUZZER_KINDS)
    used = [name for name in _PINS if name != "buzzer" or buzzer != "none"]
    for index, name in enumerate(used):
        twin = next((other for other in used[:index] if pins[other] == pins[name]), None)
        if twin is not None:
            t.fail(f"{name}_pin", f"GPIO {pins[name]} is also {twin}_pin; each device needs its own pin")
    buzzer_active_high = t.get("buzzer_active_high", d.buzzer_active_high, bool)
    if buzzer == "tonal" and not buzzer_active_high:
        t.fail("buzzer_active_high", "a tonal buzzer is driven by PWM through a transistor and must be active high")
    patterns = dict(d.patterns)
    table = t.table("patterns")
    for name in list(table.data):
        if name not in PATTERN_NAMES:
            table.fail(name, f"not a pattern; allowed: {', '.join(PATTERN_NAMES)}")
        patterns[name] = read_pattern(table.table(name))
    states = dict(d.states)
    table = t.table("states")
    for name in list(table.data):
        if name not in STATES:
            table.fail(name, f"not a device state; allowed: {', '.join(STATES)}")
        states[name] = read_look(table.table(name))
    feedback = FeedbackConfig(
        backend=t.choice("backend", "console", FEEDBACK_BACKENDS),
        buzzer=buzzer,
        active_high=t.get("active_high", d.active_high, bool),
        buzzer_active_high=buzzer_active_high,
        backlog_alert_s=t.number("backlog_alert_s", d.backlog_alert_s, low=1.0, high=7 * 86400.0),
        patterns=patterns,
        states=states,
        **{f"{name}_pin": pin for name, pin in pins.items()},
    )
    t.finish()
    return feedback


_PINS = ("green", "red", "amber", "buzzer")


def _mqtt(t: Table) -> MqttConfig:
    d = MqttConfig()
    tls = t.get("tls", d.tls, bool)
    # MQTT's registered ports: 8883 over TLS, 1883 without.
    default_port = MQTT_TLS_PORT if tls else d.port
    host = t.text("host", d.host, nonempty=True)
    port = t.integer("port", default_port, 1, 65535)
    hosts = _mqtt_hosts(t, default_port)
    if hosts:
        given = (host if "host" in t.data else hosts[0][0], port if "port" in t.data else hosts[0][1])
        if given != hosts[0]:
            t.fail("hosts", "set either hosts or host/port, not both (or host/port must be the first of hosts)")
        host, port = hosts[0]
    mqtt = MqttConfig(
        enabled=t.get("enabled", d.enabled, bool),
        host=host,
        port=port,
        hosts=hosts,
        protocol=t.choice("protocol", d.protocol, MQTT_PROTOCOLS),
        keepalive_s=t.integer("keepalive_s", d.keepalive_s, 5, 3600),
        tls=tls,
        ca_file=t.text("ca_file", d.ca_file),
        cert_file=t.text("cert_file", d.cert_file),
        key_file=t.text("key_file", d.key_file),
        username=t.text("username", d.username),
        password_file=t.text("password_file", d.password_file),
        topic_prefix=t.text("topic_prefix", d.topic_prefix, nonempty=True),
        max_inflight=t.integer("max_inflight", d.max_inflight, 1, 65535),
        health_interval_s=t.number("health_interval_s", d.health_interval_s, low=1.0, high=86400.0),
        backoff_max_s=t.number("backoff_max_s", d.backoff_max_s, low=1.0, high=3600.0),
        receipts=t.get("receipts", d.receipts, bool),
        receipt_timeout_s=t.number("receipt_timeout_s", d.receipt_timeout_s, low=1.0, high=86400.0),
    )
    prefix = mqtt.topic_prefix
    if any(c in prefix for c in "+#\0") or prefix.startswith("/") or prefix.endswith("/") or "//" in prefix:
        t.fail("topic_prefix", f"{prefix!r} is not allowed; allowed: topic levels without wildcards, e.g. trace/v1")
    if bool(mqtt.cert_file) != bool(mqtt.key_file):
        t.fail(
            "cert_file" if not mqtt.cert_file else "key_file", "cert_file and key_file go together: set both or none"
        )
    if (mqtt.ca_file or mqtt.cert_file) and not mqtt.tls:
        t.fail("tls", "ca_file/cert_file/key_file are set but tls = false; set tls = true (or remove them)")
    if mqtt.password_file and not mqtt.username:
        t.fail("password_file", "is set but username is empty; set username too")
    if mqtt.enabled:
        for key in ("ca_file", "cert_file", "key_file", "password_file"):
            path = getattr(mqtt, key)
            if path and not Path(path).is_file():
                t.fail(key, f"{path!r}: no such file")
    t.finish()
    return mqtt


def _mqtt_hosts(t: Table, default_port: int) -> tuple[tuple[str, int], ...]:
    """``[mqtt] hosts``: ``"host:port"`` (``"[v6]:port"``; the port may be left out) each."""
    entries = t.get("hosts", [], list)
    if "hosts" in t.data and not entries:
        t.fail("hosts", "must not be empty; leave it out to use host and port")
    hosts: list[tuple[str, int]] = []
    for n, entry in enumerate(entries, 1):
        where = f"entry {n} ({entry!r})"
        if not isinstance(entry, str):
            t.fail("hosts", f'{where} is not allowed; allowed: a string "host:port"')
        host, port_text = entry, ""
        if entry.startswith("["):  # [2001:db8::1]:1883
            host, _, rest = entry[1:].partition("]")
            if rest and not rest.startswith(":"):
                t.fail("hosts", f"{where}: write an IPv6 address as [address]:port")
            port_text = rest[1:]
        elif entry.count(":") == 1:
            host, port_text = entry.split(":")
        elif ":" in entry:
            t.fail("hosts", f"{where}: write an IPv6 address as [address]:port")
        if not host.strip() or any(c.isspace() for c in host):
            t.fail("hosts", f"{where}: the host name is empty or has spaces")
        port = default_port
        if port_text or entry.endswith(":"):
            if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
                t.fail("hosts", f"{where}: the port must be a whole number from 1 to 65535")
            port = int(port_text)
        if (host, port) in hosts:
            t.fail("hosts", f"{where}: listed twice")
        hosts.append((host, port))
    return tuple(hosts)


LOOPBACK = ("127.0.0.1", "::1", "localhost")
WEDGE_SUFFIXES = ("enter", "tab", "none")
WEDGE_LAYOUTS = ("us", "de", "fr")


def _api(t: Table) -> ApiConfig:
    d = ApiConfig()
    api = ApiConfig(
        enabled=t.get("enabled", d.enabled, bool),
        bind=t.text("bind", d.bind, nonempty=True),
        port=t.integer("port", d.port, 1, 65535),
        token_file=t.text("token_file", d.token_file),
    )
    if api.enabled and api.bind not in LOOPBACK and not api.token_file:
        # Anyone on the counter's network could open documents and void scans.
        t.fail("token_file", f"bind = {api.bind!r} is off loopback: set token_file (or bind to 127.0.0.1)")
    if api.enabled and api.token_file:
        try:
            token = api.token()
        except OSError as problem:
            t.fail("token_file", f"{api.token_file!r}: cannot read: {problem.strerror or problem}")
        if not token or len(token) < 16:
            t.fail("token_file", f"{api.token_file!r}: the token must be at least 16 characters")
    t.finish()
    return api


def _wedge(t: Table) -> WedgeConfig:
    d = WedgeConfig()
    verdicts = t.get("verdicts", list(d.verdicts), list)
    for verdict in verdicts:
        if verdict not in ("accepted", "duplicate", "rejected"):
            t.fail("verdicts", f"{verdict!r} is not allowed; allowed: accepted, duplicate, rejected")
    prefix = t.text("prefix", d.prefix)
    if not prefix.isprintable() or not prefix.isascii():
        t.fail("prefix", f"{prefix!r} is not allowed; allowed: printable ASCII the layout can type")
    wedge = WedgeConfig(
        enabled=t.get("enabled", d.enabled, bool),
        verdicts=tuple(verdicts),
        suffix=t.choice("suffix", d.suffix, WEDGE_SUFFIXES),
        prefix=prefix,
        layout=t.choice("layout", d.layout, WEDGE_LAYOUTS),
        key_delay_ms=t.number("key_delay_ms", d.key_delay_ms, low=0.0, high=100.0),
        device_name=t.text("device_name", d.device_name, nonempty=True),
    )
    t.finish()
    return wedge


def _site(t: Table) -> SiteConfig:
    site = SiteConfig(peers=t.get("peers", SiteConfig().peers, bool))
    t.finish()
    return site


def _receiving(t: Table) -> ReceivingConfig:
    receiving = ReceivingConfig(unexpected=t.choice("unexpected", ReceivingConfig().unexpected, ("reject", "flag")))
    t.finish()
    return receiving


#: What a device or site id may not hold with MQTT on, and why: each is one topic level
#: (``{prefix}/{site}/{device}/...``) on whichever broker (docs/brokers.md).
_NOT_IN_TOPIC_LEVEL = {
    "/": "it splits the topic level in two",
    "+": "it is an MQTT wildcard",
    "#": "it is an MQTT wildcard",
    ".": "NATS drops a publisher whose topic has one, and RabbitMQ turns it into '/'",
    "*": "it is a NATS wildcard",
    ">": "it is a NATS wildcard",
    "\0": "MQTT forbids it in a topic",
}


def topic_level_problem(value: str) -> str | None:
    """Why ``value`` cannot be one MQTT topic level on every broker, or None if it can.

    >>> topic_level_problem("kiosk-0001") is None
    True
    >>> topic_level_problem("kiosk.1")
    "'.' is not allowed: NATS drops a publisher whose topic has one, and RabbitMQ turns it into '/'"
    >>> topic_level_problem("counter 1")
    'whitespace is not allowed: NATS refuses a topic with a space'
    >>> topic_level_problem("")
    'must not be empty'
    """
    if not value:
        return "must not be empty"
    for char, why in _NOT_IN_TOPIC_LEVEL.items():
        if char in value:
            return f"{char!r} is not allowed: {why}"
    if any(c.isspace() for c in value):
        return "whitespace is not allowed: NATS refuses a topic with a space"
    if not value.isprintable():
        return "control characters are not allowed"
    return None


def _check_topic_ids(config: Config) -> None:
    """Device and site ids become MQTT topic levels when the uplink is on."""
    if not config.mqtt.enabled:
        return
    for key in ("device_id", "site_id"):
        value = getattr(config.station, key)
        problem = topic_level_problem(value)
        if problem is not None:
            raise ConfigError(
                f"[station] {key}: {value!r} is not allowed with [mqtt] on ({problem}); it is a topic level:"
                " use letters, digits, '-' and '_', e.g. kiosk-0001"
            )


def _check_ack_pin(config: Config) -> None:
    """The supervisor's button needs a pin of its own."""
    pin = config.documents.ack_pin
    if pin is None or config.feedback.backend != "gpio":
        return
    for name in _PINS:
        if getattr(config.feedback, f"{name}_pin") == pin:
            raise ConfigError(
                f"[documents] ack_pin: GPIO {pin} is also [feedback] {name}_pin; the button needs its own pin"
            )


class Table:
    """One TOML table being read: typed getters, and :meth:`finish` refuses
    keys nobody asked for, so a typo is an error rather than a silent default."""

    def __init__(self, where: str, data: dict[str, Any]) -> None:
        self.where = where
        self.data = data
        self.seen: set[str] = set()

    def fail(self, key: str, message: str) -> None:
        raise ConfigError(f"{self.where} {key}: {message}".strip())

    def get(self, key: str, default: Any, kind: type) -> Any:
        self.seen.add(key)
        if key not in self.data:
            return default
        value = self.data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            self.fail(key, f"{value!r} is not allowed; allowed: {_KIND_NAMES.get(kind, kind.__name__)}")
        return value

    def text(self, key: str, default: str, nonempty: bool = False) -> str:
        value = self.get(key, default, str)
        if nonempty and not value.strip():
            self.fail(key, "must not be empty")
        return value

    def choice(self, key: str, default: str, allowed: tuple[str, ...]) -> str:
        value = self.get(key, default, str)
        if value not in allowed:
            self.fail(key, f"{value!r} is not allowed; allowed: {', '.join(allowed)}")
        return value

    def movement(self, key: str, default: str | None) -> str | None:
        value = self.get(key, default, str)
        if value is not None:
            try:
                check_movement(value)
            except ValueError as problem:
                self.fail(key, str(problem))
        return value

    def number(self, key: str, default: float, low: float, high: float) -> float:
        value = self.get(key, default, float)
        if not low <= value <= high:
            self.fail(key, f"{value!r} is not allowed; allowed: a number from {low} to {high}")
        return value

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        value = self.get(key, default, int)
        if not low <= value <= high:
            self.fail(key, f"{value!r} is not allowed; allowed: a whole number from {low} to {high}")
        return value

    def table(self, key: str) -> Table:
        return Table(f"[{key}]" if not self.where else f"{self.where[:-1]}.{key}]", self.get(key, {}, dict))

    def array_of_tables(self, key: str) -> list[Table]:
        items = self.get(key, [], list)
        if not all(isinstance(item, dict) for item in items):
            self.fail(key, "must be an array of tables, written [[scanners]]")
        return [Table(f"[[{key}]] #{n + 1}", item) for n, item in enumerate(items)]

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            known = ", ".join(sorted(self.seen)) or "none"
            self.fail(unknown[0], f"unknown key; known keys here: {known}")


_KIND_NAMES = {
    str: "a string",
    bool: "true or false",
    float: "a number",
    int: "a whole number",
    list: "a list",
    dict: "a table",
}
