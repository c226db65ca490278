"""The feed of turn status changes: a bounded in-memory ring with resumable ids.

Every status change (queued, starting, running, and the ending) is recorded as
the turn's whole ``TurnInfo`` at that moment, under an id that only grows. Ids
start from the daemon's start-up time in microseconds, so they also grow across
restarts: a cursor from an earlier run is older than the ring, and its reader
is told to start again from a fresh list (never a silent skip).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable

import msgspec

from supervisor.errors import UnknownTurn
from supervisor.turns import TurnInfo

_encode = msgspec.json.Encoder().encode


class Change(msgspec.Struct, frozen=True):
    id: int
    info: TurnInfo
    data: bytes  # ``info`` as JSON, encoded once for every subscriber


class TurnFeed:
    """Thread-safe. ``snapshot(turn_id)`` reads the turn's current info; a change is
    read and numbered under one lock, so the last change of a turn is its latest state."""

    def __init__(self, snapshot: Callable[[str], TurnInfo], *, capacity: int = 4096) -> None:
        self._snapshot = snapshot
        self._lock = threading.Lock()
        self._ring: deque[Change] = deque(maxlen=capacity)
        self._last = time.time_ns() // 1000  # < 2**53: exact as a JavaScript number too
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self.subscribers = 0  # open feed streams (the server counts them here)

    @property
    def last_id(self) -> int:
        with self._lock:
            return self._last

    def publish(self, turn_id: str) -> None:
        """Record the turn's current state; called wherever a status changes."""
        with self._lock:
            try:
                info = self._snapshot(turn_id)
            except UnknownTurn:
                return  # refused or already forgotten: nothing to tell
            self._last += 1
            self._ring.append(Change(self._last, info, _encode(info)))
            waiters = list(self._waiters)
        for loop, event in waiters:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:
                pass  # that loop is closed; its reader is gone

    def since(self, after: int) -> list[Change] | None:
        """The changes after ``after``, or None when the ring no longer holds them all
        (or the cursor is not from this run): the reader must start from a fresh list."""
        with self._lock:
            first = self._ring[0].id if self._ring else self._last + 1
            if after > self._last or after < first - 1:
                return None
            return [c for c in self._ring if c.id > after]

    def add_waiter(self, loop: asyncio.AbstractEventLoop, event: asyncio.Event) -> None:
        with self._lock:
            self._waiters.add((loop, event))

    def remove_waiter(self, event: asyncio.Event) -> None:
        with self._lock:
            self._waiters = {w for w in self._waiters if w[1] is not event}
