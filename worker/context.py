"""``TurnContext``: the one object agent code gets, to emit events and see cancel.

Every helper ends in ``emit``, which encodes the event once, checks its size and
writes it to the pipe before returning.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
import uuid
from collections.abc import Awaitable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from types import TracebackType
from typing import Any, TypeVar, Union, cast

import msgspec
import structlog

from ipc import events as ev
from ipc.chunks import ChunkError, ChunkExpander
from ipc.openitems import OpenItems, OrderError
from ipc.wire import FrameSink
from worker.asyncrun import CancelWatch, cancel_on_token

__all__ = ["TurnContext", "Cancelled", "EventTooLarge", "InvalidEvent", "MessageWriter", "ToolCall"]

_CHUNKS = frozenset({ev.TextMessageChunk, ev.ToolCallChunk, ev.ReasoningMessageChunk})

# The union's classes, as a set: a membership test, not 31 isinstance checks per emit.
_EVENT_CLASSES: frozenset[type] = frozenset(ev.Event.__args__)  # type: ignore[attr-defined]
# Structs an agent may emit that need no chunk expansion: emit's fast path.
_PLAIN_STRUCTS: frozenset[type] = _EVENT_CLASSES - _CHUNKS - frozenset(ev.SUPERVISOR_ONLY)
EventLike = Union[ev.Event, Mapping[str, Any], Any]  # Any: an ``ag_ui.core`` pydantic event


class Cancelled(BaseException):
    """Raised by ``check_cancelled``; a BaseException so ``except Exception`` won't eat it."""


class EventTooLarge(ValueError):
    """An event's encoding exceeds the per-event byte cap."""


class InvalidEvent(ValueError):
    """An event AG-UI clients would reject: bad fields, a bad patch, out of order."""


T = TypeVar("T")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class TurnContext:
    """Handed to ``agent(ctx, input)``; safe to use from several threads."""

    def __init__(
        self,
        *,
        turn_id: str,
        thread_id: str,
        writer: FrameSink,
        token: CancelWatch,
        max_event_bytes: int,
    ) -> None:
        self.turn_id = turn_id
        self.thread_id = thread_id
        self.log = structlog.get_logger("runnerd.agent").bind(turn_id=turn_id)
        self._writer = writer
        self._token = token
        self._max = max_event_bytes
        self._ids = itertools.count(1)
        self._lock = threading.Lock()  # guards the order state below, not the pipe
        self._open = OpenItems()
        self._chunks = ChunkExpander()

    # -- events -----------------------------------------------------------

    def emit(self, event: EventLike) -> None:
        """Send one event; returns once it is in the ring or the pipe (survives a SIGKILL).

        ``event`` is an ``ipc.events`` struct, an ``ag_ui.core`` event or a
        plain dict in wire form (camelCase; fields newer than runnerd are kept).
        A bad or out-of-order event raises ``InvalidEvent`` here and sends
        nothing; the turn goes on.
        """
        data = self._encode_plain(event) if type(event) in _PLAIN_STRUCTS else None
        self._writer.send_events([data] if data is not None else self._encode_all([event]))

    def _encode_plain(self, event: EventLike) -> bytes | None:
        """The common case, without ``_encode_all``'s lists: one struct, no chunk stream
        open (else ``None``): encode, check and commit at once."""
        plain = cast(ev.Event, event)
        if plain.seq is not msgspec.UNSET:
            raise ValueError("seq is assigned by the supervisor; leave it unset")
        with self._lock:
            if self._chunks:  # a plain event ends the chunk stream first: the general path
                return None
            data = self._encode(plain, None)
            try:
                self._open.observe(plain)
            except OrderError as exc:
                raise InvalidEvent(str(exc)) from None
        return data

    def emit_many(self, events: Iterable[EventLike]) -> None:
        """Send several events as one frame (all or none: each is checked first)."""
        encoded = self._encode_all(events)
        if encoded:
            self._writer.send_events(encoded)

    def close_chunks(self) -> None:
        """End the messages and tool calls that ``*_CHUNK`` events left open."""
        with self._lock:
            closers = self._chunks.flush()
            for e in closers:
                self._open.apply(e)
            encoded = [self._encode(e, None) for e in closers]
        if encoded:
            self._writer.send_events(encoded)

    def _encode_all(self, events: Iterable[EventLike]) -> list[bytes]:
        parsed = [_parse(e) for e in events]
        with self._lock:  # order checks see every earlier emit of every thread
            if len(parsed) == 1 and not self._chunks and type(parsed[0][0]) not in _CHUNKS:
                event, extra = parsed[0]  # the common case: encode, then check and commit at once
                data = self._encode(event, extra)
                try:
                    self._open.observe(event)
                except OrderError as exc:
                    raise InvalidEvent(str(exc)) from None
                return [data]
            # Checked against copies, committed only when every event was good:
            # a batch goes out whole or not at all.
            chunks, state = self._chunks.copy(), self._open.copy()
            expanded: list[tuple[ev.Event, dict[str, Any] | None]] = []
            try:
                for event, extra in parsed:
                    if not chunks and type(event) not in _CHUNKS:  # nothing to expand: the common case
                        state.observe(event)
                        expanded.append((event, extra))
                        continue
                    for e in chunks.expand(event):
                        state.observe(e)
                        expanded.append((e, extra if e is event else None))
            except (OrderError, ChunkError) as exc:
                raise InvalidEvent(str(exc)) from None
            encoded = [self._encode(e, extra) for e, extra in expanded]
            self._chunks, self._open = chunks, state
        return encoded

    def _encode(self, event: ev.Event, extra: dict[str, Any] | None) -> bytes:
        if event.timestamp is msgspec.UNSET:
            event.timestamp = _now_ms()
        try:
            if extra:  # a dict's own bytes, so fields runnerd does not know are kept
                data = _dict_encoder.encode({**_wire_dict(event), **extra})
            else:
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
        try:
            yield
        finally:  # closed on every exit, cancel included
            self.emit(ev.StepFinished(step_name=name))

    def custom(self, name: str, value: Any) -> None:
        self.emit(ev.Custom(name=name, value=value))

    def raw(self, event: Any, *, source: str | None = None) -> None:
        self.emit(ev.Raw(event=event) if source is None else ev.Raw(event=event, source=source))

    # -- cancel -----------------------------------------------------------

    def run_async(self, coro: Awaitable[T]) -> T:
        """``asyncio.run(coro)`` for a plain ``def`` agent, with the turn's cancel:
        the task is cancelled when a cancel is asked for, as an ``async def`` agent's is."""
        return asyncio.run(cancel_on_token(coro, self._token))

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


