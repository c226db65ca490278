"""AG-UI 1.0 events as msgspec Structs: one tagged union on ``type``, all 31 types.

The field lists follow ``@ag-ui/core`` 1.0 / ``ag-ui-protocol`` 1.0. Fields are
camelCase on the wire. Optional fields default to ``UNSET`` and are omitted
only when unset: a field equal to its default (``role="assistant"``) is still
written, as AG-UI consumers expect it.

Decoding ignores fields this vocabulary does not name (a newer producer adds
them over time); the relay stores and serves the bytes the child wrote, so such
fields are kept, not dropped. What stays strict: the type, every required field
and its type, ``null`` where the spec says "omit it", and the payload rules the
official clients enforce (RFC 6902 operations, JSON Pointer paths, message ids
and roles) -- checked in ``__post_init__``, so constructing, converting and
decoding all reject the same things.
"""

from __future__ import annotations

import re
from typing import Any, Literal, Union

import msgspec
from msgspec import UNSET, UnsetType

__all__ = [
    "Event", "RunStarted", "RunFinished", "RunError", "Outcome", "TokenUsage",
    "TextMessageStart", "TextMessageContent", "TextMessageEnd", "TextMessageChunk",
    "ToolCallStart", "ToolCallArgs", "ToolCallEnd", "ToolCallChunk", "ToolCallResult",
    "StateSnapshot", "StateDelta", "MessagesSnapshot", "ActivitySnapshot", "ActivityDelta",
    "StepStarted", "StepFinished", "Custom", "Raw",
    "ReasoningStart", "ReasoningMessageStart", "ReasoningMessageContent", "ReasoningMessageEnd",
    "ReasoningMessageChunk", "ReasoningEnd", "ReasoningEncryptedValue",
    "SubagentStarted", "SubagentFinished", "SubagentError", "SubagentOutcome",
    "TERMINAL_TYPES", "LIFECYCLE_TYPES", "SUPERVISOR_ONLY", "EVENT_TYPES", "PROTOCOL_VERSION",
    "encode_event", "decode_event", "to_event",
    "check_json_patch", "check_messages",
]

PROTOCOL_VERSION = "1.0"

Role = Literal["developer", "system", "assistant", "user"]
MESSAGE_ROLES = frozenset({"developer", "system", "assistant", "user", "tool", "activity", "reasoning"})
_POINTER = re.compile(r"^(/([^/~]|~[01])*)*$")  # RFC 6901, as @ag-ui/core's JsonPointerSchema
_PATCH_FIELDS = {"add": ("path", "value"), "remove": ("path",), "replace": ("path", "value"),
                 "move": ("from", "path"), "copy": ("from", "path"), "test": ("path", "value")}


def check_json_patch(ops: list[dict[str, Any]], what: str = "delta") -> None:
    """RFC 6902: a known ``op``, the fields it needs, JSON Pointer paths."""
    for i, op in enumerate(ops):
        if not isinstance(op, dict):
            raise ValueError(f"{what}[{i}] is not an object")
        name = op.get("op")
        if name not in _PATCH_FIELDS:
            raise ValueError(f"{what}[{i}]: op {name!r} is not an RFC 6902 operation")
        for key in _PATCH_FIELDS[name]:
            if key not in op:
                raise ValueError(f"{what}[{i}]: op {name!r} needs {key!r}")
            if key in ("path", "from") and not (isinstance(op[key], str) and _POINTER.match(op[key])):
                raise ValueError(f"{what}[{i}].{key} {op[key]!r} is not a JSON Pointer (it starts with '/')")


def check_messages(messages: list[dict[str, Any]]) -> None:
    """What a MESSAGES_SNAPSHOT must hold: ids, known roles, each role's required fields."""
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ValueError(f"messages[{i}] is not an object")
        if not isinstance(m.get("id"), str):
            raise ValueError(f"messages[{i}] needs a string id")
        role = m.get("role")
        if role not in MESSAGE_ROLES:
            raise ValueError(f"messages[{i}].role {role!r} is not one of {sorted(MESSAGE_ROLES)}")
        if m.get("subagentRunId", "") is None or m.get("metadata", {}) is None:
            raise ValueError(f"messages[{i}]: optional fields are omitted, never null")
        if role == "tool" and not isinstance(m.get("toolCallId"), str):
            raise ValueError(f"messages[{i}] (tool) needs a string toolCallId")
        if role == "activity" and not (isinstance(m.get("activityType"), str)
                                       and isinstance(m.get("content"), dict)):
            raise ValueError(f"messages[{i}] (activity) needs activityType and an object content")
        if role in ("developer", "system", "reasoning") and not isinstance(m.get("content"), str):
            raise ValueError(f"messages[{i}] ({role}) needs a string content")
        if role in ("user", "tool") and not isinstance(m.get("content"), (str, list)):
            raise ValueError(f"messages[{i}] ({role}) needs content (a string or parts)")
        if role == "assistant":
            if not isinstance(m.get("content", ""), str):
                raise ValueError(f"messages[{i}] (assistant) content is a string")
            for call in m.get("toolCalls", []):
                if not (isinstance(call, dict) and isinstance(call.get("id"), str)
                        and isinstance(call.get("function"), dict)
                        and isinstance(call["function"].get("name"), str)
                        and isinstance(call["function"].get("arguments"), str)):
                    raise ValueError(f"messages[{i}].toolCalls: each needs id and function {{name, arguments}}")


