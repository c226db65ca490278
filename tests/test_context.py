"""worker.context: what ``ctx.emit`` accepts, what it refuses, and what reaches the pipe."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from ipc import events as ev
from ipc.token import new_token
from ipc.wire import Batch, FrameReader, FrameWriter
from worker.asyncrun import CancelWatch
from worker.context import InvalidEvent, TurnContext


class Pipe:
    def __init__(self) -> None:
        parent, child = multiprocessing.Pipe(duplex=False)
        self.reader = FrameReader(parent, max_frame_bytes=1 << 24)
        self.writer = FrameWriter(child)
        self.ctx = TurnContext(turn_id="01TESTTURN0000000000000000", thread_id="t", writer=self.writer,
                               token=CancelWatch(new_token(multiprocessing.get_context("spawn"))),
                               max_event_bytes=1 << 20)

    def sent(self) -> list[dict[str, Any]]:
        out = []
        for frame in self.reader.read():
            assert isinstance(frame, Batch)
            out += [msgspec.json.decode(e) for e in frame.events]
        for e in out:
            e.pop("timestamp")
        return out


@pytest.fixture
def pipe() -> Iterator[Pipe]:
    p = Pipe()
    yield p
    p.writer.close()
    p.reader.close()


def test_a_dict_is_validated_and_its_newer_fields_are_kept(pipe: Pipe) -> None:
    pipe.ctx.emit({"type": "CUSTOM", "name": "n", "value": None, "addedLater": {"x": 1}})
    assert pipe.sent() == [{"type": "CUSTOM", "name": "n", "value": None, "addedLater": {"x": 1}}]


def test_an_ag_ui_core_event_is_sent_in_wire_form(pipe: Pipe) -> None:
    core = pytest.importorskip("ag_ui.core")
    pipe.ctx.emit(core.TextMessageStartEvent(message_id="m", role="assistant"))
    pipe.ctx.emit(core.TextMessageContentEvent(message_id="m", delta="hi"))
    pipe.ctx.emit(core.CustomEvent(name="n", value=None))
    pipe.ctx.emit(core.TextMessageEndEvent(message_id="m"))
    assert pipe.sent() == [
        {"type": "TEXT_MESSAGE_START", "messageId": "m", "role": "assistant"},
        {"type": "TEXT_MESSAGE_CONTENT", "messageId": "m", "delta": "hi"},
        {"type": "CUSTOM", "name": "n", "value": None},
        {"type": "TEXT_MESSAGE_END", "messageId": "m"},
    ]


@pytest.mark.parametrize("event, message", [
    (ev.TextMessageContent(message_id="m", delta="x"), "no open text message 'm'"),
    (ev.TextMessageEnd(message_id="m"), "no open text message"),
    (ev.ToolCallArgs(tool_call_id="c", delta="{"), "no open tool call 'c'"),
    (ev.StepFinished(step_name="s"), "no open step"),
    (ev.ReasoningMessageContent(message_id="r", delta="x"), "no open reasoning message"),
    (ev.SubagentFinished(subagent_run_id="s"), "no open subagent"),
    ({"type": "STATE_DELTA", "delta": [{"op": "frobnicate", "path": "/a"}]}, "not an RFC 6902 operation"),
    ({"type": "STATE_DELTA", "delta": [{"op": "add", "path": "a", "value": 1}]}, "not a JSON Pointer"),
    ({"type": "MESSAGES_SNAPSHOT", "messages": [{"role": "user", "content": "x"}]}, "needs a string id"),
    ({"type": "MESSAGES_SNAPSHOT", "messages": [{"id": "1", "role": "bot", "content": "x"}]}, "role 'bot'"),
    ({"type": "CUSTOM", "name": "n", "value": 1, "rawEvent": None}, "never send null"),
    ({"type": "TEXT_MESSAGE_CHUNK", "delta": "x"}, "first text message chunk needs its id"),
    ({"type": "FUTURE_EVENT"}, "unknown event type"),
])
def test_a_bad_or_out_of_order_event_raises_and_the_turn_goes_on(pipe: Pipe, event: Any, message: str) -> None:
    with pytest.raises(InvalidEvent, match=message):
        pipe.ctx.emit(event)
    pipe.ctx.custom("after", 1)
    assert pipe.sent() == [{"type": "CUSTOM", "name": "after", "value": 1}]


def test_a_struct_built_with_a_bad_patch_fails_at_construction() -> None:
    with pytest.raises(ValueError, match="RFC 6902"):
        ev.StateDelta(delta=[{"op": "frobnicate", "path": "/a"}])


@pytest.mark.parametrize("event", [
    {"type": "RUN_STARTED", "threadId": "t", "runId": "r"},
    ev.RunError(message="m", code="c"),
    ev.Custom(name="n", value=1, seq=3),
])
def test_lifecycle_and_seq_stay_the_supervisors(pipe: Pipe, event: Any) -> None:
    with pytest.raises(ValueError, match="supervisor"):
        pipe.ctx.emit(event)


def test_a_batch_goes_out_whole_or_not_at_all(pipe: Pipe) -> None:
    with pytest.raises(InvalidEvent):
        pipe.ctx.emit_many([ev.TextMessageStart(message_id="m"), ev.TextMessageEnd(message_id="other")])
    pipe.ctx.emit(ev.TextMessageStart(message_id="m"))  # "m" was not left open by the failed batch
    assert [e["type"] for e in pipe.sent()] == ["TEXT_MESSAGE_START"]


def test_chunks_are_expanded_into_start_content_end(pipe: Pipe) -> None:
    ctx = pipe.ctx
    ctx.emit({"type": "TEXT_MESSAGE_CHUNK", "messageId": "m", "delta": "he"})
    ctx.emit({"type": "TEXT_MESSAGE_CHUNK", "delta": "llo"})
    ctx.emit({"type": "TOOL_CALL_CHUNK", "toolCallId": "c", "toolCallName": "f", "delta": "{}"})
    ctx.emit(ev.Custom(name="n", value=1))  # any other event ends the chunk streams
    ctx.emit({"type": "REASONING_MESSAGE_CHUNK", "messageId": "r", "delta": "hm"})
    ctx.close_chunks()
    assert pipe.sent() == [
        {"type": "TEXT_MESSAGE_START", "messageId": "m", "role": "assistant"},
        {"type": "TEXT_MESSAGE_CONTENT", "messageId": "m", "delta": "he"},
        {"type": "TEXT_MESSAGE_CONTENT", "messageId": "m", "delta": "llo"},
        {"type": "TOOL_CALL_START", "toolCallId": "c", "toolCallName": "f"},
        {"type": "TOOL_CALL_ARGS", "toolCallId": "c", "delta": "{}"},
        {"type": "TOOL_CALL_END", "toolCallId": "c"},
        {"type": "TEXT_MESSAGE_END", "messageId": "m"},
        {"type": "CUSTOM", "name": "n", "value": 1},
        {"type": "REASONING_MESSAGE_START", "messageId": "r", "role": "reasoning"},
        {"type": "REASONING_MESSAGE_CONTENT", "messageId": "r", "delta": "hm"},
        {"type": "REASONING_MESSAGE_END", "messageId": "r"},
    ]


def test_step_message_and_tool_call_close_when_the_agent_raises(pipe: Pipe) -> None:
    ctx = pipe.ctx
    with pytest.raises(RuntimeError):
        with ctx.step("s"), ctx.message(message_id="m") as m, ctx.tool_call("f", tool_call_id="c"):
            m.write("x")
            raise RuntimeError("boom")
    assert [e["type"] for e in pipe.sent()] == [
        "STEP_STARTED", "TEXT_MESSAGE_START", "TOOL_CALL_START", "TEXT_MESSAGE_CONTENT",
        "TOOL_CALL_END", "TEXT_MESSAGE_END", "STEP_FINISHED"]


def test_a_dict_that_is_not_json_raises_type_error(pipe: Pipe) -> None:
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        pipe.ctx.emit({"type": "CUSTOM", "name": "n", "value": object()})
    assert pipe.sent() == []