_dict_encoder = msgspec.json.Encoder()
# Wire names each struct knows; a dict's other keys are carried through as they are.
_KNOWN_KEYS: dict[type, frozenset[str]] = {
    cls: frozenset(cls.__struct_encode_fields__) | {"type"} for cls in ev.Event.__args__  # type: ignore[attr-defined]
}


def _wire_dict(event: ev.Event) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.json.decode(ev.encode_event(event))
    return out


# Fields whose null is data (a CUSTOM value, a result); elsewhere pydantic's None means "absent".
_NULL_IS_DATA = ("value", "result", "snapshot", "event")


def _from_pydantic(model: Any) -> dict[str, Any]:
    """An ``ag_ui.core`` event in wire form: aliases (camelCase), absent fields omitted."""
    data: dict[str, Any] = model.model_dump(mode="json", by_alias=True, exclude_none=True)
    given = model.model_dump(mode="json", by_alias=True, exclude_unset=True)
    for key in _NULL_IS_DATA:
        if key in given and given[key] is None:
            data[key] = None
    return data


def wire_form(event: EventLike) -> dict[str, Any]:
    """Any event-like (struct, ``ag_ui.core`` model, dict) as a wire-form dict."""
    if type(event) in _EVENT_CLASSES:
        return _wire_dict(cast(ev.Event, event))
    if hasattr(event, "model_dump"):
        return _from_pydantic(event)
    if isinstance(event, Mapping):
        return dict(event)
    raise TypeError(f"not an event: {type(event).__name__}")


def _parse(event: EventLike) -> tuple[ev.Event, dict[str, Any] | None]:
    """An event, plus the fields of a dict runnerd's structs do not name (kept on the wire)."""
    if type(event) in _EVENT_CLASSES:
        parsed = cast(ev.Event, event)
        extra = None
    else:
        if hasattr(event, "model_dump"):
            event = _from_pydantic(event)
        if not isinstance(event, Mapping):
            raise TypeError(f"cannot emit a {type(event).__name__}: pass an ipc.events struct, "
                            "an ag_ui.core event or a dict")
        kind = event.get("type")
        if kind not in ev.EVENT_TYPES:
            raise InvalidEvent(f"unknown event type {kind!r}; send it as RAW (ctx.raw) instead")
        try:
            parsed = ev.to_event(dict(event))
        except msgspec.ValidationError as exc:
            raise InvalidEvent(f"{kind}: {exc}") from None
        known = _KNOWN_KEYS[type(parsed)]
        extra = {k: v for k, v in event.items() if k not in known} or None
    if type(parsed) in ev.SUPERVISOR_ONLY:
        raise ValueError(f"{type(parsed).__name__} is written by the supervisor, not the agent")
    if parsed.seq is not msgspec.UNSET:
        raise ValueError("seq is assigned by the supervisor; leave it unset")
    return parsed, extra
