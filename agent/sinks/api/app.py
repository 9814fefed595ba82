"""The endpoints: Starlette routes over the station's verbs and the ledger's reads.

Every answer is JSON; an error is ``{"error": message, "field": name}`` (``field``
when one field is at fault) with 400 (bad input), 401 (token), 404 (no such
document, scan or endpoint), 405, 408 (body too slow), 409 (the station refused:
a document open already, not locked, ...), 413 (body too large) or 503 (the
pipeline did not take the command in time, or the agent is stopping).

A command is checked here first, with the same readers the station uses, so that
bad input is a 400 and only a refusal by the ledger is a 409. It then runs through
:class:`agent.station.Station`, as MQTT and CLI commands do, in a worker thread:
a verb waits for the pipeline thread, and the event loop must not.

Threads: the handlers run on the API's event loop; ledger reads and station verbs
in the loop's worker threads (``asyncio.to_thread``).
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agent.events import encode
from agent.ledger import LedgerError
from agent.ledger.documents import DocumentError, only_fields, read_document, read_exception, read_text, read_void
from agent.sinks.api.hub import Hub
from agent.sinks.api.metrics import Gauge, Metrics
from agent.sinks.api.openapi import openapi
from agent.sinks.api.reads import LedgerReads
from agent.sinks.feedback import SETTABLE_STATES
from agent.station import StationBusy

log = logging.getLogger(__name__)

#: A command's body (a document of 3,500 codes' lines is well under this).
MAX_BODY = 1 << 20
#: A manifest's body: 50,000 codes are a few MB.
MAX_MANIFEST_BODY = 32 << 20
#: A body must arrive within this; a client trickling bytes holds nothing longer.
BODY_TIMEOUT_S = 10.0
#: ``GET /v1/decisions``: ``limit`` when none is given, and at most.
PAGE_DEFAULT, PAGE_MAX = 100, 1000
#: A stream client falling this many events behind is dropped (and resumes with Last-Event-ID).
STREAM_BUFFER = 256
#: Stream clients at once; one more gets 503.
MAX_STREAMS = 16
#: A comment line this often keeps an idle stream's proxies and read timeouts content.
KEEPALIVE_S = 15.0


class ApiError(Exception):
    """An answer other than success: ``status``, a message and maybe the field at fault."""

    def __init__(self, status: int, error: str, field: str | None = None) -> None:
        super().__init__(error)
        self.status, self.error, self.field = status, error, field

    def response(self) -> JSONResponse:
        return error_response(self.status, self.error, self.field)


def error_response(status: int, error: str, field: str | None = None, headers: Mapping[str, str] | None = None):
    body: dict[str, Any] = {"error": error}
    if field is not None:
        body["field"] = field
    return JSONResponse(body, status, headers=dict(headers or {}))


def frame(event: dict) -> bytes:
    """One Server-Sent Event: ``id:`` the seq, ``data:`` the event's JSON (one line).

    >>> frame({"seq": 7, "verdict": "accepted"})
    b'id: 7\\ndata: {"seq":7,"verdict":"accepted"}\\n\\n'
    """
    return b"id: %d\ndata: %s\n\n" % (event["seq"], encode(event))


@dataclass
class ApiParts:
    """What the endpoints use. ``reads`` is shared by worker threads; ``hub`` and
    ``metrics`` belong to the loop; the rest are safe from any thread."""

    device_id: str
    site_id: str
    reads: LedgerReads
    hub: Hub
    metrics: Metrics
    station: Any  # agent.station.Station
    sources: list
    feedback: Any  # agent.sinks.feedback.Feedback
    uplink: Any | None  # agent.sinks.uplink.Uplink
    token: str | None = None


class BearerAuth:
    """ASGI middleware: with a token configured, every request needs ``Authorization: Bearer <token>``.

    The comparison takes the same time however much of the token a guess gets right.
    """

    def __init__(self, app: Callable, token: str | None) -> None:
        self.app = app
        self.expected = None if token is None else f"Bearer {token}".encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and self.expected is not None:
            given = next((value for name, value in scope["headers"] if name == b"authorization"), b"")
            if not hmac.compare_digest(given, self.expected):
                response = error_response(
                    401,
                    "a valid Authorization: Bearer <token> header is needed",
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def read_body(request: Request, limit: int = MAX_BODY) -> dict:
    """The request's JSON object (``{}`` for an empty body), or an :class:`ApiError`."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise ApiError(413 if length.isdigit() else 400, f"the body must be JSON of at most {limit} bytes")
    body = bytearray()
    try:
        async with asyncio.timeout(BODY_TIMEOUT_S):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise ApiError(413, f"the body must be JSON of at most {limit} bytes")
    except TimeoutError:
        raise ApiError(408, f"the body did not arrive within {BODY_TIMEOUT_S:g} s") from None
    if not body.strip():
        return {}
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as problem:
        raise ApiError(400, f"the body is not JSON: {problem}") from None
    if not isinstance(value, dict):
        raise ApiError(400, "the body must be a JSON object")
    return value


