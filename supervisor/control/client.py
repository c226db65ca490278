"""``Client`` and ``AsyncClient``: the Supervisor's verbs over the daemon's HTTP API.

Unix socket by default, or a URL (``http://127.0.0.1:8765``, with a bearer
token). ``events()`` resumes after a dropped connection or a daemon restart
with ``Last-Event-ID``: no gap and no duplicate.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import msgspec
from httpx_sse import aconnect_sse, connect_sse

from ipc import events as ev
from supervisor import errors
from supervisor.config import default_socket_path
from supervisor.ids import validate_turn_id
from supervisor.turns import ExportPage, TurnInfo

_ERRORS: dict[str, type[errors.RunnerdError]] = {
    cls.code: cls for cls in (errors.InvalidTurnId, errors.UnknownTurn, errors.UnknownAgent,
                              errors.InvalidRequest, errors.InvalidCursor, errors.SupervisorClosed,
                              errors.HistoryGap, errors.QueueFull)
}
# The daemon writes at least a keep-alive comment every 15 s: a read silent for
# 45 s means the connection is gone (and a deadline gets checked again).
_STREAM_TIMEOUT = httpx.Timeout(30.0, read=45.0)


class DaemonUnavailable(errors.RunnerdError, ConnectionError):
    code = "daemon_unavailable"
    status = 503


class RequestFailed(errors.RunnerdError):
    """An error answer with a code this client has no class for."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


ExportResult = ExportPage  # the daemon's export body decodes into the same struct


class TurnList(msgspec.Struct):
    turns: list[TurnInfo]


def _target(socket: str | None, url: str | None) -> tuple[str, str | None]:
    """``(base URL, socket path or None)``; ``unix:///path`` names a socket, as DOCKER_HOST does."""
    url = url or os.environ.get("RUNNERD_URL")
    if url and url.startswith("unix://"):
        if not url.startswith("unix:///"):
            raise errors.InvalidRequest(f"a unix URL needs an absolute path (unix:///run/x.sock), got {url!r}")
        return "http://runnerd", url[len("unix://"):]
    if url:
        return url.rstrip("/"), None
    return "http://runnerd", socket or os.environ.get("RUNNERD_SOCKET") or default_socket_path()


def _raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        body = msgspec.json.decode(response.content)
        code, message = body["error"]["code"], body["error"]["message"]
    except (msgspec.DecodeError, KeyError, TypeError):
        code, message = "http_error", f"HTTP {response.status_code}: {response.text[:200]}"
    if code == "session_busy":
        raise errors.SessionBusy(message, body["error"].get("active_turn_id", ""))
    cls = _ERRORS.get(code)
    if cls is not None:
        raise cls(message)
    raise RequestFailed(response.status_code, code, message)


# The daemon is not there, or went away mid-request (a reset while it shuts down).
_GONE = (httpx.NetworkError, httpx.RemoteProtocolError, FileNotFoundError)


def _unavailable(where: str, exc: Exception) -> DaemonUnavailable:
    return DaemonUnavailable(
        f"runnerd is not answering at {where} ({type(exc).__name__}); start it with "
        "`runnerd` (or `runnerctl serve`, or `systemctl start runnerd`)")


class _Base:
    def __init__(self, *, socket: str | None = None, url: str | None = None,
                 token: str | None = None, timeout: float = 30.0) -> None:
        self.base_url, self.socket = _target(socket, url)
        self.where = self.socket or self.base_url
        token = token or os.environ.get("RUNNERD_TOKEN")
        self.headers = {"authorization": f"Bearer {token}"} if token else {}
        self.timeout = timeout


