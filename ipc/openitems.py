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


_OPEN = {  # event type -> (kind, id field)
    "TEXT_MESSAGE_START": ("text message", "message_id"),
    "TOOL_CALL_START": ("tool call", "tool_call_id"),
    "STEP_STARTED": ("step", "step_name"),
    "REASONING_START": ("reasoning span", "message_id"),
    "REASONING_MESSAGE_START": ("reasoning message", "message_id"),
    "SUBAGENT_STARTED": ("subagent", "subagent_run_id"),
}
_INSIDE = {  # needs an open item, leaves it open
    "TEXT_MESSAGE_CONTENT": ("text message", "message_id"),
    "TOOL_CALL_ARGS": ("tool call", "tool_call_id"),
    "REASONING_MESSAGE_CONTENT": ("reasoning message", "message_id"),
}
_CLOSE = {
    "TEXT_MESSAGE_END": ("text message", "message_id"),
    "TOOL_CALL_END": ("tool call", "tool_call_id"),
    "STEP_FINISHED": ("step", "step_name"),
    "REASONING_END": ("reasoning span", "message_id"),
    "REASONING_MESSAGE_END": ("reasoning message", "message_id"),
    "SUBAGENT_FINISHED": ("subagent", "subagent_run_id"),
    "SUBAGENT_ERROR": ("subagent", "subagent_run_id"),
}


def _tag(event: ev.Event) -> str:
    return type(event).__struct_config__.tag  # type: ignore[return-value]


def _key(kind: str, event: ev.Event, field: str) -> Key:
    # Steps are scoped per subagent (the verifier keys them so); ids are global.
    scope = getattr(event, "subagent_run_id", UNSET) if kind == "step" else UNSET
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
        tag = _tag(event)
        if tag in _OPEN:
            kind, field = _OPEN[tag]
            key = _key(kind, event, field)
            if key in self._open:
                raise OrderError(f"{tag}: {kind} {key[1]!r} is already open; end it first")
            if kind == "subagent" and key[1] in self._finished_subagents:
                raise OrderError(f"{tag}: subagent {key[1]!r} already finished; ids are per invocation")
        elif tag in _INSIDE or tag in _CLOSE:
            kind, field = _INSIDE.get(tag) or _CLOSE[tag]
            key = _key(kind, event, field)
            if key not in self._open:
                raise OrderError(f"{tag}: no open {kind} {key[1]!r}; start it first")

    def apply(self, event: ev.Event) -> None:
        """Follow ``event`` without judging it (the relay's side)."""
        tag = _tag(event)
        if tag in _OPEN:
            kind, field = _OPEN[tag]
            self._open.setdefault(_key(kind, event, field), getattr(event, "subagent_run_id", UNSET))
        elif tag in _CLOSE:
            kind, field = _CLOSE[tag]
            key = _key(kind, event, field)
            self._open.pop(key, None)
            if kind == "subagent":
                self._finished_subagents.add(key[1])

    def observe(self, event: ev.Event) -> None:
        """``check`` then ``apply`` (the worker's side)."""
        self.check(event)
        self.apply(event)

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
