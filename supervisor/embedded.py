"""``Supervisor``: the embedded, thread-safe Python API over spawn, relay and storage.

Every ``runnerctl`` verb and HTTP route is one of these calls first.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from types import TracebackType
from typing import Any

import msgspec
import structlog

from ipc import events as ev
from ipc.protocol import TurnSpec
from ipc.wire import FrameReader, max_frame_bytes
from supervisor.config import Config
from supervisor.errors import (
    HistoryGap, InvalidCursor, InvalidRequest, QueueFull, ResourceUnavailable, SessionBusy, SupervisorClosed, UnknownAgent, UnknownTurn,
)
from supervisor.storage.eventlog import READ_BUDGET, FileEventLog
from supervisor.storage.lines import bound_page, line_seq
from supervisor.ids import new_turn_id, validate_session_id, validate_turn_id
from supervisor.storage.history import HistoryKeeper
from supervisor.runtime.proctree import Escalation, TurnTree
from supervisor.logs import configure_logging
from supervisor.runtime.capture import OutputSink
from supervisor.runtime.recovery import recover_lost
from supervisor.runtime.registry import StreamRegistry
from supervisor.storage.retention import PruneReport
from supervisor.runtime.scheduler import POLICIES, Pending, Scheduler
from supervisor.runtime.relay import REAP_TIMEOUT_S, Live, Relay
from supervisor.runtime.spawn import Spawner, become_subreaper
from supervisor.turns import Ending, ExportPage, Gap, Intent, SeqRange, TurnError, TurnInfo, TurnStatus, info_copy

log = structlog.get_logger("runnerd.supervisor")

MAX_EXPORT_LIMIT = 10_000
_READ_CHUNK = 1000


class Supervisor:
    """Runs turns in their own processes; safe to call from any thread.

    >>> with Supervisor(Config(state_dir="/tmp/x")) as sup:
    ...     turn = sup.start_turn("demo", {"prompt": "hi"})
    ...     for seq, event in sup.events(turn.turn_id): ...
    """

    def __init__(self, config: Config | None = None, *, subreaper: bool = True) -> None:
        self.config = config or Config()
        self._subreaper = subreaper
        self.eventlog = FileEventLog(self.config.state_dir)
        self.registry = StreamRegistry(buffer_bytes=self.config.buffer_bytes)
        self.spawner = Spawner(
            self.config.start_method,
            sorted({t.partition(":")[0] for t in self.config.agents.values()})
            if self.config.preload_agents else [],
        )
        self.relay = Relay(
            eventlog=self.eventlog,
            registry=self.registry,
            escalation=Escalation(self.config.cancel_grace_s, self.config.kill_grace_s),
            max_event_bytes=self.config.max_event_bytes,
            ended_memory_s=self.config.ended_memory_s,
            on_released=lambda turn_id: self.scheduler.ended(turn_id),
            on_ended=self._on_ended,
            limits=self.config.limits,
            poll_exit=self.config.start_method == "spawn",
        )
        self._uid, self._gid = _resolve_user(self.config.limits.user, self.config.limits.group)
        self.keeper = HistoryKeeper(eventlog=self.eventlog, relay=self.relay, registry=self.registry,
                                    retention=self.config.retention,
                                    compact_finished=self.config.compact_finished,
                                    max_event_bytes=self.config.max_event_bytes)
        self.scheduler = Scheduler(max_running=self.config.max_running_turns,
                                   max_queued=self.config.max_queued, start=self._launch,
                                   cancel_running=self._interrupt)
        self._lock = threading.Lock()  # the queued table and start/close ordering
        self._queued: dict[str, Pending] = {}
        self._started = False
        self._closed = False

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> Supervisor:
        if self._started:
            return self
        if not structlog.is_configured():
            # structlog's unconfigured default prints to stdout; a library must
            # not write into its host's stdout. A host's own configuration wins.
            configure_logging(self.config.log_level)
        if self._subreaper:
            become_subreaper()
        past = recover_lost(self.eventlog)
        for info in past:
            self.relay.past[info.turn_id] = info
        self.spawner.warm_up()
        self.relay.start()
        self.scheduler.start()
        self.keeper.start(past)
        self._started = True
        log.info("supervisor_started", state_dir=self.config.state_dir,
                 start_method=self.config.start_method, agents=sorted(self.config.agents))
        return self

    def close(self, *, drain: bool = False, timeout: float | None = None) -> None:
        """Stop: cancel running turns (or let them finish, ``drain``), then the relay."""
        with self._lock:
            if self._closed or not self._started:
                self._closed = True
                return
            self._closed = True  # from now on _launch adds turns already cancelled
        escalation = self.config.cancel_grace_s + self.config.kill_grace_s + REAP_TIMEOUT_S + 1.0
        deadline = time.monotonic() + (escalation if timeout is None else timeout)
        drain_until = deadline - escalation if drain else 0.0
        for pending in self.scheduler.stop():  # queued turns will never start now
            self._end_queued(pending, "supervisor shutdown")
        while time.monotonic() < deadline:
            with self._lock:
                launching = len(self._queued)
            lives = list(self.relay.live.values())
            if not lives and not launching:
                break
            if time.monotonic() >= drain_until:
                for live in lives:
                    if live.intent is Intent.NONE:
                        self.cancel(live.info.turn_id, reason="supervisor shutdown")
            if lives:
                lives[0].ended.wait(0.05)  # woken by the first turn to end, or re-check soon
            else:
                time.sleep(0.005)  # a launch in flight: it finishes in milliseconds
        self.relay.stop(max(0.1, deadline - time.monotonic()))
        self.keeper.stop(max(0.1, deadline - time.monotonic()))
        log.info("supervisor_stopped")

    def __enter__(self) -> Supervisor:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def agents(self) -> dict[str, str]:
        return dict(self.config.agents)

    # -- verbs -----------------------------------------------------------------

    def start_turn(self, agent: str, input: Any = None, *, session_id: str | None = None,
                   timeout_s: float | None = None, multitask: str = "reject") -> TurnInfo:
        """Start ``agent`` (a configured name, never an import path) on ``input``.

        ``multitask`` decides when ``session_id`` already has an active turn:
        ``reject`` (``SessionBusy``), ``enqueue`` (run after it) or
        ``interrupt`` (cancel it, then run). Over ``max_running_turns`` the
        turn is ``queued``; over ``max_queued`` it is refused (``QueueFull``).
        """
        if not isinstance(agent, str) or agent not in self.config.agents:
            raise UnknownAgent(f"unknown agent {str(agent)[:64]!r}; configured: {', '.join(sorted(self.config.agents))}")
        if session_id is not None:
            validate_session_id(session_id)
        if multitask not in POLICIES:
            raise InvalidRequest(f"multitask must be one of {', '.join(POLICIES)}")
        if timeout_s is None:
            timeout_s = self.config.default_timeout_s
        elif isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not 0 < timeout_s <= 7 * 86400:
            raise InvalidRequest("timeout_s must be a number of seconds in (0, 604800]")
        try:
            input_json = msgspec.json.encode(input)
        except (TypeError, msgspec.EncodeError) as exc:
            raise InvalidRequest(f"input is not JSON-serialisable: {exc}") from None
        if self._closed or not self._started:
            raise SupervisorClosed("the supervisor is not running")
        turn_id = new_turn_id()
        info = TurnInfo(turn_id=turn_id, agent=agent, session_id=session_id,
                        status=TurnStatus.QUEUED, created_at=time.time(), timeout_s=timeout_s)
        limits = self.config.limits
        spec = TurnSpec(turn_id=turn_id, thread_id=session_id or turn_id, agent_name=agent,
                        agent_target=self.config.agents[agent], input_json=input_json,
                        max_event_bytes=self.config.max_event_bytes, log_level=self.config.log_level,
                        env_allowlist=tuple(limits.env_allowlist) if limits.env_allowlist is not None else None,
                        open_files=limits.open_files, core_dumps=limits.core_dumps,
                        uid=self._uid, gid=self._gid)
        try:
            self.eventlog.create(info)
        except OSError as exc:  # EMFILE, ENOSPC, EAGAIN …: nothing was started
            raise ResourceUnavailable(f"cannot create the turn's log: {exc.strerror or exc}") from None
        self.registry.open(turn_id)
        pending = Pending(turn_id, session_id, (info, spec))
        with self._lock:
            self._queued[turn_id] = pending
        try:
            now = self.scheduler.submit(pending, multitask)
        except (SessionBusy, QueueFull, SupervisorClosed):
            with self._lock:
                del self._queued[turn_id]
            self.eventlog.close(turn_id)
            self.eventlog.remove(turn_id)  # refused: leave nothing behind
            self.registry.forget(turn_id)
            raise
        log.info("turn_submitted", turn_id=turn_id, agent=agent, session_id=session_id,
                 queued=not now, multitask=multitask)
        if now:
            self._launch(pending)
        return self.status(turn_id)

    def _launch(self, pending: Pending) -> None:
        """Spawn a turn the scheduler let through (caller's or dispatcher's thread)."""
        info, spec = pending.payload
        with self._lock:
            info.status = TurnStatus.STARTING
        try:
            try:
                spawned = self.spawner.spawn(spec)
            except (OSError, ValueError, RuntimeError) as exc:
                log.error("spawn_failed", turn_id=info.turn_id, error=repr(exc))
                message = f"could not start the turn's process: {exc}"
                self.relay.end_unstarted(info, spec, Ending(
                    TurnStatus.FAILED, ev.RunError(message=message, code="crashed"), TurnError("crashed", message)))
                return
            reader = FrameReader(spawned.reader, max_frame_bytes=max_frame_bytes(self.config.max_event_bytes))
            output = OutputSink(spawned.output, self.eventlog.dir / f"{info.turn_id}.output",
                                self.config.limits.output_bytes)
            info.pid = spawned.process.pid
            live = Live(info=info, spec=spec, spawned=spawned, reader=reader, output=output)
            with self._lock:  # a cancel (or close) that came while we spawned applies now
                if info.cancel_requested or self._closed:
                    info.cancel_requested = True
                    info.cancel_reason = info.cancel_reason or "supervisor shutdown"
                    live.intent = Intent.CANCEL
                    spawned.token.set()
                self.relay.add(live)  # the relay schedules the escalation for a cancelled one
                self._queued.pop(pending.turn_id, None)
        finally:
            with self._lock:  # only now: the turn is always in one of the tables
                self._queued.pop(pending.turn_id, None)

    def status(self, turn_id: str) -> TurnInfo:
        validate_turn_id(turn_id)
        with self.relay.lock:
            live = self.relay.live.get(turn_id)
            if live is not None:
                return info_copy(live.info)
            past = self.relay.past.get(turn_id)
            if past is not None:
                return info_copy(past)
        with self._lock:
            pending = self._queued.get(turn_id)
            if pending is not None:
                return info_copy(pending.payload[0], queue_position=self.scheduler.position(turn_id))
        raise UnknownTurn(f"unknown turn {turn_id}")

    def list_turns(self, *, status: str | None = None, session_id: str | None = None,
                   limit: int | None = None) -> list[TurnInfo]:
        """Newest first."""
        with self._lock:
            by_id = {p.turn_id: info_copy(p.payload[0], queue_position=self.scheduler.position(p.turn_id))
                     for p in self._queued.values()}
        with self.relay.lock:  # a turn being launched is in both tables for a moment
            by_id.update((live.info.turn_id, info_copy(live.info)) for live in self.relay.live.values())
            by_id.update((i.turn_id, info_copy(i)) for i in self.relay.past.values())
        infos = list(by_id.values())
        if status is not None:
            infos = [i for i in infos if i.status.value == status]
        if session_id is not None:
            infos = [i for i in infos if i.session_id == session_id]
        infos.sort(key=lambda i: i.turn_id, reverse=True)  # ids sort by creation time
        return infos[:limit] if limit is not None else infos

    def cancel(self, turn_id: str, *, reason: str | None = None) -> TurnInfo:
        """Idempotent and immediate: escalation runs on the relay thread."""
        validate_turn_id(turn_id)
        pending = self.scheduler.remove_queued(turn_id)
        if pending is not None:  # never started: end it here, cancelled
            self._end_queued(pending, reason)
            return self.status(turn_id)
        with self._lock:
            launching = self._queued.get(turn_id)
            if launching is not None:  # being spawned right now: _launch applies the cancel
                info = launching.payload[0]
                if not info.cancel_requested:
                    info.cancel_requested, info.cancel_reason = True, reason
                return info_copy(info)
        with self.relay.lock:
            live = self.relay.live.get(turn_id)
            # Once the agent has reported its end (or exited) the outcome is decided.
            if live is not None and live.intent is Intent.NONE and not live.exited and live.done is None:
                # Intent first, then the token: the reaper must see a cancel, not a crash.
                live.intent = Intent.CANCEL
                live.info.cancel_requested = True
                live.info.cancel_reason = reason
                live.spawned.token.set()
                self.relay.post_escalate(turn_id)
                log.info("turn_cancel_requested", turn_id=turn_id, reason=reason)
        return self.status(turn_id)

    def _end_queued(self, pending: Pending, reason: str | None) -> None:
        info, spec = pending.payload
        with self._lock:
            self._queued.pop(pending.turn_id, None)
        info.cancel_requested = True
        info.cancel_reason = reason
        self.relay.end_unstarted(info, spec, Ending(TurnStatus.CANCELLED, ev.RunFinished(
            thread_id=spec.thread_id, run_id=info.turn_id, outcome=ev.Outcome("cancelled"),
            timestamp=time.time_ns() // 1_000_000), None))

    def _interrupt(self, turn_id: str, reason: str) -> None:
        self.cancel(turn_id, reason=reason)

    def wait(self, turn_id: str, timeout: float | None = None) -> TurnInfo:
        """Block until the turn has ended (or ``timeout``); return its status.

        Waits on the registry's end, so the terminal event is readable on return.
        """
        self.ensure_stream(turn_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            last, ended = self.registry.position(turn_id)
            remaining = None if deadline is None else deadline - time.monotonic()
            if ended or (remaining is not None and remaining <= 0):
                return self.status(turn_id)
            self.registry.wait(turn_id, last, remaining)

    # -- reading ---------------------------------------------------------------

    def export(self, turn_id: str, *, limit: int = 200, after: int | None = None,
               compact: bool = False) -> ExportPage:
        """A page of history; never waits. ``after=None`` gives the tail.

        ``compact=True`` gives a finished turn's snapshot form (when compacted).
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit <= MAX_EXPORT_LIMIT:
            raise InvalidRequest(f"limit must be an integer in [0, {MAX_EXPORT_LIMIT}]")
        info = self.status(turn_id)
        if after is not None:
            self._check_cursor(after, info.last_seq)
        # compact: the whole snapshot form, paged by its own seqs (a page is bounded in bytes)
        gap, snapshot = self.replay_plan(turn_id, after=0 if compact else after or 0, compact=compact, info=info)
        if snapshot is not None:
            lines = [x for x in snapshot if after is None or line_seq(x) > after]
            lines = lines[:limit] if after is not None else lines[-limit:] if limit else []
            total = info.last_seq
            truncated = (line_seq(lines[-1]) < line_seq(snapshot[-1])) if lines and after is not None \
                else len(lines) < len([x for x in snapshot if after is None or line_seq(x) > after])
        else:
            self.ensure_stream(turn_id)
            if after is None:
                lines, total = self._tail(turn_id, limit, self.config.max_page_bytes)
                truncated = bool(lines) and line_seq(lines[0]) > 1 or (not lines and total > 0)
            else:
                lines, total, _ = self._read(turn_id, after, limit, self.config.max_page_bytes)
                truncated = (line_seq(lines[-1]) if lines else after) < total
        lines, cut = bound_page(lines, self.config.max_page_bytes, keep_tail=after is None)  # bytes too
        truncated = truncated or cut
        next_after = line_seq(lines[-1]) if lines else (after or 0) if after is not None else total
        info.last_seq = max(info.last_seq, total)
        page = ExportPage(turn=info, events=[msgspec.Raw(line) for line in lines], total=total,
                          returned=len(lines), truncated=truncated, next_after=next_after,
                          compacted=snapshot is not None)
        if gap is not None:
            page.gap = gap
        return page

    def replay_plan(self, turn_id: str, *, after: int, compact: bool,
                    info: TurnInfo | None = None) -> tuple[Gap | None, list[bytes] | None]:
        """For a finished turn: serve the snapshot form instead of raw events?

        Returns ``(gap, lines)``: ``lines`` is the compacted form when it is
        asked for (from cursor 0) or when the full log is gone; ``gap`` says
        which raw events are missing in the latter case. ``(None, None)``: read raw.
        """
        info = info or self.status(turn_id)
        if not info.ended:
            return None, None
        if info.raw_removed:
            lines = self.keeper.compacted(info) or []
            available = SeqRange(line_seq(lines[0]), line_seq(lines[-1])) if lines else None
            if after >= info.last_seq:
                return None, []
            return Gap(after=after, missing=SeqRange(after + 1, info.last_seq), available=available,
                       form="compacted",
                       reason="retention removed this turn's full log; its compacted form follows"), lines
        if compact and after == 0:
            snapshot = self.keeper.compacted(info)
            if snapshot is not None:
                return None, snapshot
        return None, None

    def prune(self, *, dry_run: bool = False) -> PruneReport:
        """Apply the retention limits now (the background pass does it periodically)."""
        return self.keeper.prune(dry_run=dry_run)

    def events(self, turn_id: str, *, after: int = 0, follow: bool = True,
               timeout: float | None = None, compact: bool = False) -> Iterator[tuple[int, ev.Event]]:
        """``(seq, event)`` from ``after + 1`` on; with ``follow`` until the terminal event.

        ``timeout`` bounds each wait for a new event (``TimeoutError``).
        ``compact`` replays a finished turn from 0 in its snapshot form.
        Raises ``HistoryGap`` when retention removed the raw events asked for.
        """
        for lines in self.event_batches(turn_id, after=after, follow=follow, timeout=timeout,
                                        compact=compact):
            for line in lines:
                yield line_seq(line), ev.decode_event(line)

    def event_batches(self, turn_id: str, *, after: int = 0, follow: bool = True,
                      timeout: float | None = None, compact: bool = False) -> Iterator[list[bytes]]:
        """Like ``events`` but yields the stored bytes, in batches (what SSE writes)."""
        info = self.status(turn_id)
        self._check_cursor(after, info.last_seq)
        gap, snapshot = self.replay_plan(turn_id, after=after, compact=compact, info=info)
        if gap is not None and not compact:
            raise HistoryGap(gap.reason + f" (events {gap.missing.from_}-{gap.missing.to} are gone)")
        if snapshot is not None:
            if snapshot:
                yield snapshot
            return
        self.ensure_stream(turn_id)
        cursor = after
        while True:
            lines, last, ended = self._read(turn_id, cursor, _READ_CHUNK)
            if lines:
                yield lines
                cursor = line_seq(lines[-1])
                continue
            if cursor < last:  # counted but not readable: the log lost them; never spin
                raise HistoryGap(f"events {cursor + 1}-{last} of turn {turn_id} are not in its log")
            if (ended and cursor >= last) or not follow:
                return
            if not self.registry.wait(turn_id, cursor, timeout):
                raise TimeoutError(f"no event after seq {cursor} within {timeout} s")

    async def aevents(self, turn_id: str, *, after: int = 0, follow: bool = True,
                      timeout: float | None = None, compact: bool = False) -> AsyncIterator[tuple[int, ev.Event]]:
        info = self.status(turn_id)
        self._check_cursor(after, info.last_seq)
        gap, snapshot = await asyncio.to_thread(self.replay_plan, turn_id, after=after, compact=compact,
                                                info=info)
        if gap is not None and not compact:
            raise HistoryGap(gap.reason + f" (events {gap.missing.from_}-{gap.missing.to} are gone)")
        if snapshot is not None:
            for line in snapshot:
                yield line_seq(line), ev.decode_event(line)
            return
        async for lines in self.aevent_batches(turn_id, after=after, follow=follow, timeout=timeout):
            for line in lines:
                yield line_seq(line), ev.decode_event(line)

    async def aevent_batches(self, turn_id: str, *, after: int = 0, follow: bool = True,
                             timeout: float | None = None) -> AsyncIterator[list[bytes]]:
        self._check_cursor(after, self.status(turn_id).last_seq)
        self.ensure_stream(turn_id)
        cursor = after
        while True:
            slice_ = self.registry.read(turn_id, cursor, _READ_CHUNK)
            if slice_.events is None:  # memory no longer holds it: read the log off-loop
                lines, last, ended = await asyncio.to_thread(self._read, turn_id, cursor, _READ_CHUNK)
            else:
                lines, last, ended = slice_.events, slice_.last_seq, slice_.ended
            if lines:
                yield lines
                cursor = line_seq(lines[-1])
                continue
            if cursor < last:
                raise HistoryGap(f"events {cursor + 1}-{last} of turn {turn_id} are not in its log")
            if (ended and cursor >= last) or not follow:
                return
            try:
                await asyncio.wait_for(self.registry.wait_async(turn_id, cursor), timeout)
            except asyncio.TimeoutError:
                raise TimeoutError(f"no event after seq {cursor} within {timeout} s") from None

    async def aread(self, turn_id: str, after: int, limit: int = _READ_CHUNK) -> tuple[list[bytes], int, bool]:
        """One batch after ``after`` without blocking the loop: memory first, the log in a thread."""
        s = self.registry.read(turn_id, after, limit)
        if s.events is not None:
            return s.events, s.last_seq, s.ended
        lines = await asyncio.to_thread(self.eventlog.read_after, turn_id, after, limit, s.last_seq)
        return lines, s.last_seq, s.ended

    # -- internals ---------------------------------------------------------------

    @staticmethod
    def _check_cursor(after: int, last_seq: int) -> None:
        if isinstance(after, bool) or not isinstance(after, int) or after < 0:
            raise InvalidCursor("the cursor must be a non-negative integer")
        if after > last_seq:
            raise InvalidCursor(f"cursor {after} is beyond the last seq {last_seq}")

    def ensure_stream(self, turn_id: str) -> None:
        """Turns from an earlier run of the daemon get a (memory-less) stream on first read."""
        if turn_id not in self.registry:
            info = self.status(turn_id)  # no lock held here: status takes its own
            self.registry.open_if_absent(turn_id, last_seq=info.last_seq, ended=info.ended)

    def _read(self, turn_id: str, after: int, limit: int,
              max_bytes: int = READ_BUDGET) -> tuple[list[bytes], int, bool]:
        s = self.registry.read(turn_id, after, limit)
        if s.events is not None:
            return s.events, s.last_seq, s.ended
        return self.eventlog.read_after(turn_id, after, limit, s.last_seq, max_bytes), s.last_seq, s.ended

    def _tail(self, turn_id: str, limit: int, max_bytes: int = READ_BUDGET) -> tuple[list[bytes], int]:
        s = self.registry.tail(turn_id, limit)
        if s.events is not None:
            return s.events, s.last_seq
        return self.eventlog.tail(turn_id, limit, s.last_seq, max_bytes), s.last_seq

    def _on_ended(self, info: TurnInfo) -> None:
        self.keeper.submit(info.turn_id)

    def turn_tree(self, turn_id: str) -> TurnTree | None:
        """The live turn's process tree (for metrics and tests)."""
        with self.relay.lock:
            live = self.relay.live.get(turn_id)
            return live.tree if live else None


def _resolve_user(user: str | None, group: str | None) -> tuple[int | None, int | None]:
    """Names from the config to ids, once, in the supervisor (a clear error at start-up)."""
    import grp
    import pwd

    uid = gid = None
    try:
        if user is not None:
            entry = pwd.getpwnam(user)
            uid, gid = entry.pw_uid, entry.pw_gid
        if group is not None:
            gid = grp.getgrnam(group).gr_gid
    except KeyError as exc:
        raise InvalidRequest(f"limits.user/group: {exc.args[0]}") from None
    return uid, gid
