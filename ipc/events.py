"""AG-UI 1.0 events as msgspec Structs: one tagged union on ``type``.

Fields are camelCase on the wire. Optional fields default to ``UNSET`` and are
omitted only when unset: a field equal to its default (``role="assistant"``)
is still written, as AG-UI consumers expect it.
"""

from __future__ import annotations

from typing import Any, Literal, Union

import msgspec
from msgspec import UNSET, UnsetType

__all__ = [
    "Event", "RunStarted", "RunFinished", "RunError", "Outcome",
    "TextMessageStart", "TextMessageContent", "TextMessageEnd",
    "ToolCallStart", "ToolCallArgs", "ToolCallEnd", "ToolCallResult",
    "StateSnapshot", "StateDelta", "MessagesSnapshot",
    "StepStarted", "StepFinished", "Custom", "Raw",
    "TERMINAL_TYPES", "encode_event", "decode_event",
]


class _Base(
    msgspec.Struct,
    tag_field="type",
    rename="camel",
    omit_defaults=False,
    kw_only=True,
    forbid_unknown_fields=True,  # decoding rejects what the vocabulary does not name
):
    seq: int | UnsetType = UNSET  # set by the supervisor only; absent on the wire from a child
    timestamp: int | UnsetType = UNSET
    raw_event: Any | UnsetType = UNSET


class Outcome(msgspec.Struct, rename="camel"):
    """AG-UI 1.0 run outcome: ``{"type": "success"}`` or ``{"type": "cancelled"}``."""

    type: Literal["success", "cancelled"]


class RunStarted(_Base, tag="RUN_STARTED"):
    thread_id: str
    run_id: str
    parent_run_id: str | UnsetType = UNSET


class RunFinished(_Base, tag="RUN_FINISHED"):
    thread_id: str
    run_id: str
    outcome: Outcome
    result: Any | UnsetType = UNSET


class RunError(_Base, tag="RUN_ERROR"):
    message: str
    code: str


class TextMessageStart(_Base, tag="TEXT_MESSAGE_START"):
    message_id: str
    role: Literal["assistant", "user", "system", "developer"] = "assistant"


class TextMessageContent(_Base, tag="TEXT_MESSAGE_CONTENT"):
    message_id: str
    delta: str

    def __post_init__(self) -> None:
        if not self.delta:
            raise ValueError("TEXT_MESSAGE_CONTENT needs a non-empty delta")


class TextMessageEnd(_Base, tag="TEXT_MESSAGE_END"):
    message_id: str


class ToolCallStart(_Base, tag="TOOL_CALL_START"):
    tool_call_id: str
    tool_call_name: str
    parent_message_id: str | UnsetType = UNSET


class ToolCallArgs(_Base, tag="TOOL_CALL_ARGS"):
    tool_call_id: str
    delta: str


class ToolCallEnd(_Base, tag="TOOL_CALL_END"):
    tool_call_id: str


class ToolCallResult(_Base, tag="TOOL_CALL_RESULT"):
    message_id: str
    tool_call_id: str
    content: str
    role: Literal["tool"] | UnsetType = UNSET


class StateSnapshot(_Base, tag="STATE_SNAPSHOT"):
    snapshot: Any


class StateDelta(_Base, tag="STATE_DELTA"):
    delta: list[dict[str, Any]]  # RFC 6902 operations


class MessagesSnapshot(_Base, tag="MESSAGES_SNAPSHOT"):
    messages: list[dict[str, Any]]


class StepStarted(_Base, tag="STEP_STARTED"):
    step_name: str


class StepFinished(_Base, tag="STEP_FINISHED"):
    step_name: str


class Custom(_Base, tag="CUSTOM"):
    name: str
    value: Any


class Raw(_Base, tag="RAW"):
    event: Any
    source: str | UnsetType = UNSET


Event = Union[
    RunStarted, RunFinished, RunError,
    TextMessageStart, TextMessageContent, TextMessageEnd,
    ToolCallStart, ToolCallArgs, ToolCallEnd, ToolCallResult,
    StateSnapshot, StateDelta, MessagesSnapshot,
    StepStarted, StepFinished, Custom, Raw,
]

TERMINAL_TYPES = frozenset({"RUN_FINISHED", "RUN_ERROR"})


_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[Event] = msgspec.json.Decoder(Event)


def encode_event(event: Event) -> bytes:
    """Encode once; the bytes travel, get logged and get served unchanged."""
    return _encoder.encode(event)


def decode_event(data: bytes | str) -> Event:
    """Decode and validate one event (a stored event carries its ``seq``)."""
    return _decoder.decode(data)
