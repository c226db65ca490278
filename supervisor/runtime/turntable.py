"""The turn table: the one owner of turn records, from admission to the end.

A turn is *pending* (admitted: queued, or being spawned), then *live* (it has
a process; the relay thread is the only writer of its live state), then
*ended*. One lock guards all three; every other module reads copies through
``get``, ``list`` and ``counts``. Lock order: the table's lock may be taken
while holding none other, and nothing is called out while it is held.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

from supervisor.errors import UnknownTurn
from supervisor.runtime.scheduler import Pending
from supervisor.turns import TurnInfo, TurnStatus, info_copy

if TYPE_CHECKING:
    from supervisor.runtime.relay import Live


class TurnTable:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._ended_cond = threading.Condition(self.lock)
        self._pending: dict[str, Pending] = {}
        self._live: dict[str, Live] = {}
        self._ended: dict[str, TurnInfo] = {}
        self.queue_position: Callable[[str], int | None] = lambda turn_id: None

    # -- reads (any thread; copies) ------------------------------------------------

    def get(self, turn_id: str) -> TurnInfo:
        with self.lock:
            live = self._live.get(turn_id)
            if live is not None:
                return info_copy(live.info)
            ended = self._ended.get(turn_id)
            if ended is not None:
                return info_copy(ended)
            pending = self._pending.get(turn_id)
            info = info_copy(pending.payload[0]) if pending is not None else None
        if info is None:
            raise UnknownTurn(f"unknown turn {turn_id}")
        info.queue_position = self.queue_position(turn_id)  # the scheduler's lock, not ours
        return info

    def select(self, *, status: str | None = None, session_id: str | None = None,
             limit: int | None = None) -> list[TurnInfo]:
        """Newest first."""
        with self.lock:
            by_id = {t: info_copy(p.payload[0]) for t, p in self._pending.items()}
            by_id.update((t, info_copy(live.info)) for t, live in self._live.items())
            by_id.update((t, info_copy(i)) for t, i in self._ended.items())
        infos = [i for i in by_id.values()
                 if (status is None or i.status.value == status)
                 and (session_id is None or i.session_id == session_id)]
        infos.sort(key=lambda i: i.turn_id, reverse=True)  # ids sort by creation time
        infos = infos[:limit] if limit is not None else infos
        for info in infos:
            if info.status is TurnStatus.QUEUED:
                info.queue_position = self.queue_position(info.turn_id)
        return infos

    def counts(self) -> Counter[TurnStatus]:
        with self.lock:
            c = Counter(p.payload[0].status for p in self._pending.values())
            c.update(live.info.status for live in self._live.values())
            c.update(i.status for i in self._ended.values())
        return c

    @property
    def running(self) -> int:
        """Turns with a process (starting or running); not one whose terminal event is
        written (its log is being made durable)."""
        with self.lock:
            return self._unended_live()

    @property
    def busy(self) -> int:
        """Turns admitted and not yet ended."""
        with self.lock:
            return self._unended_live() + len(self._pending)

    def _unended_live(self) -> int:
        return sum(not live.info.status.ended for live in self._live.values())

    def ended_records(self) -> list[TurnInfo]:
        with self.lock:
            return [info_copy(i) for i in self._ended.values()]

    # -- live turns (the relay thread and the Supervisor) ----------------------------

    def live(self, turn_id: str) -> Live | None:
        return self._live.get(turn_id)

    def lives(self) -> list[Live]:
        """A snapshot: other threads insert while the relay iterates."""
        return list(self._live.values())

    def running_trees(self) -> list[tuple[str, int, float, int]]:
        """(turn id, root pid, root start time, last seq) of each live turn not yet ended.

        A live turn whose terminal event is written stays in the live table while the
        relay reaps it; it is no longer running, so it is left out.
        """
        with self.lock:
            return [(t, live.tree.root_pid, live.tree.root_create_time, live.info.last_seq)
                    for t, live in self._live.items()
                    if live.tree is not None and not live.info.status.ended]

    def pending_locked(self, turn_id: str) -> Pending | None:
        """The pending record itself (caller holds ``lock``): a cancel marks a turn being spawned."""
        return self._pending.get(turn_id)

    # -- transitions -------------------------------------------------------------------

    def admit(self, pending: Pending) -> None:
        with self.lock:
            self._pending[pending.turn_id] = pending

    def withdraw(self, turn_id: str) -> None:
        """A refused admission: the turn never existed."""
        with self.lock:
            self._pending.pop(turn_id, None)

    def go_live(self, live: Live) -> None:
        """Pending → live, in one step: the turn is always in exactly one table."""
        with self.lock:
            self._live[live.info.turn_id] = live
            self._pending.pop(live.info.turn_id, None)

    def end(self, info: TurnInfo) -> None:
        """Pending or live → ended; wakes ``wait_for_end``."""
        with self.lock:
            self._live.pop(info.turn_id, None)
            self._pending.pop(info.turn_id, None)
            self._ended[info.turn_id] = info
            self._ended_cond.notify_all()

    def load(self, infos: list[TurnInfo]) -> None:
        """Records from disk at start-up (all ended by then)."""
        with self.lock:
            self._ended.update((i.turn_id, i) for i in infos)

    def forget(self, turn_id: str) -> None:
        """Retention removed the turn."""
        with self.lock:
            self._ended.pop(turn_id, None)

    def update_ended(self, turn_id: str, **changes: object) -> TurnInfo | None:
        """Change an ended record (compaction state, retention); a copy of the result."""
        with self.lock:
            info = self._ended.get(turn_id)
            if info is None:
                return None
            for key, value in changes.items():
                setattr(info, key, value)
            return info_copy(info)

    def wait_for_end(self, timeout: float) -> None:
        """Block until some turn ends, or ``timeout``."""
        with self._ended_cond:
            self._ended_cond.wait(timeout)
