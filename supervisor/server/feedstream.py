"""``GET /v1/turns/events``: the turn status changes as Server-Sent Events.

A reader without a cursor (or with one the ring no longer covers) first gets
``event: snapshot`` (``{"turns": [...]}``, newest first, ``id:`` the feed
position it was taken at), then one ``event: turn`` per change (``data:`` the
turn's whole TurnInfo). Resume with ``Last-Event-ID``: the changes after it,
no gap; a change already reflected in the snapshot may come again, and applying
it again is harmless (each carries the whole state).
"""

from __future__ import annotations

import asyncio

import msgspec
from starlette.types import Receive, Scope, Send

from supervisor.embedded import Supervisor
from supervisor.runtime.turnfeed import Change
from supervisor.server.sse import (
    HEADERS,
    KEEPALIVE_FRAME,
    SHUTDOWN_NOTICE,
    StreamSet,
    _watch_disconnect,
    notice_frame,
)

_encode = msgspec.json.Encoder().encode


class TurnFeedStream:
    """An ASGI response following the feed from ``after`` (None: a snapshot first)."""

    def __init__(self, sup: Supervisor, *, after: int | None, session_id: str | None, limit: int,
                 keepalive_s: float, streams: StreamSet, send_timeout_s: float = 30.0) -> None:
        self.send_timeout_s = send_timeout_s
        self.sup = sup
        self.after = after
        self.session_id = session_id
        self.limit = limit
        self.keepalive_s = keepalive_s
        self.streams = streams

    def _frames(self, changes: list[Change]) -> bytes:
        return b"".join(b"id: %d\nevent: turn\ndata: %s\n\n" % (c.id, c.data) for c in changes
                        if self.session_id is None or c.info.session_id == self.session_id)

    async def _snapshot(self) -> tuple[int, bytes]:
        position = self.sup.feed.last_id  # before listing: later changes are replayed, none lost
        turns = await asyncio.to_thread(self.sup.list_turns, session_id=self.session_id, limit=self.limit)
        return position, b"id: %d\nevent: snapshot\ndata: %s\n\n" % (position, _encode({"turns": turns}))

    async def _send(self, send: Send, body: bytes) -> None:
        async with asyncio.timeout(self.send_timeout_s):
            await send({"type": "http.response.body", "body": body, "more_body": True})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        feed = self.sup.feed
        stop = self.streams.register()
        feed.subscribers += 1
        wake = asyncio.Event()
        watcher = asyncio.ensure_future(_watch_disconnect(receive, wake))
        stop.add_waiter(wake)
        feed.add_waiter(asyncio.get_running_loop(), wake)
        try:
            await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
            cursor = self.after
            first = b": connected\n\n"
            while True:
                wake.clear()  # before reading: a change after the read sets it again
                if watcher.done():
                    return  # the client went away; it can resume with its cursor
                if stop.is_set():
                    await send({"type": "http.response.body", "body": notice_frame("shutdown", SHUTDOWN_NOTICE),
                                "more_body": False})
                    return
                changes = feed.since(cursor) if cursor is not None else None
                if changes is None:
                    cursor, body = await self._snapshot()
                elif changes:
                    cursor, body = changes[-1].id, self._frames(changes)
                else:
                    body = b""
                if first or body:
                    await self._send(send, first + body)
                    first = b""
                    continue
                try:
                    async with asyncio.timeout(self.keepalive_s):
                        await wake.wait()
                except TimeoutError:
                    await self._send(send, KEEPALIVE_FRAME)
        except (OSError, TimeoutError):
            return  # the client went away, or stopped reading; it can resume with its cursor
        finally:
            feed.remove_waiter(wake)
            feed.subscribers -= 1
            self.streams.unregister(stop)
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
