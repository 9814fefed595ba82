"""Wiring: a :class:`~agent.config.Config` becomes a running agent.

Holds no domain rules; it builds the ledger, pipeline, sinks and sources the
config names, runs them until told to stop (or every source has ended, as
stdin does at EOF) and then finishes every queued scan before returning.

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

import logging
import threading
from dataclasses import replace
from typing import BinaryIO, TextIO

from agent.config import (
    Config,
    FeedbackConfig,
    HidScannerConfig,
    ScannerConfig,
    SerialScannerConfig,
    StdinScannerConfig,
)
from agent.feedback import ConsoleFeedback, NoFeedback
from agent.ledger import Ledger
from agent.output import DecisionPrinter
from agent.pipeline import Context, Pipeline, Sink
from agent.sources.hid import DeviceMatch, HidSource
from agent.sources.serial import SerialSource
from agent.sources.stdin import StdinSource

log = logging.getLogger(__name__)


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
        self.pipeline: Pipeline | None = None

    def request_stop(self) -> None:
        self.stop_requested.set()

    def run(self) -> int:
        cfg = self.config
        ledger = Ledger.open(
            cfg.ledger.path,
            device_id=cfg.station.device_id,
            site_id=cfg.station.site_id,
            double_read_window_s=cfg.codes.double_read_window_s,
            split_packs=cfg.codes.split_packs,
        )
        sinks: list[Sink] = [make_feedback(cfg.feedback)]
        if self.out is not None:
            sinks.append(DecisionPrinter(self.out, as_json=self.as_json))
        self.pipeline = pipeline = Pipeline(
            ledger,
            context=Context(movement=cfg.station.movement, operator=cfg.station.operator),
            sinks=sinks,
            leading_digits=cfg.codes.leading_digits,
            accept_gs1=cfg.codes.accept_gs1,
        )
        sources = [self.make_source(s) for s in cfg.scanners]
        log.info("scan-agent up: %s, ledger %s, movement %s", cfg.source, cfg.ledger.path, cfg.station.movement)
        pipeline.start()
        try:
            for source in sources:
                source.start(pipeline.submit)
            while not self.stop_requested.wait(0.1):
                if all(source.done.is_set() for source in sources):
                    break
        finally:
            for source in sources:
                source.stop()
            pipeline.stop()
            ledger.close()
        return 0

    def make_source(self, scanner: ScannerConfig) -> StdinSource | SerialSource | HidSource:
        """The source object for one ``[[scanners]]`` entry."""
        if isinstance(scanner, StdinScannerConfig):
            return StdinSource(self.stdin, name=scanner.name, movement=scanner.movement)
        if isinstance(scanner, SerialScannerConfig):
            return SerialSource(
                scanner.port,
                name=scanner.name,
                movement=scanner.movement,
                baudrate=scanner.baudrate,
                bytesize=scanner.bytesize,
                parity=scanner.parity,
                stopbits=scanner.stopbits,
                terminator=scanner.terminator,
                read_timeout=None if scanner.read_timeout_ms is None else scanner.read_timeout_ms / 1000,
            )
        if isinstance(scanner, HidScannerConfig):
            return HidSource(
                DeviceMatch(
                    vendor_id=scanner.vendor_id,
                    product_id=scanner.product_id,
                    serial=scanner.serial,
                    name_pattern=scanner.name_pattern,
                    path=scanner.path,
                ),
                name=scanner.name,
                movement=scanner.movement,
                layout=scanner.layout,
                key_timeout=scanner.key_timeout_ms / 1000,
                tab_terminates=scanner.tab_terminates,
            )
        raise ValueError(f"no source for scanner kind {scanner.kind!r}")


def make_feedback(config: FeedbackConfig) -> Sink:
    if config.backend == "console":
        return ConsoleFeedback()
    return NoFeedback()


def with_overrides(config: Config, *, movement: str | None = None, db: str | None = None) -> Config:
    """The config with command-line overrides applied."""
    if movement is not None:
        config = replace(config, station=replace(config.station, movement=movement))
    if db is not None:
        config = replace(config, ledger=replace(config.ledger, path=db))
    return config
