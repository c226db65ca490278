"""Connection limits: uvicorn's h11 protocol with deadlines, caps and a stalled-write cut.

uvicorn times out only an idle keep-alive connection. Per connection this adds:

- a **header deadline** (``header_timeout_s``) from the first byte of a request
  (or from the accept) until its headers are complete: a silent or trickling
  client is answered ``408`` and closed;
- a **body deadline** (``body_timeout_s``) from the headers to the end of the
  body: a ``Content-Length`` larger than what is sent is closed;
- a **send deadline** (``send_timeout_s``): a response (JSON or SSE) whose
  writes stay above the transport's high-water mark that long is aborted, so
  a client that does not read releases the buffered bytes at once;
- on TCP, a **cap** on open connections in total and per peer address: one
  over the cap is answered ``503`` and closed at accept. The Unix socket has
  no cap (its file mode guards it) and the TCP cap leaves descriptors for it,
  for turns, pipes and logs (``tcp_connection_cap``).

Trickled headers over the parser's limit get the JSON ``431`` instead of
uvicorn's text ``400``. Running out of descriptors in ``accept`` is counted
and logged at most once per ``EMFILE_LOG_EVERY_S`` (``accept_error_handler``).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from supervisor.logs import get_logger
from supervisor.server.access import MAX_HEADER_BYTES, error_body

log = get_logger("runnerd.connections")
EMFILE_LOG_EVERY_S = 10.0
DESCRIPTORS_PER_TURN = 8  # pipe ends, sentinel, output pipes, log and metadata files
RESERVED_DESCRIPTORS = 64  # listeners, forkserver, state files, the Unix socket's own clients


def tcp_connection_cap(nofile: int, max_running_turns: int, configured: int) -> int:
    """At most ``configured``, and at most half of what turns and the reserve leave over."""
    spare = nofile - RESERVED_DESCRIPTORS - DESCRIPTORS_PER_TURN * max_running_turns
    return max(4, min(configured, spare // 2))


@dataclass
class ConnectionStats:
    """Counters shared by every connection of one server (read by ``/metrics``)."""

    max_tcp: int
    max_per_peer: int
    header_timeout_s: float
    body_timeout_s: float
    send_timeout_s: float
    tcp_open: int = 0
    refused: int = 0  # over a cap at accept
    timed_out: int = 0  # header or body deadline
    send_aborted: int = 0  # a write stalled past the send deadline
    accept_errors: int = 0  # EMFILE/ENFILE/ENOBUFS in accept
    per_peer: Counter[str] = field(default_factory=Counter)
    _last_emfile_log: float = -EMFILE_LOG_EVERY_S
    _unlogged_emfile: int = 0

    def accept_error_handler(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """asyncio logs every failed accept with a traceback (hundreds of thousands a minute
        under attack): count them, log one line per ``EMFILE_LOG_EVERY_S``."""
        if not str(context.get("message", "")).startswith("socket.accept() out of system resource"):
            loop.default_exception_handler(context)
            return
        self.accept_errors += 1
        self._unlogged_emfile += 1
        now = time.monotonic()
        if now - self._last_emfile_log >= EMFILE_LOG_EVERY_S:
            log.error("accept_out_of_descriptors", failures=self._unlogged_emfile,
                      error=repr(context.get("exception")))
            self._last_emfile_log = now
            self._unlogged_emfile = 0


def _raw_error(status: int, code: str, message: str) -> bytes:
    """A whole JSON error response, written past the parser on a connection about to close."""
    status, headers, body = error_body(status, code, message, close=True)
    head = b"".join(b"%s: %s\r\n" % kv for kv in headers)
    return b"HTTP/1.1 %d %s\r\n%s\r\n%s" % (status, HTTPStatus(status).phrase.encode(), head, body)


class BoundedH11Protocol(H11Protocol):
    """One connection; ``stats`` is set on the subclass ``protocol_class`` makes."""

    stats: ConnectionStats

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None
        sock = transport.get_extra_info("socket")
        self._peer: str | None = None
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            peer = str(transport.get_extra_info("peername")[0])
            stats = self.stats
            if stats.tcp_open >= stats.max_tcp or stats.per_peer[peer] >= stats.max_per_peer:
                stats.refused += 1
                transport.write(_raw_error(503, "too_many_connections",
                                           "too many open connections; try again later"))
                transport.close()
                return
            self._peer = peer
            stats.tcp_open += 1
            stats.per_peer[peer] += 1
        self._arm("headers")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._send_timer is not None:
            self._send_timer.cancel()
        if self._peer is not None:
            self.stats.tcp_open -= 1
            self.stats.per_peer[self._peer] -= 1
            if not self.stats.per_peer[self._peer]:
                del self.stats.per_peer[self._peer]
            self._peer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._deadline is None and self.conn.their_state is h11.IDLE:
            self._arm("headers")  # a new request begins
        super().data_received(data)
        if self.conn.their_state is h11.SEND_BODY and self._deadline_for != "body":
            self._arm("body")
        elif self.conn.their_state in (h11.DONE, h11.MUST_CLOSE, h11.CLOSED):
            self._disarm()

    def send_400_response(self, msg: str) -> None:
        """The parser refused the request: JSON, and 431 when it was the header size."""
        self._disarm()
        buffered = len(self.conn.trailing_data[0])
        if buffered > MAX_HEADER_BYTES:
            payload = _raw_error(431, "headers_too_large", f"request line and headers over {MAX_HEADER_BYTES} bytes")
        else:
            payload = _raw_error(400, "bad_http", "malformed HTTP request")
        self.transport.write(payload)
        self.transport.close()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._send_timer is None:
            self._send_timer = self.loop.call_later(self.stats.send_timeout_s, self._send_stalled)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    # -- deadlines ---------------------------------------------------------

    _deadline_for: str | None = None

    def _arm(self, kind: str) -> None:
        """One deadline at a time: the headers' or the body's."""
        self._disarm()
        if kind == "headers":
            self._deadline = self.loop.call_later(self.stats.header_timeout_s, self._headers_late)
        else:
            self._deadline = self.loop.call_later(self.stats.body_timeout_s, self._body_late)
        self._deadline_for = kind

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._deadline_for = None

    def _headers_late(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        self.stats.timed_out += 1
        self.transport.write(_raw_error(408, "request_timeout",
                                        f"headers not complete within {self.stats.header_timeout_s:g} s"))
        self.transport.close()

    def _body_late(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.stats.timed_out += 1
            log.debug("request_body_timeout", client=self._peer)
            self.transport.abort()  # the handler sees a disconnect; the response can't be framed now

    def _send_stalled(self) -> None:
        self._send_timer = None
        self.stats.send_aborted += 1
        log.debug("send_stalled", client=self._peer, buffered=self.transport.get_write_buffer_size())
        self.transport.abort()  # close() would keep the unsent bytes until they drain


class _Counted(logging.Filter):
    """uvicorn's own lines for what the counters above already count (one per dropped client)."""

    NOISE = ("ASGI callable returned without completing response.", "Invalid HTTP request received.")

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() not in self.NOISE


def quiet_uvicorn() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _Counted) for f in logger.filters):
        logger.addFilter(_Counted())


def protocol_class(stats: ConnectionStats) -> type[BoundedH11Protocol]:
    """A protocol class bound to one server's counters (uvicorn takes a class for ``http``)."""
    return type("RunnerdH11Protocol", (BoundedH11Protocol,), {"stats": stats})
