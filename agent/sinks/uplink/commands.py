"""Commands from ``{p}/cmd/<name>``, each answered on ``{p}/reply``.

A command is a JSON object, at most :data:`MAX_COMMAND_BYTES` (``open_document``:
:data:`MAX_DOCUMENT_BYTES`), sent live (a retained one would replay on every
reconnect). ``correlation`` in it comes back in the reply, and so does an MQTT v5
correlation-data property.

- ``set``: change movement, operator and/or bill for the scans read after it;
- ``health``: the health report, now;
- ``reload``: re-read the config file, apply what can be applied;
- ``resend``: send events ``from_seq``..``to_seq`` again, delivered or not;
- the station's verbs (:class:`agent.station.Station`): ``open_document``,
  ``close_document``, ``void``, ``exception``, ``acknowledge``. A refused one gets
  an error reply whose ``field`` names what was wrong, and records nothing;
- ``manifest``: a supplier's manifest (docs/manifest.md), whole (up to
  :data:`MAX_DOCUMENT_BYTES`) or in parts (:mod:`~agent.sinks.uplink.chunks`); the
  reply to each part says how many are in, the last one's the import's.

>>> commands = Commands(
...     Topics("trace/v1", "site-01", "kiosk-7"), send=print, health=lambda: {"ok": 1}, resend=lambda first, last: {}
... )
>>> commands.reply_to("health", b"{}")
{'command': 'health', 'ok': True, 'result': {'ok': 1}, 'correlation': None}
>>> commands.reply_to("set", b'{"movement": "receive", "correlation": "c-1"}')["error"]
'this agent takes no context changes'
>>> commands.reply_to("void", b'{"event_id": "x", "reason": "wrong pack"}')["error"]
'this agent takes no document commands'
"""

from __future__ import annotations

import collections
import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.domain import check_movement
from agent.ledger.documents import DocumentError
from agent.station import VERBS

from .chunks import ChunkError, Chunks
from .topics import Topics

if TYPE_CHECKING:
    from agent.station import Station

log = logging.getLogger(__name__)

#: The station's verbs, each run by :class:`agent.station.Station`'s method of that name.
DOCUMENT_COMMANDS = tuple(verb for verb in VERBS if verb != "import_manifest")  # by the same names
COMMANDS = ("set", "health", "reload", "resend", *DOCUMENT_COMMANDS, "manifest")
#: Commands bigger than this are refused unread.
MAX_COMMAND_BYTES = 4096
#: ... but ``open_document``, which carries up to 3,500 lines: a line with a drug's
#: name in \u escapes is about 250 bytes. mosquitto takes any packet size unless
#: ``max_packet_size`` is set; a broker that sets it must leave room for this.
MAX_DOCUMENT_BYTES = 1024 * 1024
_MAX_BYTES = {"open_document": MAX_DOCUMENT_BYTES, "manifest": MAX_DOCUMENT_BYTES}
#: A station command's entry row names this as its source (``source_kind`` is ``mqtt``).
SOURCE_ID = "mqtt"
#: Operator and bill ids longer than this are refused.
MAX_FIELD_CHARS = 64
#: At most this many events per ``resend`` command.
MAX_RESEND = 10_000


