"""The one read path: cursors, replay plans, export pages and the follow loop.

Every reader of events — the export, the sync and async iterators, the SSE
writer — goes through ``Reader`` over the local ``StreamRegistry`` (recent
events, waiters) and the event store (everything durable). ``next_step`` is
the single place that decides what a follower does after a read.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterator, Callable, Iterator
from typing import NamedTuple

import msgspec

from supervisor.errors import HistoryGap, InvalidCursor, InvalidRequest
from supervisor.runtime.registry import StreamRegistry
from supervisor.storage.eventlog import READ_BUDGET
from supervisor.storage.lines import bound_page, line_seq
from supervisor.storage.stores import EventStore
from supervisor.turns import ExportPage, Gap, SeqRange, TurnInfo

READ_CHUNK = 1000
MAX_EXPORT_LIMIT = 10_000


class Batch(NamedTuple):
    """One read after a cursor: the lines, and where the turn stood when they were read."""

    lines: list[bytes]
    last_seq: int
    ended: bool


class Step(enum.Enum):
    LINES = "lines"  # deliver them, move the cursor, read again
    LOST = "lost"  # counted but not readable (the log lost them): say so, never spin
    END = "end"  # the terminal event was delivered (or not following)
    WAIT = "wait"  # nothing new yet: wait for the registry


def next_step(cursor: int, batch: Batch, *, follow: bool = True) -> Step:
    if batch.lines:
        return Step.LINES
    if cursor < batch.last_seq:
        return Step.LOST
    if batch.ended or not follow:
        return Step.END
    return Step.WAIT


def check_cursor(after: object, last_seq: int) -> int:
    """A cursor is an integer in ``[0, last_seq]``: a client can only hold one it was given."""
    if isinstance(after, bool) or not isinstance(after, int) or after < 0:
        raise InvalidCursor("the cursor must be a non-negative integer")
    if after > last_seq:
        raise InvalidCursor(f"cursor {after} is beyond the last seq {last_seq}")
    return after


def lost_error(turn_id: str, cursor: int, last_seq: int) -> HistoryGap:
    return HistoryGap(f"events {cursor + 1}-{last_seq} of turn {turn_id} are not in its log")


class Reader:
    """Reads one turn's events for any number of callers; never holds a lock across I/O."""

    def __init__(self, *, store: EventStore, registry: StreamRegistry,
                 status: Callable[[str], TurnInfo],
                 compacted: Callable[[TurnInfo], list[bytes] | None],
                 max_page_bytes: int = 8 << 20,
                 on_open: Callable[[TurnInfo], None] | None = None) -> None:
        self.store = store
        self.max_page_bytes = max_page_bytes
        self.on_open = on_open  # a stream opened for a turn this node did not start (cluster: tail it)
        self.registry = registry
        self.status = status
        self.compacted = compacted

    # -- one read ------------------------------------------------------------------

    def ensure_stream(self, turn_id: str) -> None:
        """Turns from an earlier run of the daemon get a (memory-less) stream on first read."""
        if turn_id not in self.registry:
            info = self.status(turn_id)
            self.registry.open_if_absent(turn_id, last_seq=info.last_seq, ended=info.ended)
            if self.on_open is not None and not info.ended:
                self.on_open(info)

    def read(self, turn_id: str, after: int, limit: int = READ_CHUNK, max_bytes: int = READ_BUDGET) -> Batch:
        """Memory first; the store when memory no longer holds ``after + 1`` (then at most
        ``max_bytes`` past the first line)."""
        s = self.registry.read(turn_id, after, limit)
        if s.events is not None:
            return Batch(s.events, s.last_seq, s.ended)
        return Batch(self.store.read_after(turn_id, after, limit, s.last_seq, max_bytes), s.last_seq, s.ended)

    async def aread(self, turn_id: str, after: int, limit: int = READ_CHUNK) -> Batch:
        """``read`` without blocking the event loop: the store is read in a thread."""
        s = self.registry.read(turn_id, after, limit)
        if s.events is not None:
            return Batch(s.events, s.last_seq, s.ended)
        lines = await asyncio.to_thread(self.store.read_after, turn_id, after, limit, s.last_seq)
        return Batch(lines, s.last_seq, s.ended)

    def _tail(self, turn_id: str, limit: int, max_bytes: int) -> tuple[list[bytes], int]:
        s = self.registry.tail(turn_id, limit)
        if s.events is not None:
            return s.events, s.last_seq
        return self.store.tail(turn_id, limit, s.last_seq, max_bytes), s.last_seq

    # -- what to serve ---------------------------------------------------------------

    def plan(self, turn_id: str, *, after: int, compact: bool,
             info: TurnInfo | None = None) -> tuple[Gap | None, list[bytes] | None]:
        """For a finished turn: serve the snapshot form instead of raw events?

        ``(gap, lines)``: ``lines`` is the compacted form when it is asked for
        (from cursor 0) or when the full log is gone; ``gap`` says which raw
        events are missing in the latter case. ``(None, None)``: read raw.
        """
        info = info or self.status(turn_id)
        if not info.ended:
            return None, None
        if info.raw_removed:
            lines = self.compacted(info) or []
            available = SeqRange(line_seq(lines[0]), line_seq(lines[-1])) if lines else None
            if after >= info.last_seq:
                return None, []
            return Gap(after=after, missing=SeqRange(after + 1, info.last_seq), available=available,
                       form="compacted",
                       reason="retention removed this turn's full log; its compacted form follows"), lines
        if compact and after == 0:
            snapshot = self.compacted(info)
            if snapshot is not None:
                return None, snapshot
        return None, None

    def export(self, turn_id: str, *, limit: int = 200, after: int | None = None,
               compact: bool = False) -> ExportPage:
        """A page of history; never waits. ``after=None`` gives the tail."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit <= MAX_EXPORT_LIMIT:
            raise InvalidRequest(f"limit must be an integer in [0, {MAX_EXPORT_LIMIT}]")
        info = self.status(turn_id)
        if after is not None:
            check_cursor(after, info.last_seq)
        # compact: the whole snapshot form, paged by its own seqs (a page is bounded in bytes)
        gap, snapshot = self.plan(turn_id, after=0 if compact else after or 0, compact=compact, info=info)
        if snapshot is not None:
            wanted = [x for x in snapshot if after is None or line_seq(x) > after]
            lines = wanted[:limit] if after is not None else wanted[-limit:] if limit else []
            total = info.last_seq
            truncated = len(lines) < len(wanted)
        else:
            self.ensure_stream(turn_id)
            if after is None:
                lines, total = self._tail(turn_id, limit, self.max_page_bytes)
                truncated = bool(lines) and line_seq(lines[0]) > 1 or (not lines and total > 0)
            else:
                lines, total, _ = self.read(turn_id, after, limit, self.max_page_bytes)
                truncated = (line_seq(lines[-1]) if lines else after) < total
        lines, cut = bound_page(lines, self.max_page_bytes, keep_tail=after is None)  # bytes too
        truncated = truncated or cut
        next_after = line_seq(lines[-1]) if lines else (after or 0) if after is not None else total
        info.last_seq = max(info.last_seq, total)
        page = ExportPage(turn=info, events=[msgspec.Raw(line) for line in lines], total=total,
                          returned=len(lines), truncated=truncated, next_after=next_after,
                          compacted=snapshot is not None)
        if gap is not None:
            page.gap = gap
        return page

    # -- following ---------------------------------------------------------------------

    def _start(self, turn_id: str, after: int, compact: bool) -> list[bytes] | None:
        """Cursor check and replay plan shared by both iterators; the snapshot form, if served."""
        info = self.status(turn_id)
        check_cursor(after, info.last_seq)
        gap, snapshot = self.plan(turn_id, after=after, compact=compact, info=info)
        if gap is not None and not compact:
            raise HistoryGap(gap.reason + f" (events {gap.missing.from_}-{gap.missing.to} are gone)")
        if snapshot is None:
            self.ensure_stream(turn_id)
        return snapshot

    def batches(self, turn_id: str, *, after: int = 0, follow: bool = True,
                timeout: float | None = None, compact: bool = False) -> Iterator[list[bytes]]:
        """Stored lines from ``after + 1`` on, in batches; with ``follow`` until the terminal event."""
        snapshot = self._start(turn_id, after, compact)
        if snapshot is not None:
            if snapshot:
                yield snapshot
            return
        cursor = after
        while True:
            batch = self.read(turn_id, cursor)
            step = next_step(cursor, batch, follow=follow)
            if step is Step.LINES:
                yield batch.lines
                cursor = line_seq(batch.lines[-1])
            elif step is Step.LOST:
                raise lost_error(turn_id, cursor, batch.last_seq)
            elif step is Step.END:
                return
            elif not self.registry.wait(turn_id, cursor, timeout):
                raise TimeoutError(f"no event after seq {cursor} within {timeout} s")

    async def abatches(self, turn_id: str, *, after: int = 0, follow: bool = True,
                       timeout: float | None = None, compact: bool = False) -> AsyncIterator[list[bytes]]:
        snapshot = await asyncio.to_thread(self._start, turn_id, after, compact)
        if snapshot is not None:
            if snapshot:
                yield snapshot
            return
        cursor = after
        while True:
            batch = await self.aread(turn_id, cursor)
            step = next_step(cursor, batch, follow=follow)
            if step is Step.LINES:
                yield batch.lines
                cursor = line_seq(batch.lines[-1])
            elif step is Step.LOST:
                raise lost_error(turn_id, cursor, batch.last_seq)
            elif step is Step.END:
                return
            else:
                try:
                    await asyncio.wait_for(self.registry.wait_async(turn_id, cursor), timeout)
                except asyncio.TimeoutError:
                    raise TimeoutError(f"no event after seq {cursor} within {timeout} s") from None
