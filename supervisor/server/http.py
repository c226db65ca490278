"""The HTTP API under ``/v1`` as a Starlette app a host can mount.

JSON in and out; every error is ``{"error": {"code", "message"}}`` with its
status. Handlers call the ``Supervisor``; anything that may touch the disk or
spawn runs in a worker thread so the event loop only ever serves sockets.
The host that mounts ``create_app`` starts and stops the Supervisor itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from supervisor.embedded import CANCEL_ACK_S, Supervisor
from supervisor.errors import (
    InvalidCursor,
    InvalidRequest,
    RunnerdError,
    SessionBusy,
    SupervisorClosed,
)
from supervisor.ids import validate_session_id, validate_turn_id
from supervisor.logs import get_logger
from supervisor.runtime.reader import MAX_EXPORT_LIMIT
from supervisor.server.access import AccessGuard, TcpPolicy
from supervisor.server.agui import agui_routes
from supervisor.server.bodies import BodyTooLarge, read_json
from supervisor.server.connections import ConnectionStats
from supervisor.server.console import UI_PATHS, console_routes
from supervisor.server.feedstream import TurnFeedStream
from supervisor.server.metrics import render_metrics
from supervisor.server.openapi import (
    MAX_CURSOR,
    MAX_LIST_LIMIT,
    CancelBody,
    PruneBody,
    StartBody,
    build,
)
from supervisor.server.sse import EventStream, StreamSet
from supervisor.turns import TurnStatus

_json = msgspec.json.Encoder()
T = TypeVar("T")


def json_response(body: Any, status: int = 200) -> Response:
    return Response(_json.encode(body), status, media_type="application/json")


def error_response(status: int, code: str, message: str, **extra: Any) -> Response:
    return json_response({"error": {"code": code, "message": message, **extra}}, status)


class Api:
    """Route handlers bound to one Supervisor; owns nothing but its limits."""

    def __init__(self, sup: Supervisor, *, max_body_bytes: int, keepalive_s: float,
                 streams: StreamSet, send_timeout_s: float = 30.0,
                 connections: ConnectionStats | None = None,
                 on_shutdown: Callable[[], None] | None = None) -> None:
        self.send_timeout_s = send_timeout_s
        self.connections = connections
        self.on_shutdown = on_shutdown
        self._openapi = build(agents=list(sup.agents))
        self.sup = sup
        self.max_body_bytes = max_body_bytes
        self.keepalive_s = keepalive_s
        self.streams = streams

    async def _body(self, request: Request, kind: type[Any]) -> Any:
        return await read_json(request, kind, self.max_body_bytes)

    async def turns(self, request: Request) -> Response:
        """One route per path, so a 405 names every method of it in ``Allow``."""
        return await (self.start_turn(request) if request.method == "POST" else self.list_turns(request))

    async def start_turn(self, request: Request) -> Response:
        body: StartBody = await self._body(request, StartBody)
        info = await run_in_threadpool(
            lambda: self.sup.start_turn(body.agent, body.input, session_id=body.session_id,
                                        timeout_s=body.timeout_s, multitask=body.multitask))
        return json_response(info, 201)

    async def list_turns(self, request: Request) -> Response:
        q = _query(request)
        status = q.get("status")
        if status is not None and status not in {s.value for s in TurnStatus}:
            raise InvalidRequest(f"unknown status {status[:32]!r}")
        limit = _int_param(q.get("limit"), "limit", default=100, lo=1, hi=MAX_LIST_LIMIT)
        session_id = q.get("session_id")
        if session_id is not None:
            validate_session_id(session_id)
        turns = await self._read(lambda: self.sup.list_turns(status=status, session_id=session_id, limit=limit))
        return json_response({"turns": turns})

    async def turn_changes(self, request: Request) -> TurnFeedStream:
        q = request.query_params
        header = request.headers.get("last-event-id", "").strip() or q.get("after")
        after = _int_param(header, "Last-Event-ID", default=None, lo=0, hi=(1 << 53) - 1)
        limit = _int_param(q.get("limit"), "limit", default=100, lo=1, hi=10_000)
        return TurnFeedStream(self.sup, after=after, session_id=q.get("session_id"), limit=limit,
                              keepalive_s=self.keepalive_s, streams=self.streams,
                              send_timeout_s=self.send_timeout_s)

    async def get_turn(self, request: Request) -> Response:
        return json_response(await self._read(lambda: self.sup.status(request.path_params["turn_id"])))

    async def _read(self, call: Callable[[], T]) -> T:
        """A read from memory on one node; in a cluster it may ask Redis, so never on the event loop."""
        return await run_in_threadpool(call) if self.sup.cluster is not None else call()

    async def cancel(self, request: Request) -> Response:
        turn_id = validate_turn_id(request.path_params["turn_id"])
        body: CancelBody = await self._body(request, CancelBody)
        # A running turn's token is set here, on the loop (that never blocks): the agent
        # starts stopping without waiting for a worker thread. Only the wait for the
        # relay's acknowledgement goes off the loop, and so does every other case
        # (ending a queued turn writes and fsyncs its log; another node's turn).
        ack = self.sup.cancel_nowait(turn_id, reason=body.reason)
        if ack is None:
            info = await run_in_threadpool(lambda: self.sup.cancel(turn_id, reason=body.reason))
        else:
            await run_in_threadpool(ack.wait, CANCEL_ACK_S)
            info = await self._read(lambda: self.sup.status(turn_id))
        return json_response(info, 202)

    async def export(self, request: Request) -> Response:
        turn_id = validate_turn_id(request.path_params["turn_id"])
        q = _query(request)
        limit = _int_param(q.get("limit"), "limit", default=200, lo=0, hi=MAX_EXPORT_LIMIT)
        after = _int_param(q.get("after"), "after", default=None, lo=0, hi=MAX_CURSOR)
        compact = _bool_param(q.get("compact"), "compact")
        page = await run_in_threadpool(lambda: self.sup.export(turn_id, limit=limit, after=after,
                                                               compact=compact))
        return json_response(page)

    async def events(self, request: Request) -> Response | EventStream:
        turn_id = validate_turn_id(request.path_params["turn_id"])
        q = _query(request)
        after = _int_param(q.get("after"), "after", default=0, lo=0, hi=MAX_CURSOR)
        header = request.headers.get("last-event-id")
        if header is not None and header.strip() != "":  # a reconnecting EventSource: it wins
            after = _int_param(header.strip(), "Last-Event-ID", default=0, lo=0, hi=MAX_CURSOR)
        info = await self._read(lambda: self.sup.status(turn_id))
        if after > info.last_seq:
            raise InvalidCursor(f"cursor {after} is beyond the last seq {info.last_seq}")
        compact = _bool_param(q.get("compact"), "compact")
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
                                   "open_streams": self.streams.count,
                                   "containment": msgspec.to_builtins(self.sup.containment)}
        if self.sup.cluster is not None:  # several nodes: this one and the cluster, or why not
            body["cluster"], reachable = await run_in_threadpool(self.sup.cluster.health)
            healthy = healthy and reachable
            body["status"] = "ok" if healthy else "unavailable"
        return json_response(body, 200 if healthy else 503)

    async def shutdown(self, request: Request) -> Response:
        """Stop the daemon as SIGTERM does, once this answer has been sent."""
        assert self.on_shutdown is not None
        await self._body(request, dict)
        response = json_response({"status": "stopping", "pid": os.getpid()}, 202)
        response.background = BackgroundTask(self.on_shutdown)
        return response

    async def openapi(self, request: Request) -> Response:
        return json_response(self._openapi)

    async def metrics(self, request: Request) -> Response:
        cluster = await run_in_threadpool(self.sup.cluster.health) if self.sup.cluster is not None else None
        return Response(render_metrics(self.sup, self.streams, self.connections, cluster[0] if cluster else None),
                        media_type="text/plain; version=0.0.4")


def _query(request: Request) -> dict[str, str]:
    """The query parameters, each at most once (a repeated one is ambiguous: 400)."""
    q = request.query_params
    for name in q:
        if len(q.getlist(name)) > 1:
            raise InvalidRequest(f"query parameter {name[:32]!r} given more than once")
    return dict(q)


def _bool_param(raw: str | None, name: str) -> bool:
    if raw is None or raw in ("0", "false"):
        return False
    if raw in ("1", "true"):
        return True
    raise InvalidRequest(f"{name} must be true or false, got {raw[:32]!r}")


def _int_param(raw: str | None, name: str, *, default: int | None, lo: int, hi: int) -> Any:
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or not lo <= int(raw) <= hi:  # "²".isdigit() is True
        raise InvalidRequest(f"{name} must be an integer in [{lo}, {hi}], got {raw[:32]!r}")
    return int(raw)


async def _runnerd_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RunnerdError)
    extra = {"active_turn_id": exc.active_turn_id} if isinstance(exc, SessionBusy) else {}
    response = error_response(exc.status, exc.code, str(exc), **extra)
    if isinstance(exc, BodyTooLarge):
        response.headers["connection"] = "close"  # the rest of the body is never read
    return response


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    response = error_response(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail))
    response.headers.update(exc.headers or {})  # Allow on 405
    return response


async def _client_gone(request: Request, exc: Exception) -> Response:
    """The client closed the connection mid-body: nobody to answer, nothing went wrong here."""
    get_logger("runnerd.http").debug("client_disconnected", path=request.url.path)
    return Response(status_code=400)


async def _internal_error(request: Request, exc: Exception) -> Response:
    get_logger("runnerd.http").error("internal_error", path=request.url.path, error=repr(exc))
    return error_response(500, "internal", "internal error; see the daemon's log")


def create_app(sup: Supervisor, *, max_body_bytes: int = 1 << 20, keepalive_s: float = 15.0,
               tcp: TcpPolicy | None = None, streams: StreamSet | None = None,
               send_timeout_s: float = 30.0, connections: ConnectionStats | None = None,
               on_shutdown: Callable[[], None] | None = None) -> Starlette:
    """The ASGI app. ``streams`` lets the daemon close every open SSE stream at shutdown;
    ``tcp`` is what a request on a TCP listener must carry (see ``access``);
    ``on_shutdown`` (the daemon's stop) enables ``POST /v1/shutdown``."""
    streams = streams or StreamSet()
    api = Api(sup, max_body_bytes=max_body_bytes, keepalive_s=keepalive_s, streams=streams,
              send_timeout_s=send_timeout_s, connections=connections, on_shutdown=on_shutdown)
    routes = [
        *console_routes(sup),
        Route("/v1/turns", api.turns, methods=["GET", "POST"]),
        Route("/v1/turns/events", api.turn_changes, methods=["GET"]),  # before {turn_id}
        Route("/v1/turns/{turn_id}", api.get_turn, methods=["GET"]),
        Route("/v1/turns/{turn_id}/events", api.events, methods=["GET"]),
        Route("/v1/turns/{turn_id}/export", api.export, methods=["GET"]),
        Route("/v1/turns/{turn_id}/cancel", api.cancel, methods=["POST"]),
        Route("/v1/prune", api.prune, methods=["POST"]),
        Route("/v1/agents", api.agents, methods=["GET"]),
        Route("/v1/health", api.health, methods=["GET"]),
        Route("/v1/openapi.json", api.openapi, methods=["GET"]),
        Route("/metrics", api.metrics, methods=["GET"]),
        *agui_routes(sup, streams=streams, max_body_bytes=max_body_bytes, keepalive_s=keepalive_s,
                     send_timeout_s=send_timeout_s),
    ]
    if on_shutdown is not None:  # a host that mounts the app owns its own lifetime
        routes.append(Route("/v1/shutdown", api.shutdown, methods=["POST"]))
    app = Starlette(
        routes=routes,
        exception_handlers={RunnerdError: _runnerd_error, HTTPException: _http_error,
                            ClientDisconnect: _client_gone, Exception: _internal_error},
    )
    app.router.redirect_slashes = False  # "/v1/turns/" is a 404, not a 307 to elsewhere
    app.state.streams = streams
    app.state.supervisor = sup
    app.add_middleware(AccessGuard, tcp=tcp, is_closing=lambda: streams.closing, public=UI_PATHS)
    return app


__all__ = ["create_app", "StreamSet", "SupervisorClosed"]