class CommandError(Exception):
    """A command that is refused; the message goes back in the error reply, and
    ``field`` too when one field of the command was wrong."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class Commands:
    """Checks and runs commands, and answers them.

    Threads: :meth:`received` is called on uplink-net (paho's ``on_message``)
    and only queues the message and calls ``wake``; :meth:`answer_waiting` runs
    on the uplink thread, which then runs the hooks and ``send``.
    :meth:`reply_to` runs the hooks on whichever thread calls it.

    A station verb blocks the uplink thread until the pipeline thread has run it
    (at most :data:`agent.station.CALL_TIMEOUT_S`). That cannot deadlock: the
    pipeline never waits for the uplink (its sink, ``Uplink.decided``, only notes
    the row and wakes). Meanwhile uplink-net goes on sending what is ready and
    uplink-record goes on recording PUBACKs; only new rows wait to be made ready.

    The hooks: ``health()`` returns the health report; ``resend(first, last)``
    queues events ``first``..``last`` and returns ``{"found": n, "queued": m}``;
    ``set_context(**fields)`` is :meth:`agent.pipeline.Pipeline.set_context`;
    ``reload()`` re-reads the config and returns what it applied and what needs
    a restart, raising :class:`ValueError` for a bad config. ``send(topic,
    body, properties)`` publishes a reply. ``station`` is the
    :class:`agent.station.Station` whose verbs the document commands call.
    """

    def __init__(
        self,
        topics: Topics,
        *,
        send: Callable[[str, dict, Properties | None], None],
        health: Callable[[], dict],
        resend: Callable[[int, int], dict],
        set_context: Callable[..., None] | None = None,
        station: Station | None = None,
        reload: Callable[[], dict] | None = None,
        wake: Callable[[], None] = lambda: None,
        v5: bool = True,
    ) -> None:
        self.health = health
        self.resend = resend
        self.set_context = set_context
        #: The document verbs (open_document, close_document, void, exception, acknowledge).
        self.station = station
        self.reload = reload
        self.topics = topics
        self.send = send
        self.wake = wake
        self.v5 = v5
        self._waiting: collections.deque[mqtt.MQTTMessage] = collections.deque()
        self._run: dict[str, Callable[[dict], dict]] = {
            "set": self._set,
            "health": self._health,
            "reload": self._reload,
            "resend": self._resend,
            **{name: self._station_verb(name) for name in DOCUMENT_COMMANDS},
            "manifest": self._manifest,
        }
        self._chunks = Chunks()

    def received(self, message: mqtt.MQTTMessage) -> None:
        """A command arrived (uplink-net): queue it for the uplink thread."""
        self._waiting.append(message)
        self.wake()

    def answer_waiting(self) -> None:
        """Run and answer every command received so far (uplink thread)."""
        while self._waiting:
            self.answer(self._waiting.popleft())

    def answer(self, message: mqtt.MQTTMessage) -> None:
        """Run one command and publish the reply, with the v5 correlation data it came with."""
        name = self.topics.command_name(message.topic)
        correlation_data = getattr(message.properties, "CorrelationData", None) if message.properties else None
        reply = self.reply_to(name, message.payload, retain=message.retain)
        properties = None
        if self.v5 and correlation_data is not None:
            properties = Properties(PacketTypes.PUBLISH)
            properties.CorrelationData = correlation_data
        self.send(self.topics.reply, reply, properties)

    def reply_to(self, name: str, payload: bytes, *, retain: bool = False) -> dict:
        """Check and run command ``name``; returns the reply, ``ok`` or with the ``error``."""
        correlation = None
        try:
            limit = _MAX_BYTES.get(name, MAX_COMMAND_BYTES)
            if len(payload) > limit:
                raise CommandError(f"command is {len(payload)} bytes; at most {limit} allowed")
            try:
                body = json.loads(payload or b"{}")
            except (ValueError, UnicodeDecodeError) as problem:
                raise CommandError(f"payload is not JSON: {problem}") from None
            if not isinstance(body, dict):
                raise CommandError("payload must be a JSON object")
            correlation = body.pop("correlation", None)
            if retain:
                raise CommandError("retained command refused: commands must be sent live, not retained")
            if name not in COMMANDS:
                raise CommandError(f"unknown command {name!r}; known: {', '.join(COMMANDS)}")
            result = self._run[name](body)
        except CommandError as problem:
            log.warning("command %s refused: %s", name, problem)
            reply = {"command": name, "ok": False, "error": str(problem)}
            if problem.field is not None:
                reply["field"] = problem.field
        else:
            log.info("command %s done", name)
            reply = {"command": name, "ok": True, "result": result}
        reply["correlation"] = correlation
        return reply

    def _set(self, body: dict) -> dict:
        allowed = ("movement", "operator", "bill")
        unknown = sorted(set(body) - set(allowed))
        if unknown or not body:
            raise CommandError(f"set takes one or more of {', '.join(allowed)}; got {', '.join(unknown) or 'none'}")
        for key, value in body.items():
            if not isinstance(value, str):
                raise CommandError(f"{key} must be a string")
            if key == "movement":
                try:
                    check_movement(value)
                except ValueError as problem:
                    raise CommandError(f"movement {problem}") from None
            if len(value) > MAX_FIELD_CHARS or not value.isprintable():
                raise CommandError(f"{key} must be printable and at most {MAX_FIELD_CHARS} characters")
        if self.set_context is None:
            raise CommandError("this agent takes no context changes")
        self.set_context(**body)
        return {"queued": body, "applies": "to scans read after this command"}

    def _health(self, body: dict) -> dict:
        if body:
            raise CommandError(f"health takes no arguments; got {', '.join(sorted(body))}")
        return self.health()

    def _reload(self, body: dict) -> dict:
        if body:
            raise CommandError(f"reload takes no arguments; got {', '.join(sorted(body))}")
        if self.reload is None:
            raise CommandError("this agent has no config file to reload")
        try:
            return self.reload()
        except ValueError as problem:
            raise CommandError(f"config not reloaded: {problem}") from None

    def _resend(self, body: dict) -> dict:
        """Send events ``from_seq``..``to_seq`` again, delivered or not: how the back end
        recovers events a broker acknowledged and then lost (it sees the gap in ``seq``)."""
        first, last = body.get("from_seq"), body.get("to_seq", body.get("from_seq"))
        if set(body) - {"from_seq", "to_seq"} or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in (first, last)
        ):
            raise CommandError("resend takes from_seq and optionally to_seq, whole numbers >= 1")
        if last < first or last - first + 1 > MAX_RESEND:
            raise CommandError(f"resend: to_seq must be from from_seq to from_seq + {MAX_RESEND - 1}")
        return {"from_seq": first, "to_seq": last, **self.resend(first, last)}

    def _manifest(self, body: dict) -> dict:
        """A manifest, whole or one part of it; imported once every part is in."""
        if "part" in body:
            try:
                text, progress = self._chunks.add(body, now=time.monotonic())
            except ChunkError as problem:
                raise CommandError(str(problem), field=problem.field) from None
            if text is None:
                return progress
            try:
                body = json.loads(text)
            except ValueError as problem:
                raise CommandError(f"the manifest put together is not JSON: {problem}", field="part") from None
        return self._station_verb("import_manifest")(body)

    def _station_verb(self, name: str) -> Callable[[dict], dict]:
        """The command that runs the station's verb ``name`` (on the pipeline thread)."""

        def run(body: dict) -> dict:
            if self.station is None:
                raise CommandError("this agent takes no document commands")
            verb = getattr(self.station, name)
            try:
                return verb(body, via="mqtt", source_id=SOURCE_ID)
            except DocumentError as problem:
                raise CommandError(str(problem), field=problem.field) from None
            except Exception as problem:  # LedgerError (disk full) or a fault: the transaction rolled back
                raise CommandError(f"{name} not recorded: {problem}") from None

        return run
