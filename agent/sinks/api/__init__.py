"""The local HTTP API: the counter's POS, HIS or WMS reads decisions and sends commands.

A sink like the others: the pipeline tells it each decision after the commit, and
:meth:`LocalApi.decided` only hands the news to the server's event loop. The
stream then reads the new rows from the ledger on the API's own read-only
connection and sends each client the event the broker gets (:mod:`agent.events`).
Commands go through :class:`agent.station.Station`, as MQTT's and the CLI's do.
See docs/pos.md for what a client sees, and :mod:`agent.sinks.api.app` for the endpoints.

Built from the config by :func:`agent.wiring.make_api`::

    api = LocalApi.from_config(cfg, pipeline=pipeline, station=station, sources=sources,
                               uplink=None, feedback=feedback)
    pipeline.sinks.append(api)
    api.start()   # listening
    ...
    api.stop()    # after the pipeline: the streams carry out the last decisions

Threads: :meth:`decided` on the pipeline thread (returns at once); :meth:`start`
and :meth:`stop` on the runner's thread; everything else on the ``api`` thread's
event loop and its worker threads. Only this module and the server import the HTTP
libraries (starlette, uvicorn: ``pip install scan-agent[api]``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.config import ConfigError
from agent.domain import Decision
from agent.sinks.api.hub import Hub
from agent.sinks.api.metrics import Metrics
from agent.sinks.api.reads import LedgerReads

if TYPE_CHECKING:
    from agent.config import Config

log = logging.getLogger(__name__)


class LocalApi:
    """The HTTP server, its stream hub and its metrics, as one sink."""

    def __init__(
        self,
        *,
        db_path: str | Path,
        device_id: str,
        site_id: str,
        bind: str,
        port: int,
        token: str | None,
        station: Any,
        sources: list,
        feedback: Any,
        uplink: Any | None = None,
        split_packs: dict | None = None,
    ) -> None:
        try:
            from agent.sinks.api.app import STREAM_BUFFER, ApiParts, build_app
            from agent.sinks.api.server import Server
            from agent.sinks.api.server import bind as bind_socket
        except ImportError as problem:
            raise ConfigError(
                f"[api] enabled needs the HTTP libraries ({problem.name}): pip install 'scan-agent[api]'"
            ) from problem
        # Two connections: the hub's, used only on the loop, and one the worker threads share.
        self.reads = LedgerReads(db_path, device_id=device_id, split_packs=split_packs)
        self.live = LedgerReads(db_path, device_id=device_id, split_packs=split_packs)
        self.metrics = Metrics()
        self.hub = Hub(self._frames_after, last_seq=self.live.last_seq(), buffer=STREAM_BUFFER)
        parts = ApiParts(
            device_id=device_id,
            site_id=site_id,
            reads=self.reads,
            hub=self.hub,
            metrics=self.metrics,
            station=station,
            sources=sources,
            feedback=feedback,
            uplink=uplink,
            token=token,
        )
        try:
            sock = bind_socket(bind, port)
        except OSError as problem:
            self.close()
            raise ConfigError(f"[api] cannot listen on {bind}:{port}: {problem.strerror or problem}") from problem
        self.address = sock.getsockname()[:2]
        self.token = token
        self._loop: asyncio.AbstractEventLoop | None = None
        self.server = Server(build_app(parts), sock, on_loop=self._on_loop, before_exit=self._before_exit)

    @classmethod
    def from_config(
        cls, cfg: Config, *, pipeline: Any, station: Any, sources: list, uplink: Any | None, feedback: Any
    ) -> LocalApi:
        """The API for ``cfg.api`` (``[api]``), on the ledger the pipeline writes."""
        if str(cfg.ledger.path) == ":memory:":
            raise ConfigError("[api] reads the ledger on connections of its own: it needs a ledger file, not :memory:")
        try:
            token = cfg.api.token()
        except OSError as problem:
            raise ConfigError(f"[api] token_file {cfg.api.token_file!r}: cannot read: {problem}") from problem
        return cls(
            db_path=cfg.ledger.path,
            device_id=cfg.station.device_id,
            site_id=cfg.station.site_id,
            bind=cfg.api.bind,
            port=cfg.api.port,
            token=token,
            station=station,
            sources=sources,
            feedback=feedback,
            uplink=uplink,
            split_packs=dict(cfg.codes.split_packs or {}),
        )

    # -- the pipeline's side: must return at once ------------------------------

    def decided(self, decision: Decision) -> None:
        """Sink: hand the verdict, its seq and its read-to-commit time to the loop."""
        loop = self._loop
        if loop is None:
            return  # not serving yet (or any more): the stream reads the ledger when it is
        latency = None
        if decision.read.raw and decision.verdict != "fault":
            # Right after the commit: t_last is the scan's last byte (monotonic).
            latency = time.monotonic() - decision.read.t_last
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile (stopping)
            loop.call_soon_threadsafe(self._heard, decision.verdict, decision.seq, latency)

    # -- the loop's side ---------------------------------------------------------

    def _on_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def _heard(self, verdict: str, seq: int | None, latency: float | None) -> None:
        self.metrics.heard(verdict, latency)
        if seq is not None:
            self.hub.wake(seq)

    def _frames_after(self, after: int, upto: int) -> list[tuple[int, bytes]]:
        from agent.sinks.api.app import frame

        return [(event["seq"], frame(event)) for event in self.live.events(after=after, upto=upto)]

    async def _before_exit(self) -> None:
        # Every decision the pipeline committed has been announced by now (it stopped first).
        self.hub.wake(self.live.last_seq())
        self.hub.close()
        await asyncio.sleep(0.1)  # the streams write what they hold, then end

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """Serve in the background; returns once listening."""
        self.server.start()
        host, port = self.address
        log.info("local API on http://%s:%d/v1/, %s", host, port, "token required" if self.token else "no token")

    def stop(self) -> None:
        """Let the streams carry out the last decisions, then stop serving and close the ledger reads."""
        self.server.stop()
        self._loop = None
        self.close()

    def close(self) -> None:
        self.reads.close()
        self.live.close()
