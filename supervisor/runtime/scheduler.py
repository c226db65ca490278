"""Admission: at most ``max_running_turns`` at once, a FIFO queue, and session policy.

A session has at most one running turn. A start on a busy session is rejected
(``reject``, the default), waits behind it (``enqueue``), or cancels it and
then runs (``interrupt``). The scheduler only decides; starting and ending
turns are callbacks into the Supervisor. One dispatcher thread starts queued
turns as slots free up; a start that fits at once is started by its caller.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from supervisor.errors import QueueFull, SessionBusy, SupervisorClosed
from supervisor.logs import get_logger

log = get_logger("runnerd.scheduler")
POLICIES = ("reject", "enqueue", "interrupt")


@dataclass
class Pending:
    turn_id: str
    session_id: str | None
    payload: Any  # what the start callback needs (spec, info)


class Scheduler:
    def __init__(self, *, max_running: int, max_queued: int,
                 start: Callable[[Pending], None], cancel_running: Callable[[str, str], None]) -> None:
        self.max_running = max_running
        self.max_queued = max_queued
        self._start = start
        self._cancel_running = cancel_running
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._queue: list[Pending] = []
        self._running: set[str] = set()
        self._session_running: dict[str, str] = {}
        self._stopping = False
        self._thread = threading.Thread(target=self._dispatch, name="runnerd-scheduler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> list[Pending]:
        """Stop dispatching; return the turns still queued (the caller ends them)."""
        with self._lock:
            self._stopping = True
            left, self._queue = self._queue, []
            self._wake.notify_all()
        if self._thread.is_alive():
            self._thread.join(5)
        return left

    def submit(self, p: Pending, policy: str) -> bool:
        """Admit ``p``; True: the caller starts it now; False: it is queued.

        Raises ``SessionBusy`` (reject policy) or ``QueueFull``.
        """
        interrupt: list[str] = []
        with self._lock:
            if self._stopping:
                raise SupervisorClosed("the supervisor is shutting down")
            busy = self._session_busy(p.session_id)
            if busy is not None and policy == "reject":
                raise SessionBusy(f"session {p.session_id} has an active turn {busy}", busy)
            if busy is not None and policy == "interrupt":
                interrupt = [t for t in (self._session_running.get(p.session_id or ""),) if t]
                # Queued turns of the session are overtaken, not run later.
                interrupt += [q.turn_id for q in self._queue if q.session_id == p.session_id]
            if busy is None and not self._queue_blocks(p) and len(self._running) < self.max_running:
                self._claim(p)
                return True
            if len(self._queue) >= self.max_queued:
                raise QueueFull(f"{len(self._queue)} turns are queued (max_queued); try again later")
            self._queue.append(p)
        for turn_id in interrupt:
            self._cancel_running(turn_id, f"interrupted by a new turn {p.turn_id} in its session")
        return False

    def ended(self, turn_id: str) -> None:
        """A started turn ended: free its slot and its session."""
        with self._lock:
            self._running.discard(turn_id)
            for session, running in list(self._session_running.items()):
                if running == turn_id:
                    del self._session_running[session]
            self._wake.notify_all()

    def remove_queued(self, turn_id: str) -> Pending | None:
        with self._lock:
            for i, p in enumerate(self._queue):
                if p.turn_id == turn_id:
                    del self._queue[i]
                    self._wake.notify_all()
                    return p
        return None

    def position(self, turn_id: str) -> int | None:
        """1-based place in the queue, or None when not queued."""
        with self._lock:
            for i, p in enumerate(self._queue):
                if p.turn_id == turn_id:
                    return i + 1
        return None

    # -- internals (lock held) ----------------------------------------------------

    def _session_busy(self, session_id: str | None) -> str | None:
        if session_id is None:
            return None
        running = self._session_running.get(session_id)
        if running is not None:
            return running
        return next((q.turn_id for q in self._queue if q.session_id == session_id), None)

    def _queue_blocks(self, p: Pending) -> bool:
        """FIFO: a new turn does not overtake queued ones while they could run."""
        return any(self._eligible(q) for q in self._queue)

    def _eligible(self, p: Pending) -> bool:
        return p.session_id is None or p.session_id not in self._session_running

    def _claim(self, p: Pending) -> None:
        self._running.add(p.turn_id)
        if p.session_id is not None:
            self._session_running[p.session_id] = p.turn_id

    def _next(self) -> Pending | None:
        if len(self._running) >= self.max_running:
            return None
        seen: set[str] = set()
        for i, p in enumerate(self._queue):
            # A session's turns run in their order: only its first queued turn may go.
            if p.session_id is not None and p.session_id in seen:
                continue
            if p.session_id is not None:
                seen.add(p.session_id)
            if self._eligible(p):
                del self._queue[i]
                self._claim(p)
                return p
        return None

    def _dispatch(self) -> None:
        while True:
            with self._lock:
                p = None
                while not self._stopping and p is None:
                    p = self._next()
                    if p is None:
                        self._wake.wait()
                if self._stopping or p is None:
                    return
            try:
                self._start(p)
            except Exception as exc:  # noqa: BLE001 - a failed spawn must not stop the dispatcher
                log.error("queued_turn_failed_to_start", turn_id=p.turn_id, error=repr(exc))
                self.ended(p.turn_id)
