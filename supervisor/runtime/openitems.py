"""Per-turn open items, followed by the relay and closed on every ending.

A turn may end with a step, a text message, a tool call, a reasoning message
or span, or a subagent still open: cancelled mid-message, killed after the
grace, timed out, crashed, stopped by a limit, or ``lost`` with the daemon.
AG-UI's verifier refuses ``RUN_FINISHED`` while anything is open, and a
cancelled run must close what it opened before its final event. So before the
terminal event the supervisor writes one closing event per open item,
innermost first (``TEXT_MESSAGE_END``, ``TOOL_CALL_END``, ``STEP_FINISHED``,
``REASONING_MESSAGE_END``, ``REASONING_END``, ``SUBAGENT_ERROR``), each with
``metadata.runnerd.closed`` naming the ending. It does so before ``RUN_ERROR``
too: the verifier allows either, and a closed stream compacts and renders the
same way whatever the ending.

A success with items left open (the agent returned without ending them) gets
the same treatment and stays a success: the agent's result is real, and the
closers say the supervisor, not the agent, ended them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import msgspec

from ipc import events as ev
from ipc.openitems import OpenItems
from supervisor.storage.lines import event_line

__all__ = ["OpenItemTracker", "closing_lines", "open_items_of"]


class OpenItemTracker:
    """The open items of every live turn; used by the relay thread only."""

    def __init__(self) -> None:
        self._turns: dict[str, OpenItems] = {}

    def follow(self, turn_id: str, event: ev.Event) -> None:
        items = self._turns.get(turn_id)
        if items is None:
            items = self._turns[turn_id] = OpenItems()
        items.apply(event)

    def close(self, turn_id: str, last_seq: int, reason: str) -> list[bytes]:
        """Stored lines closing what ``turn_id`` left open, numbered after ``last_seq``; forgets it."""
        items = self._turns.pop(turn_id, None)
        return closing_lines(items, last_seq, reason) if items else []


def closing_lines(items: OpenItems, last_seq: int, reason: str) -> list[bytes]:
    now_ms = time.time_ns() // 1_000_000
    return [event_line(i, event)
            for i, event in enumerate(items.closers(reason=reason, timestamp=now_ms), start=last_seq + 1)]


_lenient = msgspec.json.Decoder(ev.Event)


def open_items_of(lines: Iterable[bytes]) -> OpenItems:
    """Replay stored lines (recovery of a ``lost`` turn); unreadable lines are skipped."""
    items = OpenItems()
    for line in lines:
        try:
            items.apply(_lenient.decode(line))
        except msgspec.DecodeError:
            continue
    return items
