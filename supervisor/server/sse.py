"""Server-Sent Events for one turn, written straight to ASGI: the one SSE writer.

``id: <seq>`` and ``data: <event json>`` per event; every event pending when
the writer wakes goes out in one write; a comment line every ``keepalive_s``;
closed after the terminal event. At shutdown the daemon asks every open stream
to send its shutdown notice and close, rather than trusting the server to.
How events and notices (gap, shutdown) are framed is a ``Framing``: ``/v1``'s
keeps ``seq`` in the event and names notices with ``event:``; the AG-UI
endpoint's (``server/agui.py``) drops ``seq`` and sends notices as ``CUSTOM`` events.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from starlette.types import Receive, Scope, Send

from supervisor.embedded import Supervisor
from supervisor.runtime.reader import Step, next_step
from supervisor.storage.lines import line_seq

SHUTDOWN_NOTICE = {"reason": "runnerd is shutting down"}
KEEPALIVE_FRAME = b": keep-alive\n\n"
HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"x-accel-buffering", b"no"),  # proxies must not buffer a live stream
]


def encode_frames(lines: list[bytes]) -> bytes:
    """One SSE frame per stored line, spliced without re-encoding."""
    return b"".join([b"id: %d\ndata: %s\n\n" % (line_seq(line), line) for line in lines])


def notice_frame(name: str, value: Any) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (name.encode(), msgspec.json.encode(value))


@dataclass(frozen=True)
class Framing:
    """How one kind of stream writes events and notices (``gap``, ``shutdown``)."""

    frames: Callable[[list[bytes]], bytes]
    notice: Callable[[str, Any], bytes]
    resend_snapshot: bool = True  # after a gap, the whole snapshot form (else only past the cursor)


V1_FRAMING = Framing(encode_frames, notice_frame)


MAX_WRITE_BYTES = 256 * 1024  # one send; with the transport's own buffer, a subscriber's bound


class SlowConsumer(Exception):
    """A subscriber did not take a write within ``send_timeout_s``."""


class StreamSet:
    """The open streams, so shutdown can end each one with a final frame."""

    def __init__(self) -> None:
        self.closing = False
        self.count = 0
        self.opened_total = 0
        self.slow_dropped = 0
        self._events: set[Stop] = set()

    def register(self) -> Stop:
        stop = Stop()
        if self.closing:
            stop.set()
        self._events.add(stop)
        self.count += 1
        self.opened_total += 1
        return stop

    def unregister(self, stop: Stop) -> None:
        self._events.discard(stop)
        self.count -= 1

    def close_all(self) -> None:
        """Called on the server's loop: every stream sends its shutdown frame and ends."""
        self.closing = True
        for stop in list(self._events):
            stop.set()


class Stop:
    """A stream's shutdown flag; setting it also wakes the stream's loop."""

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[asyncio.Event] = []

    def add_waiter(self, event: asyncio.Event) -> None:
        self._waiters.append(event)
        if self._set:
            event.set()

    def set(self) -> None:
        self._set = True
        for event in self._waiters:
            event.set()

    def is_set(self) -> bool:
        return self._set


