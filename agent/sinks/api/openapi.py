"""The OpenAPI 3.1 description of the local API, served at ``/v1/openapi.json``.

``docs/openapi.json`` is this document written out (``python -m agent.sinks.api.openapi > docs/openapi.json``);
tests/test_api_schema.py checks that the two agree and runs schemathesis against the served one.

>>> spec = openapi()
>>> spec["openapi"], sorted(spec["paths"])[:3]
('3.1.0', ['/metrics', '/v1/acknowledge', '/v1/decisions'])
>>> "/v1/manifests" in spec["paths"]
True
"""

from __future__ import annotations

import json
import sys

from agent import __version__
from agent.domain import DOCUMENT_KINDS, DOCUMENT_LIMIT

_ERROR = {"$ref": "#/components/schemas/Error"}
_TEXT = {"type": "string", "minLength": 1, "maxLength": 200}


def _json(schema: dict) -> dict:
    return {"application/json": {"schema": schema}}


def _errors(*statuses: int) -> dict:
    words = {
        400: "Bad input; `field` names it.",
        401: "Missing or wrong bearer token (only when `[api] token_file` is set).",
        404: "No such document or scan.",
        408: "The body did not arrive in time.",
        409: "The station refused the command (e.g. a document is open already, not locked).",
        413: "The body is too large.",
        503: "The pipeline did not take the command in time, or the agent is stopping.",
    }
    return {str(s): {"description": words[s], "content": _json(_ERROR)} for s in (401, *statuses)}


def _command(summary: str, body: dict | None, ok: int, *errors: int, params: list | None = None) -> dict:
    operation: dict = {
        "summary": summary,
        "responses": {
            str(ok): {
                "description": "Recorded: the rows it added.",
                "content": _json({"$ref": "#/components/schemas/Reply"}),
            },
            **_errors(400, 408, 409, 413, 503, *errors),
        },
    }
    if body is not None:
        operation["requestBody"] = {"required": True, "content": _json(body)}
    if params:
        operation["parameters"] = params
    return {"post": operation}


def _path_param(name: str, description: str) -> dict:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": _TEXT}


