"""One sample of every AG-UI 1.0 event type, every optional field set (shared by the tests)."""

from __future__ import annotations

from ipc import events as ev

META = {"k": None}
SUB = "sub-1"


def every_event_type() -> list[ev.Event]:
    usage = [ev.TokenUsage(provider="p", model="m", input_tokens=1, output_tokens=2, total_tokens=3,
                           reasoning_tokens=0, cached_input_tokens=0, cache_write_input_tokens=0)]
    common = {"timestamp": 1, "raw_event": {"r": 1}, "metadata": META}
    attributed = {**common, "subagent_run_id": SUB}
    return [
        ev.RunStarted(thread_id="t", run_id="r", protocol_version="1.0", parent_run_id="p",
                      input={"threadId": "t", "runId": "r", "messages": [], "tools": [], "context": []},
                      **common),
        ev.RunFinished(thread_id="t", run_id="r", result={"a": 1}, usage=usage,
                       outcome=ev.Outcome("success", pending_tool_call_ids=["c"]), **common),
        ev.RunFinished(thread_id="t", run_id="r",
                       outcome=ev.Outcome("interrupt", interrupts=[{"id": "i", "reason": "approve"}])),
        ev.RunError(message="m", code="timeout", usage=usage, **common),
        ev.TextMessageStart(message_id="m", role="user", name="n", **attributed),
        ev.TextMessageContent(message_id="m", delta="x", **attributed),
        ev.TextMessageEnd(message_id="m", **attributed),
        ev.TextMessageChunk(message_id="m", role="assistant", delta="x", name="n", **attributed),
        ev.ToolCallStart(tool_call_id="c", tool_call_name="n", parent_message_id="m", **attributed),
        ev.ToolCallArgs(tool_call_id="c", delta="{", **attributed),
        ev.ToolCallEnd(tool_call_id="c", **attributed),
        ev.ToolCallChunk(tool_call_id="c", tool_call_name="n", parent_message_id="m", delta="{",
                         **attributed),
        ev.ToolCallResult(message_id="m2", tool_call_id="c", content="ok", role="tool", **attributed),
        ev.ToolCallResult(message_id="m3", tool_call_id="c",
                          content=[{"type": "text", "text": "hi"},
                                   {"type": "image", "source": {"type": "url", "value": "http://x/i.png"}}]),
        ev.StateSnapshot(snapshot={"a": [1]}, **attributed),
        ev.StateDelta(delta=[{"op": "add", "path": "/b", "value": 2}, {"op": "remove", "path": "/a"},
                             {"op": "move", "from": "/b", "path": "/c"},
                             {"op": "test", "path": "/c", "value": 2}], **attributed),
        ev.MessagesSnapshot(messages=[
            {"id": "1", "role": "user", "content": "hi"},
            {"id": "2", "role": "assistant", "content": "",
             "toolCalls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"id": "3", "role": "tool", "content": "ok", "toolCallId": "c"},
            {"id": "4", "role": "reasoning", "content": "hmm"},
            {"id": "5", "role": "activity", "activityType": "plan", "content": {"steps": []}},
            {"id": "6", "role": "system", "content": "s"}, {"id": "7", "role": "developer", "content": "d"},
        ], **common),
        ev.ActivitySnapshot(message_id="a", activity_type="plan", content={"steps": []}, replace=False,
                            **attributed),
        ev.ActivityDelta(message_id="a", activity_type="plan",
                         patch=[{"op": "add", "path": "/steps/-", "value": 1}], **attributed),
        ev.StepStarted(step_name="s", **attributed),
        ev.StepFinished(step_name="s", **attributed),
        ev.Custom(name="n", value=None, **attributed),
        ev.Raw(event={"x": 1}, source="llm", **attributed),
        ev.ReasoningStart(message_id="r", **attributed),
        ev.ReasoningMessageStart(message_id="r", **attributed),
        ev.ReasoningMessageContent(message_id="r", delta="hm", **attributed),
        ev.ReasoningMessageEnd(message_id="r", **attributed),
        ev.ReasoningMessageChunk(message_id="r", delta="hm", **attributed),
        ev.ReasoningEnd(message_id="r", **attributed),
        ev.ReasoningEncryptedValue(subtype="tool-call", entity_id="c", encrypted_value="x", **attributed),
        ev.SubagentStarted(subagent_run_id=SUB, name="n", description="d", parent_subagent_run_id="p",
                           parent_tool_call_id="c", parent_message_id="m", **common),
        ev.SubagentFinished(subagent_run_id=SUB, result=1,
                            outcome=ev.SubagentOutcome("suspended", interrupt_ids=["i"]), **common),
        ev.SubagentError(subagent_run_id=SUB, message="m", code="c", **common),
    ]
