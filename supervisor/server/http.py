"""The HTTP API under ``/v1`` as a Starlette app a host can mount.

JSON in and out; every error is ``{"error": {"code", "message"}}`` with its
status. Handlers call the ``Supervisor``; anything that may touch the disk or
spawn runs in a worker thread so the event loop only ever serves sockets.
The host that mounts ``create_app`` starts and stops the Supervisor itself.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from supervisor.embedded import Supervisor
from supervisor.errors import (
    InvalidCursor,
    InvalidRequest,
    RunnerdError,
    SessionBusy,
    SupervisorClosed,
)
from supervisor.ids import validate_turn_id
from supervisor.logs import get_logger
from supervisor.runtime.reader import MAX_EXPORT_LIMIT
from supervisor.server.metrics import render_metrics
from supervisor.server.openapi import CancelBody, PruneBody, StartBody, build
from supervisor.server.sse import EventStream, StreamSet
from supervisor.turns import TurnStatus

_json = msgspec.json.Encoder()
T = TypeVar("T")
MAX_HEADER_BYTES = 16 * 1024


class BodyTooLarge(RunnerdError):
    code = "body_too_large"
    status = 413


class Unauthorized(RunnerdError):
    code = "unauthorized"
    status = 401


def json_response(body: Any, status: int = 200) -> Response:
    return Response(_json.encode(body), status, media_type="application/json")


def error_response(status: int, code: str, message: str, **extra: Any) -> Response:
    return json_response({"error": {"code": code, "message": message, **extra}}, status)


class Api:
    """Route handlers bound to one Supervisor; owns nothing but its limits."""

    def __init__(self, sup: Supervisor, *, max_body_bytes: int, keepalive_s: float,
                 streams: StreamSet, send_timeout_s: float = 30.0) -> None:
        self.send_timeout_s = send_timeout_s
        self._openapi = build()
        self.sup = sup
        self.max_body_bytes = max_body_bytes
        self.keepalive_s = keepalive_s
        self.streams = streams

    async def _body(self, request: Request, kind: type[Any]) -> Any:
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
            raise BodyTooLarge(f"request body over {self.max_body_bytes} bytes")
        chunks = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body_bytes:
                raise BodyTooLarge(f"request body over {self.max_body_bytes} bytes")
            chunks.append(chunk)
        body = b"".join(chunks)
        if not body.strip():
            body = b"{}"
        try:
            return msgspec.json.decode(body, type=kind)
        except msgspec.ValidationError as exc:
            raise InvalidRequest(f"invalid request body: {exc}") from None
        except msgspec.DecodeError as exc:
            raise InvalidRequest(f"malformed JSON: {exc}") from None

    async def start_turn(self, request: Request) -> Response:
        body: StartBody = await self._body(request, StartBody)
        info = await run_in_threadpool(
            lambda: self.sup.start_turn(body.agent, body.input, session_id=body.session_id,
                                        timeout_s=body.timeout_s, multitask=body.multitask))
        return json_response(info, 201)

    async def list_turns(self, request: Request) -> Response:
        q = request.query_params
        status = q.get("status")
        if status is not None and status not in {s.value for s in TurnStatus}:
            raise InvalidRequest(f"unknown status {status[:32]!r}")
        limit = _int_param(q.get("limit"), "limit", default=100, lo=1, hi=10_000)
        turns = await self._read(lambda: self.sup.list_turns(status=status, session_id=q.get("session_id"),
                                                             limit=limit))
        return json_response({"turns": turns})

    async def get_turn(self, request: Request) -> Response:
        return json_response(await self._read(lambda: self.sup.status(request.path_params["turn_id"])))

    async def _read(self, call: Callable[[], T]) -> T:
        """A read from memory on one node; in a cluster it may ask Redis, so never on the event loop."""
        return await run_in_threadpool(call) if self.sup.cluster is not None else call()

    async def cancel(self, request: Request) -> Response:
        turn_id = validate_turn_id(request.path_params["turn_id"])
        body: CancelBody = await self._body(request, CancelBody)
        # Off the loop: ending a queued turn writes and fsyncs its log.
        info = await run_in_threadpool(lambda: self.sup.cancel(turn_id, reason=body.reason))
        return json_response(info, 202)

    async def export(self, request: Request) -> Response:
        turn_id = validate_turn_id(request.path_params["turn_id"])
        q = request.query_params
        limit = _int_param(q.get("limit"), "limit", default=200, lo=0, hi=MAX_EXPORT_LIMIT)
        after = _int_param(q.get("after"), "after", default=None, lo=0, hi=1 << 62)
        compact = _bool_param(q.get("compact"), "compact")
        page = await run_in_threadpool(lambda: self.sup.export(turn_id, limit=limit, after=after,
                                                               compact=compact))
        return json_response(page)

    async def events(self, request: Request) -> Response | EventStream:
        turn_id = validate_turn_id(request.path_params["turn_id"])
        header = request.headers.get("last-event-id")
        if header is not None and header.strip() != "":
            after = _int_param(header.strip(), "Last-Event-ID", default=0, lo=0, hi=1 << 62)
        else:
            after = _int_param(request.query_params.get("after"), "after", default=0, lo=0, hi=1 << 62)
        info = await self._read(lambda: self.sup.status(turn_id))
        if after > info.last_seq:
            raise InvalidCursor(f"cursor {after} is beyond the last seq {info.last_seq}")
        compact = _bool_param(request.query_params.get("compact"), "compact")
        return EventStream(self.sup, turn_id, after=after, keepalive_s=self.keepalive_s,
                           streams=self.streams, compact=compact, send_timeout_s=self.send_timeout_s)

    async def prune(self, request: Request) -> Response:
        body: PruneBody = await self._body(request, PruneBody)
        report = await run_in_threadpool(lambda: self.sup.prune(dry_run=body.dry_run))
        return json_response(report)

    async def agents(self, request: Request) -> Response:
        return json_response({"agents": [{"name": n} for n in sorted(self.sup.agents)]})

    async def health(self, request: Request) -> Response:
        healthy = self.sup.relay.alive and not self.streams.closing
        running = self.sup.table.running
        body: dict[str, object] = {"status": "ok" if healthy else "unavailable", "running": running,
                                   "open_streams": self.streams.count}
        if self.sup.cluster is not None:  # several nodes: this one and the cluster, or why not
            body["cluster"], reachable = await run_in_threadpool(self.sup.cluster.health)
            healthy = healthy and reachable
            body["status"] = "ok" if healthy else "unavailable"
        return json_response(body, 200 if healthy else 503)

    async def openapi(self, request: Request) -> Response:
        return json_response(self._openapi)

    async def metrics(self, request: Request) -> Response:
        cluster = await run_in_threadpool(self.sup.cluster.health) if self.sup.cluster is not None else None
        return Response(render_metrics(self.sup, self.streams, cluster[0] if cluster else None),
                        media_type="text/plain; version=0.0.4")


def _bool_param(raw: str | None, name: str) -> bool:
    if raw is None or raw in ("", "0", "false"):
        return False
    if raw in ("1", "true"):
        return True
    raise InvalidRequest(f"{name} must be true or false, got {raw[:32]!r}")


def _int_param(raw: str | None, name: str, *, default: int | None, lo: int, hi: int) -> Any:
    if raw is None or raw == "":
        return default
    if not (raw.isascii() and raw.isdigit()) or not lo <= int(raw) <= hi:  # "²".isdigit() is True
        raise InvalidRequest(f"{name} must be an integer in [{lo}, {hi}], got {raw[:32]!r}")
    return int(raw)


async def _runnerd_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RunnerdError)
    extra = {"active_turn_id": exc.active_turn_id} if isinstance(exc, SessionBusy) else {}
    return error_response(exc.status, exc.code, str(exc), **extra)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    return error_response(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail))


async def _internal_error(request: Request, exc: Exception) -> Response:
    get_logger("runnerd.http").error("internal_error", path=request.url.path, error=repr(exc))
    return error_response(500, "internal", "internal error; see the daemon's log")


class Guard:
    """ASGI middleware: bearer token on TCP, 503 while shutting down."""

    def __init__(self, app: ASGIApp, *, token: str | None, streams: StreamSet) -> None:
        self.app = app
        self.token = token.encode() if token else None
        self.streams = streams

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.streams.closing:
            await error_response(503, "shutting_down", "runnerd is shutting down")(scope, receive, send)
            return
        header_bytes = (sum(len(k) + len(v) for k, v in scope["headers"]) + len(scope.get("raw_path") or b"")
                        + len(scope.get("query_string") or b""))
        if header_bytes > MAX_HEADER_BYTES:  # the parser only bounds what arrives in pieces
            await error_response(431, "headers_too_large",
                                 f"request line and headers over {MAX_HEADER_BYTES} bytes")(scope, receive, send)
            return
        server = scope.get("server")
        over_tcp = server is not None and server[1] is not None  # a unix socket has no port
        if self.token is not None and over_tcp:
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, b"Bearer " + self.token):
                await error_response(401, Unauthorized.code, "a valid bearer token is required")(
                    scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(sup: Supervisor, *, max_body_bytes: int = 1 << 20, keepalive_s: float = 15.0,
               token: str | None = None, streams: StreamSet | None = None,
               send_timeout_s: float = 30.0) -> Starlette:
    """The ASGI app. ``streams`` lets the daemon close every open SSE stream at shutdown."""
    streams = streams or StreamSet()
    api = Api(sup, max_body_bytes=max_body_bytes, keepalive_s=keepalive_s, streams=streams,
              send_timeout_s=send_timeout_s)
    routes = [
        Route("/v1/turns", api.start_turn, methods=["POST"]),
        Route("/v1/turns", api.list_turns, methods=["GET"]),
        Route("/v1/turns/{turn_id}", api.get_turn, methods=["GET"]),
        Route("/v1/turns/{turn_id}/events", api.events, methods=["GET"]),
        Route("/v1/turns/{turn_id}/export", api.export, methods=["GET"]),
        Route("/v1/turns/{turn_id}/cancel", api.cancel, methods=["POST"]),
        Route("/v1/prune", api.prune, methods=["POST"]),
        Route("/v1/agents", api.agents, methods=["GET"]),
        Route("/v1/health", api.health, methods=["GET"]),
        Route("/v1/openapi.json", api.openapi, methods=["GET"]),
        Route("/metrics", api.metrics, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={RunnerdError: _runnerd_error, HTTPException: _http_error,
                            Exception: _internal_error},
    )
    app.state.streams = streams
    app.state.supervisor = sup
    app.add_middleware(Guard, token=token, streams=streams)
    return app


__all__ = ["create_app", "StreamSet", "SupervisorClosed"]
