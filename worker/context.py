"""``TurnContext``: the one object agent code gets, to emit events and see cancel.

Every helper ends in ``emit``, which encodes the event once, checks its size and
writes it to the pipe before returning.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any

import msgspec
import structlog

from ipc import events as ev
from ipc.token import CancelFlag
from ipc.wire import FrameWriter

__all__ = ["TurnContext", "Cancelled", "EventTooLarge", "MessageWriter", "ToolCall"]

# The supervisor alone writes the lifecycle; an agent emitting these would
# break "exactly one terminal event".
_SUPERVISOR_ONLY = (ev.RunStarted, ev.RunFinished, ev.RunError)


class Cancelled(BaseException):
    """Raised by ``check_cancelled``; a BaseException so ``except Exception`` won't eat it."""


class EventTooLarge(ValueError):
    """An event's encoding exceeds the per-event byte cap."""


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class TurnContext:
    """Handed to ``agent(ctx, input)``; safe to use from several threads."""

    def __init__(
        self,
        *,
        turn_id: str,
        thread_id: str,
        writer: FrameWriter,
        token: CancelFlag,
        max_event_bytes: int,
    ) -> None:
        self.turn_id = turn_id
        self.thread_id = thread_id
        self.log = structlog.get_logger("runnerd.agent").bind(turn_id=turn_id)
        self._writer = writer
        self._token = token
        self._max = max_event_bytes
        self._ids = itertools.count(1)

    # -- events -----------------------------------------------------------

    def emit(self, event: ev.Event) -> None:
        """Send one event; returns once it is in the pipe (survives a SIGKILL)."""
        self._writer.send_events([self._encode(event)])

    def emit_many(self, events: Iterable[ev.Event]) -> None:
        """Send several events as one frame."""
        encoded = [self._encode(e) for e in events]
        if encoded:
            self._writer.send_events(encoded)

    def _encode(self, event: ev.Event) -> bytes:
        if isinstance(event, _SUPERVISOR_ONLY):
            raise ValueError(f"{type(event).__name__} is written by the supervisor, not the agent")
        if event.seq is not msgspec.UNSET:
            raise ValueError("seq is assigned by the supervisor; leave it unset")
        if event.timestamp is msgspec.UNSET:
            event.timestamp = _now_ms()
        try:
            data = ev.encode_event(event)
        except (TypeError, msgspec.EncodeError) as exc:
            raise TypeError(f"event is not JSON-serialisable: {exc}") from None
        if len(data) > self._max:
            raise EventTooLarge(
                f"{type(event).__name__} is {len(data)} bytes; the limit is {self._max}"
            )
        return data

    def new_id(self, prefix: str) -> str:
        return f"{prefix}-{self.turn_id[-8:]}-{next(self._ids)}-{uuid.uuid4().hex[:6]}"

    # -- helpers ----------------------------------------------------------

    def message(self, role: str = "assistant", *, message_id: str | None = None) -> MessageWriter:
        """``with ctx.message() as m: m.write("…")`` streams one text message."""
        return MessageWriter(self, message_id or self.new_id("msg"), role)

    def tool_call(
        self, name: str, *, tool_call_id: str | None = None, parent_message_id: str | None = None
    ) -> ToolCall:
        """``with ctx.tool_call("search") as t: t.args('{"q":1}'); t.result("…")``."""
        return ToolCall(self, tool_call_id or self.new_id("call"), name, parent_message_id)

    def state_snapshot(self, snapshot: Any) -> None:
        self.emit(ev.StateSnapshot(snapshot=snapshot))

    def state_delta(self, operations: list[dict[str, Any]]) -> None:
        """``operations`` is an RFC 6902 JSON Patch."""
        self.emit(ev.StateDelta(delta=operations))

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        self.emit(ev.StepStarted(step_name=name))
        yield
        self.emit(ev.StepFinished(step_name=name))

    def custom(self, name: str, value: Any) -> None:
        self.emit(ev.Custom(name=name, value=value))

    def raw(self, event: Any, *, source: str | None = None) -> None:
        self.emit(ev.Raw(event=event) if source is None else ev.Raw(event=event, source=source))

    # -- cancel -----------------------------------------------------------

    @property
    def cancelled(self) -> bool:
        return self._token.is_set()

    def check_cancelled(self) -> None:
        if self._token.is_set():
            raise Cancelled()


class MessageWriter:
    """One streamed text message: START on enter, a CONTENT per write, END on exit."""

    def __init__(self, ctx: TurnContext, message_id: str, role: str) -> None:
        self.ctx = ctx
        self.message_id = message_id
        self.role = role

    def __enter__(self) -> MessageWriter:
        self.ctx.emit(ev.TextMessageStart(message_id=self.message_id, role=self.role))  # type: ignore[arg-type]
        return self

    def write(self, delta: str) -> None:
        if delta:  # AG-UI forbids empty deltas; an empty write is a no-op
            self.ctx.emit(ev.TextMessageContent(message_id=self.message_id, delta=delta))

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Closed on every exit, cancel included, so the message stays well-formed.
        self.ctx.emit(ev.TextMessageEnd(message_id=self.message_id))


class ToolCall:
    """One tool call: START on enter, ARGS per ``args``, END on exit, optional RESULT."""

    def __init__(
        self, ctx: TurnContext, tool_call_id: str, name: str, parent_message_id: str | None
    ) -> None:
        self.ctx = ctx
        self.tool_call_id = tool_call_id
        self.name = name
        self.parent_message_id = parent_message_id
        self._pending_result: str | None = None

    def __enter__(self) -> ToolCall:
        start = ev.ToolCallStart(tool_call_id=self.tool_call_id, tool_call_name=self.name)
        if self.parent_message_id is not None:
            start.parent_message_id = self.parent_message_id
        self.ctx.emit(start)
        return self

    def args(self, delta: str) -> None:
        self.ctx.emit(ev.ToolCallArgs(tool_call_id=self.tool_call_id, delta=delta))

    def result(self, content: str) -> None:
        """Record the tool's result; sent after TOOL_CALL_END, as AG-UI orders it."""
        self._pending_result = content

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        out: list[ev.Event] = [ev.ToolCallEnd(tool_call_id=self.tool_call_id)]
        if self._pending_result is not None:
            out.append(ev.ToolCallResult(
                message_id=self.ctx.new_id("tool"),
                tool_call_id=self.tool_call_id,
                content=self._pending_result,
                role="tool",
            ))
        self.ctx.emit_many(out)