class Client(_Base):
    """Blocking client for threaded hosts, tools and the CLI."""

    def __init__(self, *, socket: str | None = None, url: str | None = None,
                 token: str | None = None, timeout: float = 30.0) -> None:
        super().__init__(socket=socket, url=url, token=token, timeout=timeout)
        transport = httpx.HTTPTransport(uds=self.socket) if self.socket else None
        self._http = httpx.Client(base_url=self.base_url, transport=transport, headers=self.headers,
                                  timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except _GONE as exc:
            raise _unavailable(self.where, exc) from None
        _raise_for(response)
        return response

    def start_turn(self, agent: str, input: Any = None, *, session_id: str | None = None,
                   timeout_s: float | None = None, multitask: str = "reject") -> TurnInfo:
        body = {"agent": agent, "input": input, "session_id": session_id, "timeout_s": timeout_s,
                "multitask": multitask}
        r = self._request("POST", "/v1/turns", content=msgspec.json.encode(body),
                          headers={"content-type": "application/json"})
        return msgspec.json.decode(r.content, type=TurnInfo)

    def status(self, turn_id: str) -> TurnInfo:
        return msgspec.json.decode(self._request("GET", f"/v1/turns/{validate_turn_id(turn_id)}").content, type=TurnInfo)

    def list_turns(self, *, status: str | None = None, session_id: str | None = None,
                   limit: int | None = None) -> list[TurnInfo]:
        params = {k: v for k, v in (("status", status), ("session_id", session_id), ("limit", limit))
                  if v is not None}
        r = self._request("GET", "/v1/turns", params=params)
        return msgspec.json.decode(r.content, type=dict[str, list[TurnInfo]])["turns"]

    def cancel(self, turn_id: str, *, reason: str | None = None) -> TurnInfo:
        r = self._request("POST", f"/v1/turns/{validate_turn_id(turn_id)}/cancel", content=msgspec.json.encode({"reason": reason}),
                          headers={"content-type": "application/json"})
        return msgspec.json.decode(r.content, type=TurnInfo)

    def export(self, turn_id: str, *, limit: int = 200, after: int | None = None,
               compact: bool = False) -> ExportResult:
        r = self._request("GET", f"/v1/turns/{validate_turn_id(turn_id)}/export",
                          params=_export_params(limit, after, compact))
        return msgspec.json.decode(r.content, type=ExportResult)

    def prune(self, *, dry_run: bool = False) -> dict[str, Any]:
        r = self._request("POST", "/v1/prune", content=msgspec.json.encode({"dry_run": dry_run}),
                          headers={"content-type": "application/json"})
        return msgspec.json.decode(r.content)  # type: ignore[no-any-return]

    def agents(self) -> list[str]:
        r = self._request("GET", "/v1/agents")
        return [a["name"] for a in msgspec.json.decode(r.content)["agents"]]

    def health(self) -> dict[str, Any]:
        return msgspec.json.decode(self._request("GET", "/v1/health").content)  # type: ignore[no-any-return]

    def shutdown(self) -> dict[str, Any]:
        """Ask the daemon to stop gracefully; returns once it has accepted (202)."""
        r = self._request("POST", "/v1/shutdown", content=b"{}", headers={"content-type": "application/json"})
        return msgspec.json.decode(r.content)  # type: ignore[no-any-return]

    def wait(self, turn_id: str, timeout: float | None = None) -> TurnInfo:
        """Follow the stream until the terminal event, then return the status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for _ in self.events(turn_id, after=self.status(turn_id).last_seq, deadline=deadline):
            pass
        return self.status(turn_id)

    def raw_events(self, turn_id: str, *, after: int = 0, reconnect_s: float = 30.0,
                   deadline: float | None = None, compact: bool = False) -> Iterator[tuple[int, bytes]]:
        """``(seq, event json)`` until the terminal event; resumes on a dropped connection.

        ``reconnect_s`` bounds how long a lost daemon is retried; ``deadline``
        (monotonic) bounds the whole follow. A gap (raw events removed by
        retention) raises ``HistoryGap`` unless ``compact`` asks for the snapshot form.
        """
        cursor = after
        lost_since: float | None = None
        while True:
            try:
                with connect_sse(self._http, "GET", f"/v1/turns/{validate_turn_id(turn_id)}/events",
                                 headers={"last-event-id": str(cursor)}, timeout=_STREAM_TIMEOUT,
                                 params={"compact": "true"} if compact else None) as source:
                    if source.response.status_code >= 400:
                        source.response.read()
                        _raise_for(source.response)
                    lost_since = None
                    for sse in source.iter_sse():
                        if deadline is not None and time.monotonic() > deadline:
                            raise TimeoutError(f"turn {turn_id} did not end in time")
                        if sse.event == "shutdown":
                            break  # the daemon is stopping; come back with our cursor
                        got = _accept(sse, cursor, compact)
                        if got is None:
                            continue
                        cursor, data = got
                        yield got
                        if _is_terminal(data):
                            return
                    else:  # closed without a terminal event: was it already sent before `after`?
                        info = self.status(turn_id)
                        if info.ended and cursor >= info.last_seq:
                            return
            except (httpx.TransportError, FileNotFoundError, errors.SupervisorClosed) as exc:
                lost_since = _still_lost(lost_since, reconnect_s, self.where, exc)
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"turn {turn_id} did not end in time")
            time.sleep(0.05 if lost_since is None else 0.2)  # back off before reconnecting

    def turn_changes(self, *, session_id: str | None = None, limit: int = 100,
                     reconnect_s: float = 30.0) -> Iterator[list[TurnInfo] | TurnInfo]:
        """A list of turns (newest first), then each turn whose status changes, for ever.

        Resumes after a dropped connection with ``Last-Event-ID``; when the daemon
        cannot replay from there (restarted, or too far behind) a fresh list comes again.
        """
        cursor: int | None = None
        lost_since: float | None = None
        params: dict[str, Any] = {"limit": limit, **({"session_id": session_id} if session_id else {})}
        while True:
            headers = {"last-event-id": str(cursor)} if cursor is not None else {}
            try:
                with connect_sse(self._http, "GET", "/v1/turns/events", headers=headers, params=params,
                                 timeout=_STREAM_TIMEOUT) as source:
                    if source.response.status_code >= 400:
                        source.response.read()
                        _raise_for(source.response)
                    lost_since = None
                    for sse in source.iter_sse():
                        if sse.event == "shutdown":
                            break
                        if sse.event == "snapshot":
                            cursor = int(sse.id)
                            yield msgspec.json.decode(sse.data, type=TurnList).turns
                        elif sse.event == "turn":
                            cursor = int(sse.id)
                            yield msgspec.json.decode(sse.data, type=TurnInfo)
            except (httpx.TransportError, FileNotFoundError, errors.SupervisorClosed) as exc:
                lost_since = _still_lost(lost_since, reconnect_s, self.where, exc)
            time.sleep(0.05 if lost_since is None else 0.2)  # back off before reconnecting

    def events(self, turn_id: str, *, after: int = 0, reconnect_s: float = 30.0,
               deadline: float | None = None, compact: bool = False) -> Iterator[tuple[int, ev.Event]]:
        for seq, data in self.raw_events(turn_id, after=after, reconnect_s=reconnect_s, deadline=deadline,
                                         compact=compact):
            yield seq, ev.decode_event(data)


def _export_params(limit: int, after: int | None, compact: bool) -> dict[str, Any]:
    params: dict[str, Any] = {"limit": limit}
    if after is not None:
        params["after"] = after
    if compact:
        params["compact"] = "true"
    return params


def _accept(sse: Any, cursor: int, compact: bool) -> tuple[int, bytes] | None:
    """The next event of a stream, or None for a frame to skip (comment, or a seq
    at or below the cursor: never a duplicate). A gap raises unless ``compact``."""
    if sse.event == "gap" and not compact:
        raise errors.HistoryGap(json.loads(sse.data).get("reason", "history gap"))
    if not sse.id or int(sse.id) <= cursor:
        return None
    return int(sse.id), sse.data.encode()


def _still_lost(lost_since: float | None, reconnect_s: float, where: str, exc: Exception) -> float:
    """Gone or shutting down (503): a restarted daemon will have the rest, for a while."""
    now = time.monotonic()
    lost_since = lost_since or now
    if now - lost_since > reconnect_s:
        raise _unavailable(where, exc) from None
    return lost_since


def _is_terminal(data: bytes) -> bool:
    head = data[:80]
    return any(b'"type":"%s"' % t.encode() in head for t in ev.TERMINAL_TYPES)


class AsyncClient(_Base):
    """asyncio client with the same verbs."""

    def __init__(self, *, socket: str | None = None, url: str | None = None,
                 token: str | None = None, timeout: float = 30.0) -> None:
        super().__init__(socket=socket, url=url, token=token, timeout=timeout)
        transport = httpx.AsyncHTTPTransport(uds=self.socket) if self.socket else None
        self._http = httpx.AsyncClient(base_url=self.base_url, transport=transport,
                                       headers=self.headers, timeout=timeout)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._http.request(method, path, **kwargs)
        except _GONE as exc:
            raise _unavailable(self.where, exc) from None
        _raise_for(response)
        return response

    async def start_turn(self, agent: str, input: Any = None, *, session_id: str | None = None,
                         timeout_s: float | None = None, multitask: str = "reject") -> TurnInfo:
        body = {"agent": agent, "input": input, "session_id": session_id, "timeout_s": timeout_s,
                "multitask": multitask}
        r = await self._request("POST", "/v1/turns", content=msgspec.json.encode(body),
                                headers={"content-type": "application/json"})
        return msgspec.json.decode(r.content, type=TurnInfo)

    async def status(self, turn_id: str) -> TurnInfo:
        r = await self._request("GET", f"/v1/turns/{validate_turn_id(turn_id)}")
        return msgspec.json.decode(r.content, type=TurnInfo)

    async def list_turns(self, *, status: str | None = None, session_id: str | None = None,
                         limit: int | None = None) -> list[TurnInfo]:
        params = {k: v for k, v in (("status", status), ("session_id", session_id), ("limit", limit))
                  if v is not None}
        r = await self._request("GET", "/v1/turns", params=params)
        return msgspec.json.decode(r.content, type=dict[str, list[TurnInfo]])["turns"]

    async def cancel(self, turn_id: str, *, reason: str | None = None) -> TurnInfo:
        r = await self._request("POST", f"/v1/turns/{validate_turn_id(turn_id)}/cancel",
                                content=msgspec.json.encode({"reason": reason}),
                                headers={"content-type": "application/json"})
        return msgspec.json.decode(r.content, type=TurnInfo)

    async def export(self, turn_id: str, *, limit: int = 200, after: int | None = None,
                     compact: bool = False) -> ExportResult:
        r = await self._request("GET", f"/v1/turns/{validate_turn_id(turn_id)}/export",
                                params=_export_params(limit, after, compact))
        return msgspec.json.decode(r.content, type=ExportResult)

    async def prune(self, *, dry_run: bool = False) -> dict[str, Any]:
        r = await self._request("POST", "/v1/prune", content=msgspec.json.encode({"dry_run": dry_run}),
                                headers={"content-type": "application/json"})
        return msgspec.json.decode(r.content)  # type: ignore[no-any-return]

    async def agents(self) -> list[str]:
        r = await self._request("GET", "/v1/agents")
        return [a["name"] for a in msgspec.json.decode(r.content)["agents"]]

    async def events(self, turn_id: str, *, after: int = 0, reconnect_s: float = 30.0,
                     compact: bool = False) -> AsyncIterator[tuple[int, ev.Event]]:
        import asyncio

        cursor = after
        lost_since: float | None = None
        while True:
            try:
                async with aconnect_sse(self._http, "GET", f"/v1/turns/{validate_turn_id(turn_id)}/events",
                                        headers={"last-event-id": str(cursor)}, timeout=_STREAM_TIMEOUT,
                                        params={"compact": "true"} if compact else None) as source:
                    if source.response.status_code >= 400:
                        await source.response.aread()
                        _raise_for(source.response)
                    lost_since = None
                    async for sse in source.aiter_sse():
                        if sse.event == "shutdown":
                            break
                        got = _accept(sse, cursor, compact)
                        if got is None:
                            continue
                        cursor, data = got
                        yield cursor, ev.decode_event(data)
                        if _is_terminal(data):
                            return
                    else:
                        info = await self.status(turn_id)
                        if info.ended and cursor >= info.last_seq:
                            return
            except (httpx.TransportError, FileNotFoundError, errors.SupervisorClosed) as exc:
                lost_since = _still_lost(lost_since, reconnect_s, self.where, exc)
            await asyncio.sleep(0.05 if lost_since is None else 0.2)