class _Base(
    msgspec.Struct,
    tag_field="type",
    rename="camel",
    omit_defaults=False,
    kw_only=True,
):
    seq: int | UnsetType = UNSET  # set by the supervisor only; absent on the wire from a child
    timestamp: int | UnsetType = UNSET
    raw_event: Any | UnsetType = UNSET
    metadata: dict[str, Any] | UnsetType = UNSET

    def __post_init__(self) -> None:
        if self.raw_event is None:
            raise ValueError("rawEvent is optional: omit it, never send null")


class _Attributed(_Base, kw_only=True):
    """Events a subagent can own (the parent agent's when unset)."""

    subagent_run_id: str | UnsetType = UNSET


class Outcome(msgspec.Struct, rename="camel", omit_defaults=True):
    """RUN_FINISHED's outcome: ``success`` (pending tool calls), ``interrupt`` or ``cancelled``."""

    type: Literal["success", "interrupt", "cancelled"]
    pending_tool_call_ids: list[str] | UnsetType = UNSET
    interrupts: list[dict[str, Any]] | UnsetType = UNSET


class TokenUsage(msgspec.Struct, rename="camel", omit_defaults=True):
    provider: str | UnsetType = UNSET
    model: str | UnsetType = UNSET
    input_tokens: int | UnsetType = UNSET
    output_tokens: int | UnsetType = UNSET
    total_tokens: int | UnsetType = UNSET
    reasoning_tokens: int | UnsetType = UNSET
    cached_input_tokens: int | UnsetType = UNSET
    cache_write_input_tokens: int | UnsetType = UNSET


# -- lifecycle: the supervisor's ------------------------------------------------

class RunStarted(_Base, tag="RUN_STARTED"):
    thread_id: str
    run_id: str
    protocol_version: str | UnsetType = UNSET
    parent_run_id: str | UnsetType = UNSET
    input: dict[str, Any] | UnsetType = UNSET


class RunFinished(_Base, tag="RUN_FINISHED"):
    thread_id: str
    run_id: str
    outcome: Outcome  # optional in the spec; runnerd always says how the run ended
    result: Any | UnsetType = UNSET
    usage: list[TokenUsage] | UnsetType = UNSET


class RunError(_Base, tag="RUN_ERROR"):
    message: str
    code: str
    usage: list[TokenUsage] | UnsetType = UNSET


# -- text ------------------------------------------------------------------------

class TextMessageStart(_Attributed, tag="TEXT_MESSAGE_START"):
    message_id: str
    role: Role = "assistant"
    name: str | UnsetType = UNSET


class TextMessageContent(_Attributed, tag="TEXT_MESSAGE_CONTENT"):
    message_id: str
    delta: str


class TextMessageEnd(_Attributed, tag="TEXT_MESSAGE_END"):
    message_id: str


class TextMessageChunk(_Attributed, tag="TEXT_MESSAGE_CHUNK"):
    """START/CONTENT/END in one; ``TurnContext.emit`` expands it."""

    message_id: str | UnsetType = UNSET
    role: Role | UnsetType = UNSET
    delta: str | UnsetType = UNSET
    name: str | UnsetType = UNSET


# -- tool calls ------------------------------------------------------------------

class ToolCallStart(_Attributed, tag="TOOL_CALL_START"):
    tool_call_id: str
    tool_call_name: str
    parent_message_id: str | UnsetType = UNSET


class ToolCallArgs(_Attributed, tag="TOOL_CALL_ARGS"):
    tool_call_id: str
    delta: str


class ToolCallEnd(_Attributed, tag="TOOL_CALL_END"):
    tool_call_id: str


class ToolCallChunk(_Attributed, tag="TOOL_CALL_CHUNK"):
    """START/ARGS/END in one; ``TurnContext.emit`` expands it."""

    tool_call_id: str | UnsetType = UNSET
    tool_call_name: str | UnsetType = UNSET
    parent_message_id: str | UnsetType = UNSET
    delta: str | UnsetType = UNSET


class ToolCallResult(_Attributed, tag="TOOL_CALL_RESULT"):
    message_id: str
    tool_call_id: str
    content: str | list[dict[str, Any]]  # text, or content parts (image, audio, document …)
    role: Literal["tool"] | UnsetType = UNSET


# -- state, messages, activity ---------------------------------------------------

class StateSnapshot(_Attributed, tag="STATE_SNAPSHOT"):
    snapshot: Any


class StateDelta(_Attributed, tag="STATE_DELTA"):
    delta: list[dict[str, Any]]  # RFC 6902 operations

    def __post_init__(self) -> None:
        super().__post_init__()
        check_json_patch(self.delta)


class MessagesSnapshot(_Base, tag="MESSAGES_SNAPSHOT"):
    messages: list[dict[str, Any]]

    def __post_init__(self) -> None:
        super().__post_init__()
        check_messages(self.messages)


