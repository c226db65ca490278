"""The OpenAPI 3.1 document for ``/v1``, built from the same msgspec types the API uses.

Exact by intent: every enum, bound and pattern the server enforces is in the
schema, and every status an operation can answer is listed (a test runs
schemathesis ``--checks all`` against a real daemon with this document).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from supervisor.ids import SESSION_PATTERN, TURN_ID_PATTERN
from supervisor.runtime.reader import MAX_EXPORT_LIMIT
from supervisor.server.agui import openapi_paths as agui_openapi_paths
from supervisor.storage.retention import PruneReport
from supervisor.turns import ExportPage, TurnInfo, TurnStatus

MAX_LIST_LIMIT = 10_000
MAX_CURSOR = 1 << 62
MAX_TIMEOUT_S = 7 * 86400
MAX_AGENT_NAME = 128
MAX_REASON = 1024


class StartBody(msgspec.Struct, forbid_unknown_fields=True):
    agent: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_AGENT_NAME)]
    input: Any = None
    session_id: str | None = None  # checked by validate_session_id: its own error code
    timeout_s: Annotated[float, msgspec.Meta(gt=0, le=MAX_TIMEOUT_S)] | None = None
    multitask: Literal["reject", "enqueue", "interrupt"] = "reject"


class CancelBody(msgspec.Struct, forbid_unknown_fields=True):
    reason: Annotated[str, msgspec.Meta(max_length=MAX_REASON)] | None = None


class PruneBody(msgspec.Struct, forbid_unknown_fields=True):
    dry_run: bool = False


class ErrorDetail(msgspec.Struct):
    code: str
    message: str


class ErrorBody(msgspec.Struct):
    error: ErrorDetail


class TurnList(msgspec.Struct):
    turns: list[TurnInfo]


class AgentName(msgspec.Struct):
    name: str


class AgentList(msgspec.Struct):
    agents: list[AgentName]


class Health(msgspec.Struct):
    status: Literal["ok", "unavailable"]
    running: int
    open_streams: int


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(name: str) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": _ref(name)}}}


_TURN_ID = {"name": "turn_id", "in": "path", "required": True,
            "schema": {"type": "string", "pattern": TURN_ID_PATTERN}}
# One parsed SSE event (OpenAPI 3.1: the media type's schema is per event): an AG-UI event
# with its seq as ``id``, or the ``gap``/``shutdown`` notices (comments are not events).
_SSE_EVENT = {"type": "object", "required": ["data"],
              "properties": {"event": {"type": "string", "enum": ["message", "gap", "shutdown"]},
                             "id": {"type": "string", "pattern": "^[0-9]+$"},
                             "data": {"type": "string", "contentMediaType": "application/json"}}}
_CURSOR = {"type": "integer", "minimum": 0, "maximum": MAX_CURSOR}
_FEED_EVENT = {"type": "object", "required": ["data"],
               "properties": {"event": {"type": "string", "enum": ["snapshot", "turn", "shutdown"]},
                              "id": {"type": "string", "pattern": "^[0-9]+$"},
                              "data": {"type": "string", "contentMediaType": "application/json"}}}
_BOOL = {"type": "string", "enum": ["true", "false", "1", "0"]}

# What any request can get before its route runs (see supervisor.server.access):
# 400 bad parameters, 401/403/421 on TCP, 431 headers, 503 while shutting down.
_ALWAYS = (400, 401, 403, 421, 431, 503)
_POST = (413, 415)
_DESCRIPTIONS = {400: "bad request", 401: "TCP without the bearer token", 403: "foreign Origin",
                 404: "unknown turn or agent", 409: "session busy", 413: "body too large",
                 415: "not application/json", 421: "Host is not this listener", 429: "queue full",
                 431: "headers too large", 500: "state directory error", 503: "shutting down or out of resources"}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(code): {"description": _DESCRIPTIONS[code], **_json("ErrorBody")}
            for code in sorted({*_ALWAYS, *statuses})}


def _query(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema}


def build(agents: list[str] | None = None) -> dict[str, Any]:
    """``agents``: the configured names, listed as the enum of ``StartBody.agent``."""
    _, components = msgspec.json.schema_components(
        [StartBody, CancelBody, PruneBody, ErrorBody, TurnList, TurnInfo, ExportPage, PruneReport,
         AgentList, Health],
        ref_template="#/components/schemas/{name}")
    components["StartBody"]["properties"]["session_id"] = {
        "anyOf": [{"type": "string", "pattern": SESSION_PATTERN}, {"type": "null"}], "default": None}
    if agents:
        components["StartBody"]["properties"]["agent"] = {"type": "string", "enum": sorted(agents)}
    statuses = [s.value for s in TurnStatus]
    paths: dict[str, Any] = {
        "/v1/turns": {
            "post": {"summary": "Start a turn", "requestBody": {"required": True, **_json("StartBody")},
                     "responses": {"201": {"description": "started or queued", **_json("TurnInfo")},
                                   **_errors(*_POST, 404, 409, 429, 500)}},
            "get": {"summary": "List turns, newest first",
                    "parameters": [_query("status", {"type": "string", "enum": statuses}),
                                   _query("session_id", {"type": "string", "pattern": SESSION_PATTERN}),
                                   _query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIST_LIMIT})],
                    "responses": {"200": {"description": "turns", **_json("TurnList")}, **_errors()}},
        },
        "/v1/turns/events": {
            "get": {"summary": "Turn status changes as Server-Sent Events, resumable",
                    "description": (
                        "Without a cursor (or with one older than the in-memory ring, or from an earlier "
                        "run): first `event: snapshot` with data `{\"turns\": [TurnInfo...]}` (newest first), "
                        "then `event: turn` with data the whole TurnInfo at each status change (queued, "
                        "starting, running, and the ending). `id:` only grows, also across restarts; "
                        "resume with `Last-Event-ID` (or `?after=`). `event: shutdown` when the daemon stops."),
                    "parameters": [_query("after", {"type": "integer", "minimum": 0, "maximum": (1 << 53) - 1}),
                                   _query("session_id", {"type": "string", "pattern": SESSION_PATTERN}),
                                   _query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIST_LIMIT}),
                                   {"name": "Last-Event-ID", "in": "header", "required": False,
                                    "schema": {"type": "string", "pattern": "^[0-9]{0,15}$"}}],
                    "responses": {"200": {"description": "event stream (snapshot, turn, shutdown)",
                                          "content": {"text/event-stream": {"schema": _FEED_EVENT}}},
                                  **_errors()}}},
        "/v1/turns/usage": {
            "get": {"summary": "Memory (RSS of the process tree), process count and last seq of each running turn",
                    "responses": {"200": {"description": "{turns: {turn_id: {rss_bytes, processes, last_seq}}}",
                                          "content": {"application/json": {"schema": {"type": "object"}}}},
                                  **_errors()}}},
        "/v1/turns/{turn_id}/output": {
            "get": {"summary": "The turn's captured stdout/stderr, at most `limit` bytes from `offset`",
                    "parameters": [_TURN_ID, _query("offset", _CURSOR),
                                   _query("limit", {"type": "integer", "minimum": 0, "maximum": 1 << 20})],
                    "responses": {"200": {"description": "{turn_id, text, offset, next_offset, size, dropped}",
                                          "content": {"application/json": {"schema": {"type": "object"}}}},
                                  **_errors(404)}}},
        "/v1/turns/{turn_id}": {
            "get": {"summary": "A turn's status", "parameters": [_TURN_ID],
                    "responses": {"200": {"description": "status", **_json("TurnInfo")}, **_errors(404)}}},
        "/v1/turns/{turn_id}/events": {
            "get": {"summary": "Server-Sent Events; resume with Last-Event-ID or ?after=",
                    "parameters": [_TURN_ID, _query("after", _CURSOR), _query("compact", _BOOL),
                                   {"name": "Last-Event-ID", "in": "header", "required": False,
                                    "schema": {"type": "string", "pattern": "^[0-9]{0,19}$"}}],
                    "responses": {"200": {"description": "event stream (id: <seq>, data: <event JSON>)",
                                          "content": {"text/event-stream": {"schema": _SSE_EVENT}}},
                                  **_errors(404, 500)}}},
        "/v1/turns/{turn_id}/export": {
            "get": {"summary": "A page of history as plain JSON (bounded in count and bytes); never waits",
                    "parameters": [_TURN_ID, _query("after", _CURSOR), _query("compact", _BOOL),
                                   _query("limit", {"type": "integer", "minimum": 0, "maximum": MAX_EXPORT_LIMIT})],
                    "responses": {"200": {"description": "page", **_json("ExportPage")}, **_errors(404, 500)}}},
        "/v1/turns/{turn_id}/cancel": {
            "post": {"summary": "Cancel (idempotent)", "parameters": [_TURN_ID],
                     "requestBody": {"required": False, **_json("CancelBody")},
                     "responses": {"202": {"description": "cancel requested", **_json("TurnInfo")},
                                   **_errors(*_POST, 404, 500)}}},
        "/v1/prune": {
            "post": {"summary": "Apply retention now", "requestBody": {"required": False, **_json("PruneBody")},
                     "responses": {"200": {"description": "report", **_json("PruneReport")},
                                   **_errors(*_POST, 500)}}},
        "/v1/shutdown": {
            "post": {"summary": "Stop the daemon gracefully, as SIGTERM does (daemon only, not a mounted app)",
                     "requestBody": {"required": False,
                                     "content": {"application/json": {"schema": {"type": "object"}}}},
                     "responses": {"202": {"description": "stopping: {status, pid}",
                                           "content": {"application/json": {"schema": {"type": "object"}}}},
                                   **_errors(*_POST)}}},
        "/v1/agents": {"get": {"summary": "Configured agent names",
                               "responses": {"200": {"description": "names", **_json("AgentList")}, **_errors()}}},
        "/v1/health": {"get": {"summary": "Health",
                               "responses": {"200": {"description": "ok", **_json("Health")},
                                             **_errors()}}},
    }
    # 503 of /v1/health is a Health body too (the relay is down), not an ErrorBody.
    paths["/v1/health"]["get"]["responses"]["503"] = {
        "description": "unavailable or shutting down",
        "content": {"application/json": {"schema": {"anyOf": [_ref("Health"), _ref("ErrorBody")]}}}}
    paths.update(agui_openapi_paths())
    return {"openapi": "3.1.0",
            "info": {"title": "runnerd", "version": "1", "description": "Supervisor daemon for AI agent runs"},
            "paths": paths, "components": {"schemas": components}}