class EventStream:
    """An ASGI response streaming one turn from ``after`` on."""

    def __init__(self, sup: Supervisor, turn_id: str, *, after: int, keepalive_s: float,
                 streams: StreamSet, compact: bool = False, send_timeout_s: float = 30.0,
                 framing: Framing = V1_FRAMING,
                 on_abandoned: Callable[[], Awaitable[None]] | None = None) -> None:
        """``on_abandoned`` runs when the client leaves before the terminal event (not at shutdown)."""
        self.framing = framing
        self.on_abandoned = on_abandoned
        self.send_timeout_s = send_timeout_s
        self.sup = sup
        self.turn_id = turn_id
        self.after = after
        self.compact = compact
        self.keepalive_s = keepalive_s
        self.streams = streams
        # Per event no timer is made: one watchdog per stream checks the send in
        # progress, and one keep-alive timer fires at most every keepalive_s.
        self._last_write = 0.0
        self._sending_since: float | None = None
        self._stalled = False
        self._watchdog: asyncio.TimerHandle | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._serve(receive, send)
        finally:
            if self._watchdog is not None:
                self._watchdog.cancel()

    async def _serve(self, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        self._last_write = loop.time()
        gap, snapshot = await asyncio.to_thread(self.sup.reader.plan, self.turn_id, after=self.after,
                                                compact=self.compact)
        if snapshot is not None:  # a finished turn in its snapshot form, then close
            await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
            if not self.framing.resend_snapshot:  # what the client has is not sent again
                snapshot = [line for line in snapshot if line_seq(line) > self.after]
            try:
                if gap is not None:
                    await self._write(send, self.framing.notice("gap", gap))
                chunk: list[bytes] = []
                size = 0
                for line in snapshot:  # framed about MAX_WRITE_BYTES at a time, never all at once
                    chunk.append(line)
                    size += len(line)
                    if size >= MAX_WRITE_BYTES:
                        await self._write(send, self.framing.frames(chunk))
                        chunk, size = [], 0
                if chunk:
                    await self._write(send, self.framing.frames(chunk))
            except SlowConsumer:
                self.streams.slow_dropped += 1
                return
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        stop = self.streams.register()
        # One event per stream, set by new events, by shutdown and by a disconnect:
        # the loop below creates no task or timer per event (1,000 subscribers).
        wake = asyncio.Event()
        watcher = asyncio.ensure_future(_watch_disconnect(receive, wake))
        stop.add_waiter(wake)
        cursor = self.after
        finished = False
        keepalive: asyncio.TimerHandle | None = None
        try:
            if self.turn_id not in self.sup.registry:  # its status may come from a store (another node's turn)
                await asyncio.to_thread(self.sup.reader.ensure_stream, self.turn_id)
            self.sup.registry.add_waiter(self.turn_id, asyncio.get_running_loop(), wake)
            await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
            await send({"type": "http.response.body", "body": b": connected\n\n", "more_body": True})
            while True:
                wake.clear()  # before reading: an append after the read sets it again
                if watcher.done():
                    return  # the client went away; it can resume with its cursor
                if stop.is_set():
                    body = self.framing.notice("shutdown", SHUTDOWN_NOTICE)
                    await send({"type": "http.response.body", "body": body, "more_body": False})
                    return
                batch = await self.sup.reader.aread(self.turn_id, cursor)
                step = next_step(cursor, batch)
                if step is Step.LINES:
                    cursor = line_seq(batch.lines[-1])
                    await self._write(send, self.framing.frames(batch.lines))
                    if cursor < batch.last_seq or batch.ended:
                        continue
                    # Nothing newer when read: wait (an append since then has set ``wake``).
                if step is Step.LOST:  # counted but unreadable: said out loud, then closed
                    frame = self.framing.notice(
                        "gap", {"reason": f"events {cursor + 1}-{batch.last_seq} are not in the turn's log"})
                    await send({"type": "http.response.body", "body": frame, "more_body": False})
                    finished = True
                    return
                if step is Step.END:  # the terminal event was sent
                    finished = True
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                    return
                due = self._last_write + self.keepalive_s
                if loop.time() >= due:
                    await self._write(send, KEEPALIVE_FRAME)
                    continue
                if keepalive is None or keepalive.when() > due or keepalive.when() <= loop.time():
                    if keepalive is not None:
                        keepalive.cancel()
                    keepalive = loop.call_at(due, wake.set)  # early if writes came since: then renewed
                await wake.wait()
        except SlowConsumer:
            self.streams.slow_dropped += 1  # it can come back with its cursor
            return
        except OSError:
            return  # the client went away mid-write; it can resume with its cursor
        finally:
            if keepalive is not None:
                keepalive.cancel()
            self.streams.unregister(stop)
            self.sup.registry.remove_waiter(self.turn_id, wake)
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            if not finished and not stop.is_set() and self.on_abandoned is not None:
                await self.on_abandoned()

    async def _write(self, send: Send, body: bytes) -> None:
        """Bounded in bytes per send and in time per send: a subscriber that does not
        read (or a half-open connection) is dropped, and never slows anyone else."""
        loop = asyncio.get_running_loop()
        if self._watchdog is None:
            self._watchdog = loop.call_later(self.send_timeout_s, self._check_send, asyncio.current_task())
        for start in range(0, len(body), MAX_WRITE_BYTES):
            message = {"type": "http.response.body", "body": body[start:start + MAX_WRITE_BYTES],
                       "more_body": True}
            self._sending_since = loop.time()
            try:
                await send(message)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not self._stalled or task is None:
                    raise
                task.uncancel()  # our own cancel (the watchdog's), not the server's
                raise SlowConsumer() from None
            finally:
                self._sending_since = None
            self._last_write = loop.time()

    def _check_send(self, task: asyncio.Task[Any] | None) -> None:
        """The watchdog: cancel the stream's task when one send has waited ``send_timeout_s``."""
        loop = asyncio.get_running_loop()
        since = self._sending_since
        if since is not None and loop.time() - since >= self.send_timeout_s and task is not None:
            self._stalled = True
            task.cancel()
            return
        self._watchdog = loop.call_at((since or loop.time()) + self.send_timeout_s, self._check_send, task)


async def _watch_disconnect(receive: Receive, wake: asyncio.Event) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            wake.set()
            return
