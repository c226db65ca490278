"""The OpenAPI 3.1 document for ``/v1``, built from the same msgspec types the API uses."""

from __future__ import annotations

from typing import Any

import msgspec

from supervisor.turns import ExportPage
from supervisor.storage.retention import PruneReport
from supervisor.turns import TurnInfo


class StartBody(msgspec.Struct, forbid_unknown_fields=True):
    agent: str
    input: Any = None
    session_id: str | None = None
    timeout_s: float | None = None
    multitask: str = "reject"


class CancelBody(msgspec.Struct, forbid_unknown_fields=True):
    reason: str | None = None


class PruneBody(msgspec.Struct, forbid_unknown_fields=True):
    dry_run: bool = False


class ErrorDetail(msgspec.Struct):
    code: str
    message: str


class ErrorBody(msgspec.Struct):
    error: ErrorDetail


class TurnList(msgspec.Struct):
    turns: list[TurnInfo]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(name: str) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": _ref(name)}}}


_TURN_ID = {"name": "turn_id", "in": "path", "required": True,
            "schema": {"type": "string", "pattern": "^[0-9A-HJKMNP-TV-Z]{26}$"}}
_ERRORS = {str(code): {"description": "error", **_json("ErrorBody")}
           for code in (400, 401, 404, 405, 409, 410, 413, 429, 503)}


def _query(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema}


def build() -> dict[str, Any]:
    _, components = msgspec.json.schema_components(
        [StartBody, CancelBody, PruneBody, ErrorBody, TurnList, TurnInfo, ExportPage, PruneReport],
        ref_template="#/components/schemas/{name}")
    cursor = {"type": "integer", "minimum": 0}
    paths: dict[str, Any] = {
        "/v1/turns": {
            "post": {"summary": "Start a turn", "requestBody": {"required": True, **_json("StartBody")},
                     "responses": {"201": {"description": "started or queued", **_json("TurnInfo")}, **_ERRORS}},
            "get": {"summary": "List turns, newest first",
                    "parameters": [_query("status", {"type": "string"}), _query("session_id", {"type": "string"}),
                                   _query("limit", {"type": "integer", "minimum": 1, "maximum": 10000})],
                    "responses": {"200": {"description": "turns", **_json("TurnList")}, **_ERRORS}},
        },
        "/v1/turns/events": {
            "get": {"summary": "Turn status changes as Server-Sent Events, resumable",
                    "description": (
                        "Without a cursor (or with one older than the in-memory ring, or from an earlier "
                        "run): first `event: snapshot` with data `{\"turns\": [TurnInfo...]}` (newest first), "
                        "then `event: turn` with data the whole TurnInfo at each status change (queued, "
                        "starting, running, and the ending). `id:` only grows, also across restarts; "
                        "resume with `Last-Event-ID` (or `?after=`). `event: shutdown` when the daemon stops."),
                    "parameters": [_query("after", cursor), _query("session_id", {"type": "string"}),
                                   _query("limit", {"type": "integer", "minimum": 1, "maximum": 10000}),
                                   {"name": "Last-Event-ID", "in": "header", "required": False, "schema": cursor}],
                    "responses": {"200": {"description": "event stream",
                                          "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                                  **_ERRORS}}},
        "/v1/turns/{turn_id}": {
            "get": {"summary": "A turn's status", "parameters": [_TURN_ID],
                    "responses": {"200": {"description": "status", **_json("TurnInfo")}, **_ERRORS}}},
        "/v1/turns/{turn_id}/events": {
            "get": {"summary": "Server-Sent Events; resume with Last-Event-ID or ?after=",
                    "parameters": [_TURN_ID, _query("after", cursor), _query("compact", {"type": "boolean"}),
                                   {"name": "Last-Event-ID", "in": "header", "required": False, "schema": cursor}],
                    "responses": {"200": {"description": "event stream",
                                          "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                                  **_ERRORS}}},
        "/v1/turns/{turn_id}/export": {
            "get": {"summary": "A page of history as plain JSON; never waits",
                    "parameters": [_TURN_ID, _query("after", cursor), _query("compact", {"type": "boolean"}),
                                   _query("limit", {"type": "integer", "minimum": 0, "maximum": 10000})],
                    "responses": {"200": {"description": "page", **_json("ExportPage")}, **_ERRORS}}},
        "/v1/turns/{turn_id}/output": {
            "get": {"summary": "The turn's captured stdout/stderr, at most `limit` bytes from `offset`",
                    "parameters": [_TURN_ID, _query("offset", cursor),
                                   _query("limit", {"type": "integer", "minimum": 0, "maximum": 1 << 20})],
                    "responses": {"200": {"description": "{turn_id, text, offset, next_offset, size, dropped}"},
                                  **_ERRORS}}},
        "/v1/turns/usage": {
            "get": {"summary": "Memory (RSS of the process tree), process count and last seq of each running turn",
                    "responses": {"200": {"description": "{turns: {turn_id: {rss_bytes, processes, last_seq}}}"}}}},
        "/v1/turns/{turn_id}/cancel": {
            "post": {"summary": "Cancel (idempotent)", "parameters": [_TURN_ID],
                     "requestBody": {"required": False, **_json("CancelBody")},
                     "responses": {"202": {"description": "cancel requested", **_json("TurnInfo")}, **_ERRORS}}},
        "/v1/prune": {
            "post": {"summary": "Apply retention now", "requestBody": {"required": False, **_json("PruneBody")},
                     "responses": {"200": {"description": "report", **_json("PruneReport")}, **_ERRORS}}},
        "/v1/shutdown": {
            "post": {"summary": "Stop the daemon gracefully, as SIGTERM does (daemon only, not a mounted app)",
                     "requestBody": {"required": False, "content": {"application/json": {"schema": {"type": "object"}}}},
                     "responses": {"202": {"description": "stopping: {status, pid}"}, **_ERRORS}}},
        "/v1/agents": {"get": {"summary": "Configured agent names",
                               "responses": {"200": {"description": "names"}}}},
        "/v1/health": {"get": {"summary": "Health", "responses": {"200": {"description": "ok"},
                                                                   "503": {"description": "unavailable"}}}},
    }
    return {"openapi": "3.1.0",
            "info": {"title": "runnerd", "version": "1", "description": "Supervisor daemon for AI agent runs"},
            "paths": paths, "components": {"schemas": components}}
