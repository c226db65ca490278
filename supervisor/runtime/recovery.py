"""Start-up recovery: turns that were running when the daemon died end ``lost``.

Each gets exactly one ``RUN_ERROR`` with code ``lost``, after closing what it
left open (``supervisor.runtime.openitems``); any process of it that
survived is killed: by the dead daemon's turn cgroups when there are cgroups,
and by pid *and* create time (never a bare pid) and by the turn's marks.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

from ipc import events as ev
from supervisor.logs import get_logger
from supervisor.runtime.cgroups import Cgroups
from supervisor.runtime.openitems import closing_lines, open_items_of
from supervisor.runtime.proctree import TurnTree, kill_marked
from supervisor.storage.lines import event_line, line_seq
from supervisor.storage.stores import EventStore, TurnStore
from supervisor.turns import TurnError, TurnInfo, TurnStatus

log = get_logger("runnerd.recovery")


def recover_lost(events: EventStore, records: TurnStore, cgroups: Cgroups | None = None) -> list[TurnInfo]:
    """Load every turn's record; close the ones a dead daemon left open."""
    if cgroups is not None and cgroups.enabled:  # by cgroup first: it holds even renamed, setsid'd escapees
        killed, removed = cgroups.sweep_stale()
        if killed or removed:
            log.warning("stale_cgroups_removed", processes_killed=killed, cgroups_removed=removed)
    infos = records.load_all()
    lost = {i.turn_id for i in infos if not i.ended}
    for info in infos:
        if info.ended:
            continue
        last = events.reopen(info.turn_id)
        if info.pid and info.pid_create_time:
            TurnTree(info.turn_id, info.pid, info.pid_create_time).signal(signal.SIGKILL)
        rebuilt = records.ending_from_log(info.turn_id)
        if rebuilt is not None:
            # The daemon died after the terminal event, before the metadata said so:
            # adopt that ending, never write a second one.
            events.close(info.turn_id)
            info.status, info.error, info.last_seq = rebuilt.status, rebuilt.error, rebuilt.last_seq
            info.ended_at = info.ended_at or time.time()
            records.put(info)
            log.warning("turn_ending_recovered", turn_id=info.turn_id, status=info.status.value)
            continue
        now_ms = time.time_ns() // 1_000_000
        lines = []
        if last == 0:  # it never started: keep RUN_STARTED first
            last += 1
            started = ev.RunStarted(thread_id=info.session_id or info.turn_id, run_id=info.agui_run_id,
                                    timestamp=now_ms)
            lines.append(event_line(last, started))
        message = "the daemon stopped while this turn was running"
        closing = closing_lines(open_items_of(_stored(events, info.turn_id, last)), last, "lost")
        lines += closing  # what it left open is closed before its RUN_ERROR, as for any ending
        last += len(closing) + 1
        lines.append(event_line(last, ev.RunError(message=message, code="lost", timestamp=now_ms)))
        events.append(info.turn_id, lines)
        events.close(info.turn_id)
        info.status = TurnStatus.LOST
        info.error = TurnError("lost", message)
        info.last_seq = last
        info.ended_at = time.time()
        records.put(info)
        log.warning("turn_lost", turn_id=info.turn_id, last_seq=last)
    if lost:  # descendants that double-forked away from the root are found by their marks
        killed = kill_marked(lost)
        log.info("lost_turn_processes_killed", count=killed)
    return infos


def _stored(events: EventStore, turn_id: str, last: int) -> Iterator[bytes]:
    after = 0
    while after < last:
        page = events.read_after(turn_id, after, 10_000, last)
        if not page:
            return
        yield from page
        after = line_seq(page[-1])