def query_int(request: Request, name: str, default: int, *, low: int = 0, high: int | None = None) -> int:
    """Query parameter ``name`` as a whole number in ``low..high``."""
    text = request.query_params.get(name)
    if text is None:
        return default
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise ApiError(400, f"{text!r}: must be a whole number", name)
    value = int(text)
    if value < low or (high is not None and value > high):
        raise ApiError(400, f"{value} is not allowed; allowed: {low} to {high}", name)
    return value


def checked(check: Callable[[], object]) -> None:
    """Run one of the station's readers on the body: its refusal is a 400."""
    try:
        check()
    except DocumentError as problem:
        raise ApiError(400, problem.message, problem.field) from None


class Endpoints:
    """The request handlers (loop thread)."""

    def __init__(self, parts: ApiParts) -> None:
        self.parts = parts

    async def status(self, request: Request) -> Response:
        p = self.parts
        reads = p.reads

        def from_ledger() -> dict:
            return {
                "last_seq": reads.last_seq(),
                "outbox": {"depth": reads.outbox_depth(), "oldest_age_s": _round(reads.oldest_undelivered_age_s())},
                "document": reads.open_document(),
                "lock": reads.lock_state(),
            }

        ledger = await asyncio.to_thread(from_ledger)
        body = {
            "device_id": p.device_id,
            "site_id": p.site_id,
            "states": sorted(p.feedback.states()),
            "scanners": {source.name: bool(source.present()) for source in p.sources},
            "uplink": self._uplink(),
            "stream_clients": len(p.hub.subscriptions),
            **ledger,
        }
        return JSONResponse(body)

    def _uplink(self) -> dict:
        uplink = self.parts.uplink
        if uplink is None:
            return {"enabled": False, "connected": False}
        return {"enabled": True, "connected": bool(uplink.connected)}

    async def decisions(self, request: Request) -> Response:
        after = query_int(request, "after_seq", 0)
        limit = query_int(request, "limit", PAGE_DEFAULT, low=1, high=PAGE_MAX)
        reads = self.parts.reads

        def page() -> tuple[list[dict], int]:
            last = reads.last_seq()
            return reads.events(after=after, upto=min(last, after + limit)), last

        events, last = await asyncio.to_thread(page)
        next_after = events[-1]["seq"] if events else min(after, last) if after <= last else after
        return JSONResponse({"events": events, "next_after_seq": next_after, "last_seq": last})

    async def open_document(self, request: Request) -> Response:
        body = await read_body(request)
        checked(lambda: read_document(body))
        reply = await self._command(self.parts.station.open_document, body, request)
        return JSONResponse(reply, 201)

    async def show_document(self, request: Request) -> Response:
        doc_id = request.path_params["doc_id"]
        try:
            doc = await asyncio.to_thread(self.parts.reads.document, doc_id)
        except DocumentError as problem:
            raise ApiError(404, problem.message, problem.field) from None
        return JSONResponse(doc)

    async def close_document(self, request: Request) -> Response:
        doc_id = request.path_params["doc_id"]
        body = await read_body(request)
        checked(lambda: only_fields(body, ()))
        await self._known_document(doc_id)
        return JSONResponse(await self._command(self.parts.station.close_document, {"id": doc_id}, request))

    async def add_exception(self, request: Request) -> Response:
        doc_id = request.path_params["doc_id"]
        body = await read_body(request)
        if "document" in body:
            raise ApiError(400, "the document is the one in the path; leave it out of the body", "document")
        command = {**body, "document": doc_id}
        checked(lambda: read_exception(command))
        await self._known_document(doc_id)
        return JSONResponse(await self._command(self.parts.station.exception, command, request))

    async def void(self, request: Request) -> Response:
        event_id = request.path_params["event_id"]
        body = await read_body(request)
        if "event_id" in body:
            raise ApiError(400, "the scan is the one in the path; leave it out of the body", "event_id")
        command = {**body, "event_id": event_id}
        checked(lambda: read_void(command))
        if not await asyncio.to_thread(self.parts.reads.event_id_exists, event_id):
            raise ApiError(404, f"no scan has event id {event_id}", "event_id")
        return JSONResponse(await self._command(self.parts.station.void, command, request))

    async def acknowledge(self, request: Request) -> Response:
        body = await read_body(request)
        checked(lambda: (only_fields(body, ("by",)), read_text(body, "by")))
        return JSONResponse(await self._command(self.parts.station.acknowledge, body, request))

    async def import_manifest(self, request: Request) -> Response:
        body = await read_body(request, MAX_MANIFEST_BODY)
        station = self.parts.station
        # Checked first and apart, so that a bad manifest is a 400, and a refusal by the ledger a 409.
        try:
            manifest = await asyncio.to_thread(station.check_manifest, body)
        except DocumentError as problem:
            raise ApiError(400, problem.message, problem.field) from None
        record = functools.partial(station.import_manifest, manifest=manifest)
        reply = await self._command(record, body, request)
        return JSONResponse(reply, 201 if reply.get("imported", True) else 200)

    async def metrics(self, request: Request) -> Response:
        p = self.parts
        reads = p.reads
        depth, age = await asyncio.to_thread(lambda: (reads.outbox_depth(), reads.oldest_undelivered_age_s()))
        states = p.feedback.states()
        uplink = self._uplink()
        gauges = [
            Gauge("scan_agent_outbox_depth", "Events not yet delivered to the broker.", [({}, depth)]),
            Gauge(
                "scan_agent_outbox_oldest_age_seconds",
                "Age of the oldest event not yet delivered (0 when none).",
                [({}, age or 0.0)],
            ),
            Gauge(
                "scan_agent_scanner_present",
                "1 while the scanner's device is there.",
                [({"scanner": s.name}, int(bool(s.present()))) for s in p.sources],
            ),
            Gauge("scan_agent_uplink_enabled", "1 when MQTT is configured.", [({}, int(uplink["enabled"]))]),
            Gauge("scan_agent_uplink_connected", "1 while connected to the broker.", [({}, int(uplink["connected"]))]),
            Gauge(
                "scan_agent_device_state",
                "1 while the device state is on.",
                [({"state": name}, int(name in states)) for name in (*SETTABLE_STATES, "ready")],
            ),
            Gauge("scan_agent_last_seq", "The newest event's seq.", [({}, p.hub.last_seq)]),
            Gauge("scan_agent_stream_clients", "Decision stream clients connected.", [({}, len(p.hub.subscriptions))]),
            Gauge(
                "scan_agent_stream_dropped_total",
                "Stream clients dropped for falling behind.",
                [({}, p.hub.dropped)],
                kind="counter",
            ),
        ]
        return Response(p.metrics.render(gauges), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(openapi())

    async def _known_document(self, doc_id: str) -> None:
        if not await asyncio.to_thread(self.parts.reads.document_id_exists, doc_id):
            raise ApiError(404, f"no document has id {doc_id}", "id")

    async def _command(self, verb: Callable[..., dict], body: dict, request: Request) -> dict:
        """Run a station verb in a worker thread: it waits for the pipeline, the loop does not."""
        client = request.client
        source_id = f"api:{client.host}" if client is not None else "api"
        try:
            return await asyncio.to_thread(verb, body, via="api", source_id=source_id)
        except StationBusy as problem:
            raise ApiError(503, problem.message, problem.field) from None
        except DocumentError as problem:
            raise ApiError(409, problem.message, problem.field) from None
        except LedgerError as problem:
            raise ApiError(503, f"the ledger cannot be written: {problem}") from None
        except ValueError as problem:  # e.g. a manifest's own errors, which name their field
            raise ApiError(400, str(problem), getattr(problem, "field", None)) from None


class DecisionStream:
    """``GET /v1/decisions/stream``: history after the client's ``Last-Event-ID`` (or
    ``after_seq``; else from now), then each event as it is committed. A raw ASGI app, so
    that a client that stops reading can be cut off while the server waits to write to it.
    """

    def __init__(self, parts: ApiParts) -> None:
        self.parts = parts

    async def __call__(self, scope, receive, send) -> None:
        request = Request(scope, receive)
        try:
            after = self._start(request)
        except ApiError as problem:
            await problem.response()(scope, receive, send)
            return
        hub = self.parts.hub
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-store"),
                    (b"x-accel-buffering", b"no"),
                ],
            }
        )
        state: dict[str, Any] = {"ready": asyncio.Event()}
        writer = asyncio.create_task(self._write(after, send, state))
        gone = asyncio.create_task(_disconnected(receive))
        dropped = asyncio.create_task(_dropped(state))
        try:
            done, _ = await asyncio.wait({writer, gone, dropped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (writer, gone, dropped):
                task.cancel()
            sub = state.get("sub")
            if sub is not None:
                hub.unsubscribe(sub)
        sub = state.get("sub")
        if sub is not None and sub.dropped.is_set():
            log.warning(
                "a stream client fell %d events behind; disconnected (it resumes with Last-Event-ID)", hub.buffer
            )
        elif writer in done and not writer.cancelled() and writer.exception() is None:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        # Otherwise (dropped, or gone) return without finishing the response: the server then
        # closes the connection, the only way to reach a client that has stopped reading.

    def _start(self, request: Request) -> int:
        if request.method != "GET":
            raise ApiError(405, "only GET")
        hub = self.parts.hub
        if len(hub.subscriptions) >= MAX_STREAMS:
            raise ApiError(503, f"{MAX_STREAMS} stream clients are connected already")
        last_id = request.headers.get("last-event-id")
        if last_id is not None:
            if not last_id.isascii() or not last_id.isdigit() or len(last_id) > 18:
                raise ApiError(400, f"{last_id!r}: must be the seq of the last event received", "Last-Event-ID")
            return int(last_id)
        return query_int(request, "after_seq", hub.last_seq)

    async def _write(self, after: int, send, state: dict) -> None:
        hub, reads = self.parts.hub, self.parts.reads
        cursor = after
        await send({"type": "http.response.body", "body": b"retry: 1000\n\n", "more_body": True})
        # History first, a page at a time, until the client is level with the hub ...
        while cursor < hub.last_seq:
            upto = min(hub.last_seq, cursor + PAGE_MAX)
            events = await asyncio.to_thread(reads.events, after=cursor, upto=upto)
            if events:
                await send({"type": "http.response.body", "body": b"".join(map(frame, events)), "more_body": True})
            cursor = upto
        # ... then live. Checked and subscribed with no await between them: nothing the hub
        # reads can fall between the last page and the subscription.
        sub = state["sub"] = hub.subscribe(cursor)
        state["ready"].set()
        while True:
            try:
                await asyncio.wait_for(sub.ready.wait(), KEEPALIVE_S)
            except TimeoutError:
                await send({"type": "http.response.body", "body": b": keepalive\n\n", "more_body": True})
                continue
            frames = sub.take()
            if sub.dropped.is_set():
                return  # the caller cuts the connection
            if frames:
                await send({"type": "http.response.body", "body": b"".join(f for _, f in frames), "more_body": True})
            if sub.closed:
                return


async def _disconnected(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _dropped(state: dict) -> None:
    await state["ready"].wait()
    await state["sub"].dropped.wait()


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def build_app(parts: ApiParts) -> Callable:
    """The ASGI app: the routes, JSON errors everywhere, and the bearer token in front."""
    e = Endpoints(parts)
    routes = [
        Route("/v1/status", e.status, methods=["GET"]),
        Route("/v1/decisions", e.decisions, methods=["GET"]),
        Route("/v1/decisions/stream", DecisionStream(parts)),
        Route("/v1/documents", e.open_document, methods=["POST"]),
        Route("/v1/documents/{doc_id}", e.show_document, methods=["GET"]),
        Route("/v1/documents/{doc_id}/close", e.close_document, methods=["POST"]),
        Route("/v1/documents/{doc_id}/exceptions", e.add_exception, methods=["POST"]),
        Route("/v1/scans/{event_id}/void", e.void, methods=["POST"]),
        Route("/v1/acknowledge", e.acknowledge, methods=["POST"]),
        Route("/metrics", e.metrics, methods=["GET"]),
        Route("/v1/openapi.json", e.openapi, methods=["GET"]),
        Route("/v1/manifests", e.import_manifest, methods=["POST"]),
    ]

    async def api_error(request: Request, problem: Exception) -> Response:
        return problem.response()  # type: ignore[attr-defined]

    async def http_error(request: Request, problem: Exception) -> Response:
        status = getattr(problem, "status_code", 400)
        message = {404: "no such endpoint", 405: "method not allowed here"}.get(status, str(problem))
        return error_response(status, message, headers=getattr(problem, "headers", None))

    async def client_gone(request: Request, problem: Exception) -> Response:
        return error_response(400, "the client disconnected")

    app = Starlette(
        routes=routes,
        exception_handlers={ApiError: api_error, HTTPException: http_error, ClientDisconnect: client_gone},
    )
    return BearerAuth(app, parts.token)
