"""Per-turn limit policy: what counts as over a limit, and how it is reported.

The relay feeds it numbers (events, bytes, the live processes of a turn's
tree); it answers with the ``Breach`` that ends the turn, or None.
"""

from __future__ import annotations

import psutil

from supervisor.config import LimitsConfig
from supervisor.runtime.stoppolicy import Breach
from supervisor.turns import Intent


class LimitGuard:
    def __init__(self, limits: LimitsConfig) -> None:
        self.limits = limits

    @property
    def watches_tree(self) -> bool:
        return self.limits.memory_bytes is not None or self.limits.max_processes is not None

    def check_event(self, next_seq: int, turn_bytes: int, size: int) -> Breach | None:
        lim = self.limits
        if lim.max_events is not None and next_seq > lim.max_events:
            return Breach(Intent.LIMIT, f"the turn emitted more than {lim.max_events} events (limits.max_events)")
        if lim.max_turn_bytes is not None and turn_bytes + size > lim.max_turn_bytes:
            return Breach(Intent.LIMIT,
                          f"the turn emitted more than {lim.max_turn_bytes} event bytes (limits.max_turn_bytes)")
        return None

    def check_tree(self, procs: list[psutil.Process]) -> Breach | None:
        lim = self.limits
        alive = [p for p in procs if _alive(p)]
        if lim.max_processes is not None and len(alive) > lim.max_processes:
            return Breach(Intent.LIMIT,
                          f"the turn ran {len(alive)} processes (limits.max_processes {lim.max_processes})")
        if lim.memory_bytes is not None:
            rss = 0
            for p in alive:
                try:
                    rss += p.memory_info().rss
                except psutil.Error:
                    continue  # exited between the listing and now
            if rss > lim.memory_bytes:
                return Breach(Intent.MEMORY, (f"the turn's processes used {rss >> 20} MiB "
                                              f"(limits.memory_bytes {lim.memory_bytes >> 20} MiB)"))
        return None


def _alive(p: psutil.Process) -> bool:
    try:
        return bool(p.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False
