"""A :class:`~agent.config.Config` becomes a running agent.

Holds no domain rules; it builds the ledger, pipeline, sinks and sources the
config names (through :mod:`agent.wiring`), runs them until told to stop (or
every source has ended, as stdin does at EOF) and then finishes every queued
scan before returning.

>>> import io
>>> from agent.config import Config, LedgerConfig, FeedbackConfig
>>> cfg = Config(ledger=LedgerConfig(":memory:"), feedback=FeedbackConfig("none"))
>>> out = io.StringIO()
>>> Runner(cfg, out=out, stdin=io.BytesIO(b"81234567890123456789\\n")).run()
0
>>> out.getvalue().split()[:2]
['accepted', '81234567890123456789']
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from dataclasses import replace
from typing import Any, BinaryIO, TextIO

from agent import config as config_file
from agent import control
from agent.config import Config, ScannerConfig
from agent.ledger import Ledger, connect
from agent.ledger.quarantine import MovedAside, prepare
from agent.ops.systemd import LedgerProbe, Notifier, Watchdog, pipeline_healthy
from agent.pipeline import Context, Pipeline, Sink
from agent.sinks.feedback import Feedback
from agent.sinks.host_ack import host_ack_for
from agent.sinks.printer import DecisionPrinter
from agent.station import Station, StationCodes
from agent.wiring import (
    make_ack_button,
    make_api,
    make_conflict_handler,
    make_feedback,
    make_source,
    make_uplink,
    make_wedge,
)

log = logging.getLogger(__name__)

#: An idle pipeline refreshes its progress every ``agent.pipeline.IDLE_REFRESH_S``
#: (2.5 s); this long without progress means it is stuck, and the watchdog pings stop.
PIPELINE_STALL_S = 10.0
#: Devices get this long to be found before they count as missing ...
PRESENCE_GRACE_S = 2.0
#: ... and are then looked at this often (``scanner_missing`` on the feedback).
PRESENCE_S = 1.0


def settle_heap() -> None:
    """Collect once, then leave everything built so far out of later garbage collections.

    A full collection walks every tracked object while holding the GIL, so no
    reader thread runs meanwhile: about 20 ms for the agent's startup objects on
    a server core (bench/gc_pause.py), several times that on a Pi. A keyboard-wedge
    scanner typing a key a millisecond fills the kernel's 64-event buffer in about
    10 ms, and the keys beyond it are lost. Frozen, the startup objects cost
    later collections nothing; objects made afterwards are collected as before.
    """
    gc.collect()
    gc.freeze()


class Runner:
    """One agent process: call :meth:`run`; :meth:`request_stop` from a signal handler."""

    def __init__(
        self,
        config: Config,
        *,
        out: TextIO | None = None,
        as_json: bool = False,
        stdin: BinaryIO | None = None,
    ) -> None:
        self.config = config
        self.out = out
        self.as_json = as_json
        self.stdin = stdin
        self.stop_requested = threading.Event()
        #: Set by a stop request and (see :meth:`wait_until_done`) when every source has ended.
        self._wake = threading.Event()
        self.pipeline: Pipeline | None = None
        #: The verbs commands use (open/close a document, void, exception, acknowledge).
        self.station: Station | None = None
        self.feedback: Feedback | None = None
        #: Alarms raised at start (e.g. a damaged ledger moved aside), also recorded in the ledger.
        self.alarms: list[str] = []

    def request_stop(self) -> None:
        self.stop_requested.set()
        self._wake.set()

    def run(self) -> int:
        cfg = self.config
        lock, moved = None, None
        if str(cfg.ledger.path) != ":memory:":
            # First of all: a second agent on this ledger is refused (LedgerBusy) before it
            # touches a scanner, a pin or the ledger. Raises LedgerDamaged when the ledger is
            # damaged and on_corrupt = "refuse".
            lock, moved = control.hold_ledger(
                cfg.ledger.path, lambda: prepare(cfg.ledger.path, on_corrupt=cfg.ledger.on_corrupt)
            )
        try:
            return self._run(cfg, moved)
        finally:
            # Only now that every connection to the ledger is closed (see LedgerLock).
            if lock is not None:
                lock.release()

    def _run(self, cfg: Config, moved: MovedAside | None) -> int:
        # First of the devices: one that cannot be had (no /dev/uinput) leaves nothing else open.
        wedge = make_wedge(cfg)
        try:
            self.feedback = make_feedback(cfg.feedback)
        except BaseException:
            if wedge is not None:
                wedge.close()
            raise
        feedback = self.feedback
        host_ack = host_ack_for(cfg.scanners, in_fault=lambda: feedback.is_on("fault"))
        ledger = Ledger.open(
            cfg.ledger.path,
            device_id=cfg.station.device_id,
            site_id=cfg.station.site_id,
            double_read_window_s=cfg.codes.double_read_window_s,
            split_packs=cfg.codes.split_packs,
            lifecycle=cfg.codes.lifecycle,
            lock_on=cfg.documents.lock_on,
            unexpected=cfg.receiving.unexpected,
        )
        feedback.set_state("locked", ledger.lock is not None)  # a lock outlives a restart
        if moved is not None:
            ledger.record_alarm("ledger_damaged", moved.describe())
            self.alarms.append(moved.describe())
        sinks: list[Sink] = [feedback]
        if host_ack:
            sinks.append(host_ack)
        if wedge is not None:
            sinks.append(wedge)  # before the printers: the POS is waiting for its keys
        if self.out is not None:
            sinks.append(DecisionPrinter(self.out, as_json=self.as_json))
        self.pipeline = pipeline = Pipeline(
            ledger,
            context=Context(movement=cfg.station.movement, operator=cfg.station.operator),
            sinks=sinks,
            leading_digits=cfg.codes.leading_digits,
            accept_gs1=cfg.codes.accept_gs1,
            station_codes=StationCodes.from_config(cfg.documents),
            on_new=cfg.documents.on_new,
            idle_close_s=cfg.documents.idle_close_s,
        )
        self.station = Station(pipeline, on_new=cfg.documents.on_new)
        ack_button = make_ack_button(cfg, self.station)
        sources = [self.make_source(s) for s in cfg.scanners]
        uplink = None
        if cfg.mqtt.enabled:
            uplink = make_uplink(
                cfg,
                pipeline,
                sources,
                station=self.station,
                reload=self.reload_config,
                on_state=feedback.set_state,
                on_conflict=make_conflict_handler(cfg, pipeline, feedback),
            )
        api = None
        if cfg.api.enabled:
            api = make_api(cfg, pipeline, self.station, sources, uplink=uplink, feedback=feedback)
        log.info("scan-agent up: %s, ledger %s, movement %s", cfg.source, cfg.ledger.path, cfg.station.movement)
        settle_heap()
        pipeline.start()
        if uplink is not None:
            uplink.start()  # connects in the background; scans never wait for it
        if api is not None:
            api.start()  # listening before READY: a POS started after the agent finds it
        notifier, watchdog, server = Notifier(), None, None
        try:
            if str(cfg.ledger.path) != ":memory:":
                # `scan-agent documents` commands reach the pipeline through it.
                server = control.ControlServer(cfg.ledger.path, self.station)
                server.start()
            for source in sources:
                source.start(pipeline.submit)
            # systemd: ready only now that config, ledger and sources are up.
            notifier.ready(f"scanning, movement {cfg.station.movement}")
            watchdog = self.start_watchdog(notifier, pipeline)
            self.wait_until_done(sources, feedback)
        finally:
            # The watchdog thread is joined first: a ping after STOPPING=1 would
            # reach a service systemd already treats as stopping.
            if watchdog is not None:
                watchdog.stop()
            notifier.stopping()
            if server is not None:
                server.stop()  # before the pipeline: a command it took still runs
            for source in sources:
                source.stop()
            pipeline.stop()
            if api is not None:
                api.stop()  # after the pipeline: the stream carries the last decisions out
            if wedge is not None:
                wedge.close()
            if uplink is not None:
                uplink.stop()
            if ack_button is not None:
                ack_button.close()
            ledger.close()
            feedback.close()
            notifier.close()
        return 0

    def start_watchdog(self, notifier: Notifier, pipeline: Pipeline) -> Watchdog | None:
        """Ping systemd's watchdog while the pipeline and the database are healthy."""
        interval = notifier.watchdog_interval()
        if interval is None:
            return None
        # Its own connection: the pipeline's belongs to the pipeline thread.
        probe = LedgerProbe(connect(self.config.ledger.path), self.config.ledger.path)
        watchdog = Watchdog(
            notifier, interval, lambda: pipeline_healthy(pipeline, probe, stall_s=PIPELINE_STALL_S), on_stop=probe.close
        )
        watchdog.start()
        return watchdog

    def wait_until_done(self, sources: list, feedback: Feedback) -> None:
        """Return when a stop is requested or every source has ended (stdin at EOF);
        meanwhile show ``scanner_missing`` while a device is gone.

        Sleeps in between: it wakes once per ``PRESENCE_S`` only when some source's
        device can vanish, else only when woken.
        """
        polled = [source for source in sources if not getattr(source, "always_present", False)]
        if not polled:
            # Sources that end also end when stopped (stdin does): this thread never outlives run().
            threading.Thread(target=self._wake_when_ended, args=(sources,), name="sources-ended", daemon=True).start()
        presence_due = time.monotonic() + PRESENCE_GRACE_S
        while True:
            self._wake.wait(max(0.0, presence_due - time.monotonic()) if polled else None)
            if self.stop_requested.is_set() or all(source.done.is_set() for source in sources):
                return
            if polled and time.monotonic() >= presence_due:
                report_presence(sources, feedback)
                presence_due += PRESENCE_S

    def _wake_when_ended(self, sources: list) -> None:
        for source in sources:
            source.done.wait()
        self._wake.set()

    def reload_config(self) -> dict:
        """Re-read the config file: apply what can change live, name what needs a restart."""
        if self.pipeline is None or self.config.source in ("built-in default", "<string>"):
            raise ValueError("the agent runs on the built-in default; there is no config file to re-read")
        new = config_file.load(self.config.source)
        old = self.config
        applied = {}
        for key in ("movement", "operator"):
            if getattr(new.station, key) != getattr(old.station, key):
                applied[key] = getattr(new.station, key)
        if applied:
            self.pipeline.set_context(**applied)
        restart = [
            section
            for section in ("codes", "documents", "ledger", "scanners", "feedback", "mqtt", "api", "wedge", "receiving")
            if getattr(new, section) != getattr(old, section)
        ]
        if replace(new.station, movement=old.station.movement, operator=old.station.operator) != old.station:
            restart.insert(0, "station")
        self.config = replace(new, station=replace(old.station, **applied))
        return {"applied": applied, "needs_restart": restart}

    def make_source(self, scanner: ScannerConfig) -> Any:
        """The source object for one ``[[scanners]]`` entry (stdin reads this runner's stream)."""
        return make_source(scanner, self.stdin)


def report_presence(sources: list, feedback: Feedback) -> None:
    """Show ``scanner_missing`` while any scanner's device is gone (one cause per scanner)."""
    for source in sources:
        feedback.set_state("scanner_missing", not source.present(), cause=source.name)
