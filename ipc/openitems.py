"""What a turn has open (steps, messages, tool calls, reasoning, subagents), in order.

One state machine for both sides of the pipe: the worker checks every event
against it before sending (content only for a started message, an end only
for something open: a clear exception in the agent), and the relay follows the
same events to close, innermost first, whatever a turn left open when it ends,
so every stream passes ``verifyEvents`` of ``@ag-ui/client``.
"""

from __future__ import annotations

from typing import Any

from msgspec import UNSET

from ipc import events as ev

__all__ = ["OpenItems", "OrderError"]

Key = tuple[str, str, Any]  # (kind, id, subagentRunId or UNSET)


class OrderError(ValueError):
    """An event that AG-UI's ordering rules forbid here (e.g. content for a message never started)."""


# What each event does to the open items: (action, kind, id field); other events do nothing.
_RULES: dict[type, tuple[str, str, str]] = {
    ev.TextMessageStart: ("open", "text message", "message_id"),
    ev.TextMessageContent: ("inside", "text message", "message_id"),
    ev.TextMessageEnd: ("close", "text message", "message_id"),
    ev.ToolCallStart: ("open", "tool call", "tool_call_id"),
    ev.ToolCallArgs: ("inside", "tool call", "tool_call_id"),
    ev.ToolCallEnd: ("close", "tool call", "tool_call_id"),
    ev.StepStarted: ("open", "step", "step_name"),
    ev.StepFinished: ("close", "step", "step_name"),
    ev.ReasoningStart: ("open", "reasoning span", "message_id"),
    ev.ReasoningEnd: ("close", "reasoning span", "message_id"),
    ev.ReasoningMessageStart: ("open", "reasoning message", "message_id"),
    ev.ReasoningMessageContent: ("inside", "reasoning message", "message_id"),
    ev.ReasoningMessageEnd: ("close", "reasoning message", "message_id"),
    ev.SubagentStarted: ("open", "subagent", "subagent_run_id"),
    ev.SubagentFinished: ("close", "subagent", "subagent_run_id"),
    ev.SubagentError: ("close", "subagent", "subagent_run_id"),
}


def _tag(event: ev.Event) -> str:
    return type(event).__struct_config__.tag  # type: ignore[return-value]


def _key(kind: str, event: Any, field: str) -> Key:
    # Steps are scoped per subagent (the verifier keys them so); ids are global.
    scope = event.subagent_run_id if kind == "step" else UNSET
    return (kind, getattr(event, field), scope)


class OpenItems:
    """Open items of one turn, in the order they were opened. Not thread-safe."""

    def __init__(self) -> None:
        self._open: dict[Key, Any] = {}  # key -> the opener's subagentRunId (closers repeat it)
        self._finished_subagents: set[str] = set()

    def copy(self) -> OpenItems:
        other = OpenItems()
        other._open = dict(self._open)
        other._finished_subagents = set(self._finished_subagents)
        return other

    def __len__(self) -> int:
        return len(self._open)

    def check(self, event: ev.Event) -> None:
        """Raise ``OrderError`` if ``event`` may not come now; change nothing."""
        rule = _RULES.get(type(event))
        if rule is not None:
            self._judge(event, *rule)

    def observe(self, event: ev.Event) -> None:
        """``check`` then ``apply`` (the worker's side)."""
        rule = _RULES.get(type(event))
        if rule is not None:
            self._commit(event, rule[0], rule[1], self._judge(event, *rule))

    def apply(self, event: ev.Event) -> None:
        """Follow ``event`` without judging it (the relay's side)."""
        rule = _RULES.get(type(event))
        if rule is not None:
            self._commit(event, rule[0], rule[1], _key(rule[1], event, rule[2]))

    def _judge(self, event: ev.Event, action: str, kind: str, field: str) -> Key:
        key = _key(kind, event, field)
        if action == "open":
            if key in self._open:
                raise OrderError(f"{_tag(event)}: {kind} {key[1]!r} is already open; end it first")
            if kind == "subagent" and key[1] in self._finished_subagents:
                raise OrderError(f"{_tag(event)}: subagent {key[1]!r} already finished; ids are per invocation")
        elif key not in self._open:
            raise OrderError(f"{_tag(event)}: no open {kind} {key[1]!r}; start it first")
        return key

    def _commit(self, event: ev.Event, action: str, kind: str, key: Key) -> None:
        if action == "open":
            self._open.setdefault(key, getattr(event, "subagent_run_id", UNSET))
        elif action == "close":
            self._open.pop(key, None)
            if kind == "subagent":
                self._finished_subagents.add(key[1])

    def open_items(self) -> list[tuple[str, str]]:
        return [(kind, ident) for kind, ident, _ in self._open]

    def closers(self, *, reason: str, timestamp: int | None = None) -> list[ev.Event]:
        """Events that close everything open, innermost (latest opened) first; then empty.

        Each carries ``metadata.runnerd.closed`` = ``reason``, so a client can
        tell the supervisor closed it, not the agent.
        """
        out: list[ev.Event] = []
        for (kind, ident, _scope), owner in reversed(self._open.items()):
            closer = _closer(kind, ident, reason)
            if owner is not UNSET:
                closer.subagent_run_id = owner
            closer.metadata = {"runnerd": {"closed": reason}}
            if timestamp is not None:
                closer.timestamp = timestamp
            out.append(closer)
        self._open.clear()
        return out


def _closer(kind: str, ident: str, reason: str) -> Any:
    if kind == "text message":
        return ev.TextMessageEnd(message_id=ident)
    if kind == "tool call":
        return ev.ToolCallEnd(tool_call_id=ident)
    if kind == "step":
        return ev.StepFinished(step_name=ident)
    if kind == "reasoning span":
        return ev.ReasoningEnd(message_id=ident)
    if kind == "reasoning message":
        return ev.ReasoningMessageEnd(message_id=ident)
    return ev.SubagentError(subagent_run_id=ident, message=f"the run ended ({reason}) while it ran",
                            code=reason)
