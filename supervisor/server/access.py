"""Who may ask what: one ASGI middleware in front of every route (API, console, SSE).

Checks, cheapest first, each answered with the JSON error body:

- 503 ``shutting_down`` while the daemon stops;
- 431 ``headers_too_large``: request line plus the whole header block (names,
  values and their line overhead) over ``MAX_HEADER_BYTES``, or more than
  ``MAX_HEADER_COUNT`` headers (the parser bounds only what arrives in pieces);
- on a TCP listener (a Unix socket is guarded by its file mode instead):
  421 ``unknown_host`` when ``Host`` is not one of the daemon's own listener
  names (DNS rebinding), 403 ``foreign_origin`` when ``Origin`` is present and
  not the daemon's own (a web page in a local browser), 401 ``unauthorized``
  without ``Authorization: Bearer <token>`` unless ``tcp_insecure_loopback``;
- 415 ``unsupported_media_type``: a POST (every state change) with a body or
  a ``Content-Type`` that is not ``application/json``, on every listener: a
  browser cannot send that cross-origin without a preflight we never answer
  (a bodyless POST without ``Content-Type``, such as a plain cancel, passes).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec
from starlette.types import ASGIApp, Receive, Scope, Send

MAX_HEADER_BYTES = 16 * 1024
MAX_HEADER_COUNT = 100

_json = msgspec.json.Encoder()


@dataclass(frozen=True)
class TcpPolicy:
    """What a TCP request must carry. ``hosts`` are the ``Host`` values the listener answers to."""

    hosts: frozenset[str]
    token: str | None = None  # None only with insecure_loopback
    insecure_loopback: bool = False
    origins: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        if self.token is None and not self.insecure_loopback:
            raise ValueError("a TCP listener needs a token (or insecure_loopback)")
        object.__setattr__(self, "origins", frozenset(f"http://{h}" for h in self.hosts))


def listener_hosts(host: str, port: int, *, loopback: bool, extra: list[str] | None = None) -> frozenset[str]:
    """The ``Host`` values naming a TCP listener: its address, ``localhost`` for a loopback one,
    and the operator's extra names (``server.tcp_host_names``), each with the port."""
    names = [f"[{host}]" if ":" in host else host, *(extra or [])]
    if loopback:
        names.append("localhost")
    if host == "localhost":
        names.append("127.0.0.1")  # what "localhost" was bound as
    return frozenset(f"{name}:{port}".lower() for name in names)


def error_body(status: int, code: str, message: str, *, close: bool = False) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    body = _json.encode({"error": {"code": code, "message": message}})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    return status, headers, body


async def send_error(send: Send, status: int, code: str, message: str, *, close: bool = False) -> None:
    status, headers, body = error_body(status, code, message, close=close)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def is_tcp(scope: Scope) -> bool:
    server = scope.get("server")
    return server is not None and server[1] is not None  # a Unix socket has no port


def _refusal(scope: Scope, tcp: TcpPolicy | None, public: frozenset[str]) -> tuple[int, str, str] | None:
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    size = (len(scope["method"]) + len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
            + sum(len(k) + len(v) + 4 for k, v in headers))  # "k: v\r\n"
    if size > MAX_HEADER_BYTES or len(headers) > MAX_HEADER_COUNT:
        return (431, "headers_too_large",
                f"request line and headers over {MAX_HEADER_BYTES} bytes or {MAX_HEADER_COUNT} headers")
    values: dict[bytes, bytes] = {}
    for k, v in headers:
        values.setdefault(k, v)
    if tcp is not None and is_tcp(scope):
        host = values.get(b"host", b"").decode("latin-1").lower()
        if host not in tcp.hosts:
            return 421, "unknown_host", f"Host {host[:64]!r} is not a name of this listener"
        origin = values.get(b"origin")
        if origin is not None and origin.decode("latin-1").lower() not in tcp.origins:
            return 403, "foreign_origin", "requests from another origin are refused"
        # The console's static files carry no data: a browser loads them, then asks for the token.
        page = scope["method"] in ("GET", "HEAD") and scope["path"] in public
        if tcp.token is not None and not page:
            given = values.get(b"authorization", b"")
            if not hmac.compare_digest(given, b"Bearer " + tcp.token.encode()):
                return 401, "unauthorized", "a valid bearer token is required"
    if scope["method"] == "POST":
        media = values.get(b"content-type", b"").split(b";", 1)[0].strip().lower()
        bodyless = values.get(b"content-length", b"0") == b"0" and b"transfer-encoding" not in values
        if media != b"application/json" and not (bodyless and b"content-type" not in values):
            return 415, "unsupported_media_type", "a POST must have Content-Type: application/json"
    return None


async def _drain(scope: Scope, receive: Receive, limit: int) -> None:
    """Read and drop a refused request's body when it is at most ``limit`` bytes."""
    declared = dict(scope["headers"]).get(b"content-length", b"")
    if declared == b"0" or (declared and (not declared.isdigit() or int(declared) > limit)):
        return
    if not declared and b"transfer-encoding" not in dict(scope["headers"]):
        return
    seen = 0
    while seen <= limit:
        message = await receive()
        if message["type"] != "http.request":
            return
        seen += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


class AccessGuard:
    """ASGI middleware applying the checks above; ``is_closing`` tells it the daemon stops."""

    def __init__(self, app: ASGIApp, *, tcp: TcpPolicy | None, is_closing: Callable[[], bool],
                 public: frozenset[str] = frozenset(), drain_bytes: int = 64 * 1024) -> None:
        """``public``: paths a GET needs no token for (Host and Origin still hold)."""
        self.app = app
        self.drain_bytes = drain_bytes
        self.tcp = tcp
        self.public = public
        self.is_closing = is_closing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.is_closing():
            await send_error(send, 503, "shutting_down", "runnerd is shutting down")
            return
        refusal = _refusal(scope, self.tcp, self.public)
        if refusal is not None:
            # A small body is read first: closing on unread bytes makes the kernel send a reset,
            # and the client may lose the answer. A larger one is not read; the connection closes.
            await _drain(scope, receive, self.drain_bytes)
            await send_error(send, *refusal, close=True)
            return
        await self.app(scope, receive, send)
