"""StreamRegistry: per turn, the recent events in memory and who waits for them.

Thread-safe. The relay thread appends; any number of sync (thread) and async
(asyncio) readers wait for new events. Events are kept as the encoded bytes
that are served, bounded per turn in bytes. No lock is held while a waiter is
woken across threads or while anyone does I/O.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

from supervisor.errors import UnknownTurn
from supervisor.storage.lines import line_seq


@dataclass
class _Stream:
    budget: int
    items: list[bytes] = field(default_factory=list)
    head: int = 0  # index in ``items`` of the oldest retained event
    first_seq: int = 1  # seq of items[head]
    nbytes: int = 0
    last_seq: int = 0
    ended: bool = False
    ended_at: float = 0.0
    pinned: bool = False
    async_waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = field(default_factory=set)


@dataclass(frozen=True)
class Slice:
    """What a reader got: ``events`` is None when memory no longer holds ``after + 1``."""

    events: list[bytes] | None
    last_seq: int
    ended: bool


class StreamRegistry:
    def __init__(self, *, buffer_bytes: int) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._streams: dict[str, _Stream] = {}
        self._buffer_bytes = buffer_bytes

    def open(self, turn_id: str, *, last_seq: int = 0, ended: bool = False) -> None:
        """Register a turn (``last_seq``/``ended`` for one recovered from disk)."""
        with self._lock:
            s = _Stream(self._buffer_bytes, first_seq=last_seq + 1, last_seq=last_seq, ended=ended)
            if ended:
                s.ended_at = time.monotonic()
            self._streams[turn_id] = s

    def open_if_absent(self, turn_id: str, *, last_seq: int, ended: bool) -> None:
        with self._lock:
            if turn_id not in self._streams:
                s = _Stream(self._buffer_bytes, first_seq=last_seq + 1, last_seq=last_seq, ended=ended)
                s.ended_at = time.monotonic() if ended else 0.0
                self._streams[turn_id] = s

    def pin(self, turn_id: str) -> None:
        """Keep this turn's events in memory for good (its log could not be written)."""
        with self._lock:
            s = self._streams.get(turn_id)
            if s is not None:
                s.pinned = True
                s.budget = 1 << 62

    def __contains__(self, turn_id: str) -> bool:
        return turn_id in self._streams

    def append(self, turn_id: str, lines: list[bytes], *, end: bool = False) -> int:
        """Add stored lines that follow ``last_seq`` without a hole; return the new last seq."""
        with self._lock:
            s = self._streams[turn_id]
            s.items.extend(lines)
            s.nbytes += sum(map(len, lines))
            if lines:
                s.last_seq = line_seq(lines[-1])  # the relay numbered them; nothing is counted twice
            if end:
                s.ended = True
                s.ended_at = time.monotonic()
            self._trim(s)
            last = s.last_seq
            waiters = list(s.async_waiters) if s.async_waiters else []
            self._cond.notify_all()
        _wake(waiters)
        return last

    @staticmethod
    def _trim(s: _Stream) -> None:
        # Keep at least one event so a reader at last_seq - 1 never hits disk.
        while s.nbytes > s.budget and len(s.items) - s.head > 1:
            s.nbytes -= len(s.items[s.head])
            s.head += 1
            s.first_seq += 1
        if s.head > 1024 and s.head * 2 > len(s.items):
            del s.items[:s.head]
            s.head = 0

    def read(self, turn_id: str, after: int, limit: int) -> Slice:
        with self._lock:
            s = self._get(turn_id)
            if after + 1 < s.first_seq:
                return Slice(None, s.last_seq, s.ended)
            start = s.head + (after + 1 - s.first_seq)
            return Slice(s.items[start:start + limit], s.last_seq, s.ended)

    def tail(self, turn_id: str, limit: int) -> Slice:
        with self._lock:
            s = self._get(turn_id)
            held = len(s.items) - s.head
            if limit > held and s.first_seq > 1:
                return Slice(None, s.last_seq, s.ended)
            return Slice(s.items[max(s.head, len(s.items) - limit):], s.last_seq, s.ended)

    def position(self, turn_id: str) -> tuple[int, bool]:
        with self._lock:
            s = self._get(turn_id)
            return s.last_seq, s.ended

    def wait(self, turn_id: str, after: int, timeout: float | None) -> bool:
        """Block until there is an event after ``after`` or the turn ended."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            s = self._get(turn_id)
            while s.last_seq <= after and not s.ended:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def add_waiter(self, turn_id: str, loop: asyncio.AbstractEventLoop, event: asyncio.Event) -> None:
        """A long-lived async waiter: ``event`` is set (on ``loop``) at every append."""
        with self._lock:
            self._get(turn_id).async_waiters.add((loop, event))

    def remove_waiter(self, turn_id: str, event: asyncio.Event) -> None:
        with self._lock:
            s = self._streams.get(turn_id)
            if s is not None:
                s.async_waiters = {w for w in s.async_waiters if w[1] is not event}

    async def wait_async(self, turn_id: str, after: int) -> None:
        loop = asyncio.get_running_loop()
        event = asyncio.Event()
        key = (loop, event)
        with self._lock:
            s = self._get(turn_id)
            if s.last_seq > after or s.ended:
                return
            s.async_waiters.add(key)
        try:
            await event.wait()
        finally:
            with self._lock:
                s.async_waiters.discard(key)

    def forget(self, turn_id: str) -> None:
        """Drop a removed turn entirely; its waiters wake and then find it unknown."""
        with self._lock:
            s = self._streams.pop(turn_id, None)
            if s is None:
                return
            s.ended = True
            waiters = list(s.async_waiters)
            self._cond.notify_all()
        _wake(waiters)

    def evict_ended(self, older_than_s: float) -> list[str]:
        """Drop the memory of turns that ended a while ago; readers use the log."""
        now = time.monotonic()
        dropped = []
        with self._lock:
            for turn_id, s in self._streams.items():
                if (s.ended and s.items and not s.pinned and now - s.ended_at > older_than_s
                        and not s.async_waiters):
                    s.items, s.head, s.nbytes = [], 0, 0
                    s.first_seq = s.last_seq + 1
                    dropped.append(turn_id)
        return dropped

    def stats(self) -> tuple[int, int]:
        """(streams, bytes held in memory)."""
        with self._lock:
            return len(self._streams), sum(s.nbytes for s in self._streams.values())

    def _get(self, turn_id: str) -> _Stream:
        try:
            return self._streams[turn_id]
        except KeyError:
            raise UnknownTurn(f"unknown turn {turn_id}") from None


def _wake(waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] | tuple[()]) -> None:
    """One cross-thread wake-up per event loop, not one per waiting reader:
    with 1,000 SSE subscribers that is 1 self-pipe write per append, not 1,000."""
    by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Event]] = {}
    for loop, event in waiters:
        by_loop.setdefault(loop, []).append(event)
    for loop, events in by_loop.items():
        try:
            loop.call_soon_threadsafe(_set_all, events)
        except RuntimeError:
            pass  # that loop is closed; its readers are gone


def _set_all(events: list[asyncio.Event]) -> None:
    for event in events:
        event.set()