def openapi() -> dict:
    """The description of every endpoint."""
    doc_id = _path_param("doc_id", "The document's id.")
    event_id = _path_param("event_id", "The scan's event id (a UUID).")
    line = {
        "type": "object",
        "additionalProperties": False,
        "required": ["product_id", "expected"],
        "properties": {
            "product_id": {"type": "string", "pattern": "^([0-9]{7}|[0-9]{14})$"},
            "name": {"type": "string", "maxLength": 100},
            "expected": {"type": "integer", "minimum": 1, "maximum": DOCUMENT_LIMIT},
            "split_units": {"type": "integer", "minimum": 1, "maximum": DOCUMENT_LIMIT},
        },
    }
    paths: dict = {
        "/v1/status": {
            "get": {
                "summary": "Device state, scanners present, outbox depth and age, the open document.",
                "responses": {
                    "200": {"description": "Now.", "content": _json({"$ref": "#/components/schemas/Status"})},
                    **_errors(),
                },
            }
        },
        "/v1/decisions": {
            "get": {
                "summary": "Events from the ledger after a seq, oldest first (the JSON the broker gets).",
                "parameters": [
                    {"name": "after_seq", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                ],
                "responses": {
                    "200": {"description": "One page.", "content": _json({"$ref": "#/components/schemas/Page"})},
                    **_errors(400),
                },
            }
        },
        "/v1/decisions/stream": {
            "get": {
                "summary": "Server-Sent Events: each event after its commit, `id:` = seq. Resume with Last-Event-ID.",
                "parameters": [
                    {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string", "pattern": "^[0-9]+$"}},
                    {"name": "after_seq", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                ],
                "responses": {
                    "200": {
                        "description": "`data:` lines each hold one event as JSON (see docs/events.md).",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    **_errors(400, 503),
                },
            }
        },
        "/v1/documents": _command(
            "Open a document (the MQTT open_document command's JSON).",
            {
                "type": "object",
                "additionalProperties": False,
                "required": ["id", "kind"],
                "properties": {
                    "id": _TEXT,
                    "kind": {"enum": list(DOCUMENT_KINDS)},
                    "ref": {"type": "object", "additionalProperties": {"type": "string"}},
                    "lines": {"type": "array", "items": line},
                },
            },
            201,
        ),
        "/v1/documents/{doc_id}": {
            "get": {
                "summary": "A document with its lines, progress, codes, voids and exceptions.",
                "parameters": [doc_id],
                "responses": {
                    "200": {
                        "description": "The document.",
                        "content": _json({"$ref": "#/components/schemas/Document"}),
                    },
                    **_errors(404),
                },
            }
        },
        "/v1/documents/{doc_id}/close": _command(
            "Close a document.", {"type": "object", "additionalProperties": False}, 200, 404, params=[doc_id]
        ),
        "/v1/documents/{doc_id}/exceptions": _command(
            "Count an item without a readable code against a line.",
            {
                "type": "object",
                "additionalProperties": False,
                "required": ["line", "kind", "reason", "approver"],
                "properties": {
                    "line": {"type": "string", "pattern": "^([0-9]{7}|[0-9]{14})$"},
                    "kind": {"enum": ["uncoded", "damaged"]},
                    "reason": {"type": "string", "minLength": 1, "maxLength": 100},
                    "approver": _TEXT,
                    "units": {"type": "integer", "minimum": 1, "maximum": DOCUMENT_LIMIT},
                },
            },
            200,
            404,
            params=[doc_id],
        ),
        "/v1/scans/{event_id}/void": _command(
            "Void a scan of a document (a reversal once the document has closed).",
            {
                "type": "object",
                "additionalProperties": False,
                "required": ["reason"],
                "properties": {"reason": {"type": "string", "minLength": 1, "maxLength": 100}, "approver": _TEXT},
            },
            200,
            404,
            params=[event_id],
        ),
        "/v1/acknowledge": _command(
            "Lift the station's lock.",
            {"type": "object", "additionalProperties": False, "required": ["by"], "properties": {"by": _TEXT}},
            200,
        ),
        "/metrics": {
            "get": {
                "summary": "Prometheus text: verdict counters, read-to-commit latency, outbox, scanners, uplink.",
                "responses": {
                    "200": {
                        "description": "Exposition format 0.0.4.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **_errors(),
                },
            }
        },
        "/v1/openapi.json": {
            "get": {
                "summary": "This description.",
                "responses": {
                    "200": {"description": "OpenAPI 3.1.", "content": _json({"type": "object"})},
                    **_errors(),
                },
            }
        },
    }
    paths["/v1/manifests"] = _command(
        "Import a supplier's delivery manifest (docs/manifest.md); the same one again records nothing (200).",
        {"type": "object"},
        201,
    )
    paths["/v1/manifests"]["post"]["responses"]["200"] = {
        "description": "Imported before: nothing recorded.",
        "content": _json({"$ref": "#/components/schemas/Reply"}),
    }
    event = {
        "type": "object",
        "description": "A scan-event/1 or document-event/1, as published over MQTT (docs/events.md).",
        "required": ["schema", "event_id", "seq", "verdict"],
        "properties": {
            "schema": {"enum": ["scan-event/1", "document-event/1"]},
            "event_id": {"type": "string"},
            "seq": {"type": "integer", "minimum": 1},
            "verdict": {"type": "string"},
        },
    }
    nullable_number = {"type": ["number", "null"]}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "scan-agent local API",
            "version": __version__,
            "description": "The kiosk's decisions and commands for the counter's POS, HIS or WMS (docs/pos.md).",
        },
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "string"}, "field": {"type": "string"}},
                },
                "Event": event,
                "Page": {
                    "type": "object",
                    "required": ["events", "next_after_seq", "last_seq"],
                    "properties": {
                        "events": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}},
                        "next_after_seq": {"type": "integer", "minimum": 0},
                        "last_seq": {"type": "integer", "minimum": 0},
                    },
                },
                "Reply": {
                    "type": "object",
                    "required": ["rows"],
                    "properties": {
                        "rows": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["verdict", "event_id", "seq"],
                                "properties": {
                                    "verdict": {"type": "string"},
                                    "reason": {"type": ["string", "null"]},
                                    "event_id": {"type": ["string", "null"]},
                                    "seq": {"type": ["integer", "null"]},
                                    "document": {"type": ["object", "null"]},
                                    "progress": {"type": ["object", "null"]},
                                },
                            },
                        }
                    },
                },
                "Status": {
                    "type": "object",
                    "required": [
                        "device_id",
                        "site_id",
                        "states",
                        "scanners",
                        "uplink",
                        "outbox",
                        "document",
                        "lock",
                        "last_seq",
                    ],
                    "properties": {
                        "device_id": {"type": "string"},
                        "site_id": {"type": "string"},
                        "states": {"type": "array", "items": {"type": "string"}},
                        "scanners": {"type": "object", "additionalProperties": {"type": "boolean"}},
                        "uplink": {
                            "type": "object",
                            "required": ["enabled", "connected"],
                            "properties": {"enabled": {"type": "boolean"}, "connected": {"type": "boolean"}},
                        },
                        "outbox": {
                            "type": "object",
                            "required": ["depth", "oldest_age_s"],
                            "properties": {"depth": {"type": "integer"}, "oldest_age_s": nullable_number},
                        },
                        "document": {"type": ["object", "null"]},
                        "lock": {"type": ["object", "null"]},
                        "last_seq": {"type": "integer", "minimum": 0},
                        "stream_clients": {"type": "integer", "minimum": 0},
                    },
                },
                "Document": {
                    "type": "object",
                    "required": ["id", "kind", "status", "progress", "lines", "codes"],
                    "properties": {
                        "id": {"type": "string"},
                        "kind": {"type": "string"},
                        "status": {"type": "string"},
                        "progress": {"type": "object"},
                        "lines": {"type": "array"},
                        "codes": {"type": "array"},
                    },
                },
            },
        },
    }


if __name__ == "__main__":
    served = openapi()
    sys.stdout.write(json.dumps(served, indent=2, ensure_ascii=False) + "\n")
