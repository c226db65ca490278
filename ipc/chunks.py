"""``*_CHUNK`` events expanded into START / CONTENT (ARGS) / END, as ``@ag-ui/client`` does.

A chunk opens its message (tool call, reasoning message) when its id is new,
adds its delta, and the stream stays open until a chunk of the same kind with
another id, any other event, or ``flush``. runnerd stores only the expanded
form, so every reader (export, compaction, /v1 SSE) sees explicit events.
"""

from __future__ import annotations

from typing import Any

from msgspec import UNSET

from ipc import events as ev

__all__ = ["ChunkExpander", "ChunkError"]


class ChunkError(ValueError):
    """A chunk stream that cannot be expanded (its first chunk has no id or name)."""


class ChunkExpander:
    """Per-turn chunk state. Not thread-safe; ``copy`` for all-or-nothing batches."""

    def __init__(self) -> None:
        self._current: dict[str, ev.Event] = {}  # kind -> the START it opened

    def __bool__(self) -> bool:
        """Whether a chunk stream is open."""
        return bool(self._current)

    def copy(self) -> ChunkExpander:
        other = ChunkExpander()
        other._current = dict(self._current)
        return other

    def expand(self, event: ev.Event) -> list[ev.Event]:
        if isinstance(event, ev.TextMessageChunk):
            return self._text(event)
        if isinstance(event, ev.ToolCallChunk):
            return self._tool(event)
        if isinstance(event, ev.ReasoningMessageChunk):
            return self._reasoning(event)
        return [*self.flush(), event]

    def flush(self) -> list[ev.Event]:
        """End every chunk stream still open (the latest first)."""
        out = [self._end(start) for start in reversed(self._current.values())]
        self._current.clear()
        return out

    def _switch(self, kind: str, ident: Any, start: ev.Event | None) -> tuple[list[ev.Event], ev.Event]:
        """Close the stream of ``kind`` when ``ident`` names another; open the new one."""
        out: list[ev.Event] = []
        current = self._current.get(kind)
        if current is not None and (ident is UNSET or ident == _ident(current)):
            return out, current
        if current is not None:
            out.append(self._end(self._current.pop(kind)))
        if start is None:
            raise ChunkError(f"the first {kind} chunk needs its id")
        self._current[kind] = start
        out.append(start)
        return out, start

    def _text(self, c: ev.TextMessageChunk) -> list[ev.Event]:
        start = None
        if c.message_id is not UNSET:
            start = ev.TextMessageStart(message_id=c.message_id,
                                        role=c.role if c.role is not UNSET else "assistant")
            start.name = c.name
            _attribute(start, c)
        out, opened = self._switch("text message", c.message_id, start)
        if c.delta is not UNSET:
            body = ev.TextMessageContent(message_id=_ident(opened), delta=c.delta)
            _attribute(body, c, opened)
            out.append(body)
        return out

    def _tool(self, c: ev.ToolCallChunk) -> list[ev.Event]:
        start = None
        if c.tool_call_id is not UNSET:
            if c.tool_call_name is UNSET and self._current.get("tool call") is None:
                raise ChunkError("the first TOOL_CALL_CHUNK needs toolCallName")
            if c.tool_call_name is not UNSET:
                start = ev.ToolCallStart(tool_call_id=c.tool_call_id, tool_call_name=c.tool_call_name)
                start.parent_message_id = c.parent_message_id
                _attribute(start, c)
        out, opened = self._switch("tool call", c.tool_call_id, start)
        if c.delta is not UNSET:
            body = ev.ToolCallArgs(tool_call_id=_ident(opened), delta=c.delta)
            _attribute(body, c, opened)
            out.append(body)
        return out

    def _reasoning(self, c: ev.ReasoningMessageChunk) -> list[ev.Event]:
        start = None
        if c.message_id is not UNSET:
            start = ev.ReasoningMessageStart(message_id=c.message_id)
            _attribute(start, c)
        out, opened = self._switch("reasoning message", c.message_id, start)
        if c.delta is not UNSET:
            body = ev.ReasoningMessageContent(message_id=_ident(opened), delta=c.delta)
            _attribute(body, c, opened)
            out.append(body)
        return out

    @staticmethod
    def _end(start: ev.Event) -> ev.Event:
        end: Any
        if isinstance(start, ev.TextMessageStart):
            end = ev.TextMessageEnd(message_id=start.message_id)
        elif isinstance(start, ev.ToolCallStart):
            end = ev.ToolCallEnd(tool_call_id=start.tool_call_id)
        else:
            assert isinstance(start, ev.ReasoningMessageStart)
            end = ev.ReasoningMessageEnd(message_id=start.message_id)
        end.subagent_run_id = start.subagent_run_id
        return end  # type: ignore[no-any-return]


def _ident(start: Any) -> str:
    ident: str = start.tool_call_id if isinstance(start, ev.ToolCallStart) else start.message_id
    return ident


def _attribute(target: Any, chunk: Any, opened: Any = None) -> None:
    """The chunk's subagent, metadata and rawEvent travel on what it becomes."""
    owner = chunk.subagent_run_id if chunk.subagent_run_id is not UNSET else (
        opened.subagent_run_id if opened is not None else UNSET)
    target.subagent_run_id = owner
    if opened is None or target is not opened:
        target.metadata = chunk.metadata
        target.raw_event = chunk.raw_event
        target.timestamp = chunk.timestamp
