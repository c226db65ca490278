"""ipc.events: AG-UI 1.0 shapes on the wire."""

from __future__ import annotations

import msgspec
import pytest

from ipc import events as ev


def test_fields_are_camel_case_and_unset_is_omitted() -> None:
    data = msgspec.json.decode(ev.encode_event(ev.ToolCallStart(tool_call_id="c1", tool_call_name="search")))
    assert data == {"type": "TOOL_CALL_START", "toolCallId": "c1", "toolCallName": "search"}


def test_a_field_equal_to_its_default_is_still_written() -> None:
    data = msgspec.json.decode(ev.encode_event(ev.TextMessageStart(message_id="m")))
    assert data == {"type": "TEXT_MESSAGE_START", "messageId": "m", "role": "assistant"}


def test_run_finished_carries_the_outcome_object() -> None:
    finished = ev.RunFinished(thread_id="t", run_id="r", outcome=ev.Outcome("cancelled"))
    assert msgspec.json.decode(ev.encode_event(finished)) == {
        "type": "RUN_FINISHED", "threadId": "t", "runId": "r", "outcome": {"type": "cancelled"}}


def test_a_stored_event_decodes_with_its_seq() -> None:
    event = ev.decode_event(b'{"seq":7,"type":"RUN_ERROR","message":"m","code":"crashed"}')
    assert event == ev.RunError(message="m", code="crashed", seq=7)
    assert ev.encode_event(ev.RunError(message="m", code="crashed")) == \
        b'{"type":"RUN_ERROR","message":"m","code":"crashed"}'  # unset seq is not written


@pytest.mark.parametrize("raw", [
    b'{"type":"NOPE"}',
    b'{"type":"RUN_STARTED","threadId":"t"}',
    b'{"type":"STATE_DELTA","delta":{"op":"add"}}',
    b'{"type":"STATE_DELTA","delta":[{"op":"frobnicate","path":"/a"}]}',
    b'{"type":"STATE_DELTA","delta":[{"op":"add","path":"a","value":1}]}',
    b'{"type":"STATE_DELTA","delta":[{"op":"move","path":"/a"}]}',
    b'{"type":"ACTIVITY_DELTA","messageId":"m","activityType":"t","patch":[{"op":"add","path":"/~2"}]}',
    b'{"type":"MESSAGES_SNAPSHOT","messages":[{"role":"user","content":"no id"}]}',
    b'{"type":"MESSAGES_SNAPSHOT","messages":[{"id":"1","role":"robot","content":"x"}]}',
    b'{"type":"MESSAGES_SNAPSHOT","messages":[{"id":"1","role":"tool","content":"x"}]}',
    b'{"type":"CUSTOM","name":"n","value":1,"rawEvent":null}',
    b'{"type":"CUSTOM","name":"n","value":1,"metadata":null}',
    b'{"type":"REASONING_ENCRYPTED_VALUE","subtype":"thought","entityId":"e","encryptedValue":"x"}',
    b'{"type":"SUBAGENT_STARTED","name":"n"}',
    b'not json',
])
def test_decode_rejects_invalid_events(raw: bytes) -> None:
    with pytest.raises(msgspec.DecodeError):
        ev.decode_event(raw)


def test_fields_newer_than_runnerd_are_not_rejected() -> None:
    event = ev.decode_event(b'{"type":"CUSTOM","name":"n","value":1,"addedIn12":2}')
    assert event == ev.Custom(name="n", value=1)


def test_an_empty_delta_is_valid_in_1_0() -> None:
    assert ev.decode_event(b'{"type":"TEXT_MESSAGE_CONTENT","messageId":"m","delta":""}') == \
        ev.TextMessageContent(message_id="m", delta="")


def test_every_event_type_round_trips() -> None:
    samples: list[ev.Event] = [
        ev.RunStarted(thread_id="t", run_id="r"),
        ev.RunFinished(thread_id="t", run_id="r", outcome=ev.Outcome("success"), result={"a": 1}),
        ev.RunError(message="m", code="timeout"),
        ev.TextMessageStart(message_id="m", role="user"),
        ev.TextMessageContent(message_id="m", delta="x"),
        ev.TextMessageEnd(message_id="m"),
        ev.ToolCallStart(tool_call_id="c", tool_call_name="n", parent_message_id="m"),
        ev.ToolCallArgs(tool_call_id="c", delta="{"),
        ev.ToolCallEnd(tool_call_id="c"),
        ev.ToolCallResult(message_id="m2", tool_call_id="c", content="ok", role="tool"),
        ev.StateSnapshot(snapshot={"a": [1]}),
        ev.StateDelta(delta=[{"op": "add", "path": "/b", "value": 2}]),
        ev.MessagesSnapshot(messages=[{"id": "m", "role": "assistant", "content": "hi"}]),
        ev.StepStarted(step_name="s"),
        ev.StepFinished(step_name="s"),
        ev.Custom(name="n", value=None),
        ev.Raw(event={"x": 1}, source="llm"),
    ]
    for event in samples:
        encoded = ev.encode_event(event)
        assert encoded.startswith(b'{"type":"')
        assert ev.decode_event(encoded) == event


def test_every_1_0_event_type_round_trips_with_every_optional_field() -> None:
    from agui_samples import every_event_type
    samples = every_event_type()
    assert {type(e).__struct_config__.tag for e in samples} == ev.EVENT_TYPES
    assert len(ev.EVENT_TYPES) == 31
    for event in samples:
        encoded = ev.encode_event(event)
        assert encoded.startswith(b'{"type":"')
        assert ev.decode_event(encoded) == event


def test_every_event_type_is_valid_for_ag_ui_protocol() -> None:
    """The official Python models accept each of runnerd's encodings, field for field."""
    core = pytest.importorskip("ag_ui.core")
    from agui_samples import every_event_type
    from pydantic import TypeAdapter
    adapter: TypeAdapter[object] = TypeAdapter(core.Event)
    assert {t.value for t in core.EventType} == ev.EVENT_TYPES
    for event in every_event_type():
        data = msgspec.json.decode(ev.encode_event(event))
        model = adapter.validate_python(data)
        assert model.model_dump(mode="json", by_alias=True, exclude_unset=True) == data  # type: ignore[attr-defined]