class ActivitySnapshot(_Attributed, tag="ACTIVITY_SNAPSHOT"):
    message_id: str
    activity_type: str
    content: dict[str, Any]
    replace: bool | UnsetType = UNSET


class ActivityDelta(_Attributed, tag="ACTIVITY_DELTA"):
    message_id: str
    activity_type: str
    patch: list[dict[str, Any]]

    def __post_init__(self) -> None:
        super().__post_init__()
        check_json_patch(self.patch, "patch")


# -- steps, custom, raw ----------------------------------------------------------

class StepStarted(_Attributed, tag="STEP_STARTED"):
    step_name: str


class StepFinished(_Attributed, tag="STEP_FINISHED"):
    step_name: str


class Custom(_Attributed, tag="CUSTOM"):
    name: str
    value: Any


class Raw(_Attributed, tag="RAW"):
    event: Any
    source: str | UnsetType = UNSET


# -- reasoning -------------------------------------------------------------------

class ReasoningStart(_Attributed, tag="REASONING_START"):
    message_id: str


class ReasoningMessageStart(_Attributed, tag="REASONING_MESSAGE_START"):
    message_id: str
    role: Literal["reasoning"] = "reasoning"


class ReasoningMessageContent(_Attributed, tag="REASONING_MESSAGE_CONTENT"):
    message_id: str
    delta: str


class ReasoningMessageEnd(_Attributed, tag="REASONING_MESSAGE_END"):
    message_id: str


class ReasoningMessageChunk(_Attributed, tag="REASONING_MESSAGE_CHUNK"):
    message_id: str | UnsetType = UNSET
    delta: str | UnsetType = UNSET


class ReasoningEnd(_Attributed, tag="REASONING_END"):
    message_id: str


class ReasoningEncryptedValue(_Attributed, tag="REASONING_ENCRYPTED_VALUE"):
    subtype: Literal["tool-call", "message"]
    entity_id: str
    encrypted_value: str


# -- subagents -------------------------------------------------------------------

class SubagentOutcome(msgspec.Struct, rename="camel", omit_defaults=True):
    type: Literal["success", "suspended"]
    interrupt_ids: list[str] | UnsetType = UNSET


class SubagentStarted(_Base, tag="SUBAGENT_STARTED"):
    subagent_run_id: str
    name: str
    description: str | UnsetType = UNSET
    parent_subagent_run_id: str | UnsetType = UNSET
    parent_tool_call_id: str | UnsetType = UNSET
    parent_message_id: str | UnsetType = UNSET


class SubagentFinished(_Base, tag="SUBAGENT_FINISHED"):
    subagent_run_id: str
    result: Any | UnsetType = UNSET
    outcome: SubagentOutcome | UnsetType = UNSET


class SubagentError(_Base, tag="SUBAGENT_ERROR"):
    subagent_run_id: str
    message: str
    code: str | UnsetType = UNSET


Event = Union[
    RunStarted, RunFinished, RunError,
    TextMessageStart, TextMessageContent, TextMessageEnd, TextMessageChunk,
    ToolCallStart, ToolCallArgs, ToolCallEnd, ToolCallChunk, ToolCallResult,
    StateSnapshot, StateDelta, MessagesSnapshot, ActivitySnapshot, ActivityDelta,
    StepStarted, StepFinished, Custom, Raw,
    ReasoningStart, ReasoningMessageStart, ReasoningMessageContent, ReasoningMessageEnd,
    ReasoningMessageChunk, ReasoningEnd, ReasoningEncryptedValue,
    SubagentStarted, SubagentFinished, SubagentError,
]

EVENT_TYPES: frozenset[str] = frozenset(
    t.__struct_config__.tag for t in Event.__args__  # type: ignore[attr-defined]
)
TERMINAL_TYPES = frozenset({"RUN_FINISHED", "RUN_ERROR"})
LIFECYCLE_TYPES = frozenset({"RUN_STARTED", "RUN_FINISHED", "RUN_ERROR"})
# The lifecycle is the supervisor's alone: an agent that sent these would break
# "exactly one terminal event". Checked in the child (ctx.emit) and again in the relay.
SUPERVISOR_ONLY: tuple[type, ...] = (RunStarted, RunFinished, RunError)


_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[Event] = msgspec.json.Decoder(Event)


def encode_event(event: Event) -> bytes:
    """Encode once; the bytes travel, get logged and get served unchanged."""
    return _encoder.encode(event)


def decode_event(data: bytes | str) -> Event:
    """Decode and validate one event (a stored event carries its ``seq``)."""
    return _decoder.decode(data)


def to_event(obj: dict[str, Any]) -> Event:
    """Validate a plain dict (camelCase, as on the wire) as an event.

    Through JSON and the cached decoder: ``msgspec.convert`` to the union
    rebuilds its type info on every call (~100x slower here). ``TypeError``
    if ``obj`` is not JSON-serialisable.
    """
    try:
        data = _encoder.encode(obj)
    except (TypeError, msgspec.EncodeError) as exc:
        raise TypeError(f"event is not JSON-serialisable: {exc}") from None
    return _decoder.decode(data)
