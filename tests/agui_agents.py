"""Agents that leave AG-UI items open, for the ending tests (imported in the turn's process)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

from ipc import events as ev
from worker.context import TurnContext


def _open_everything(ctx: TurnContext) -> None:
    """A step, a subagent, a reasoning span, a text message and a tool call, left open on purpose."""
    ctx.emit(ev.StepStarted(step_name="plan"))
    ctx.emit(ev.SubagentStarted(subagent_run_id="sub-1", name="researcher"))
    ctx.emit(ev.ReasoningStart(message_id="r1", subagent_run_id="sub-1"))
    ctx.emit(ev.TextMessageStart(message_id="m1", subagent_run_id="sub-1"))
    ctx.emit(ev.TextMessageContent(message_id="m1", delta="half a sent", subagent_run_id="sub-1"))
    ctx.emit(ev.ToolCallStart(tool_call_id="c1", tool_call_name="search", parent_message_id="m1",
                              subagent_run_id="sub-1"))
    ctx.emit(ev.ToolCallArgs(tool_call_id="c1", delta='{"q":', subagent_run_id="sub-1"))


def leave_open(ctx: TurnContext, input: Any) -> Any:
    """``mode``: return (success), hang (cancel/timeout: SIGTERM ends it), ignore_term (SIGKILL), crash,
    flood (events until limits.max_events stops it)."""
    mode = (input or {}).get("mode", "hang")
    if mode == "ignore_term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _open_everything(ctx)
    ctx.custom("ready", os.getpid())
    if mode == "return":
        return {"ok": True}
    if mode == "crash":
        os._exit(9)
    while mode == "flood":  # until the supervisor's event limit stops the turn
        ctx.custom("flood", 1)
    while True:
        time.sleep(0.01)


def helpers(ctx: TurnContext, input: Any) -> None:
    """The TurnContext helpers, cancelled midway: they close themselves (finally)."""
    with ctx.step("work"), ctx.message() as m, ctx.tool_call("search") as call:
        m.write("partial")
        call.args('{"q": 1}')
        ctx.custom("ready", os.getpid())
        while True:
            ctx.check_cancelled()
            time.sleep(0.005)


async def async_helpers(ctx: TurnContext, input: Any) -> None:
    with ctx.step("work"), ctx.message() as m:
        m.write("partial")
        ctx.custom("ready", os.getpid())
        await asyncio.sleep(3600)


def agui_chat(ctx: TurnContext, input: Any) -> dict[str, Any]:
    """Answers a RunAgentInput: steps, a tool call, state, a streamed reply; ``forwardedProps.mode`` misbehaves."""
    props = input.get("forwardedProps") or {}
    mode = props.get("mode", "ok")
    last = next((m.get("content") for m in reversed(input["messages"]) if m.get("role") == "user"), "")
    if mode == "ignore_term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ctx.state_snapshot({"thread": input["threadId"], "phase": "thinking", "seen": len(input["messages"])})
    with ctx.step("lookup"):
        with ctx.tool_call("search") as call:
            call.args('{"q": "runnerd"}')
            call.result("a supervisor daemon")
    ctx.state_delta([{"op": "replace", "path": "/phase", "value": "answering"}])
    if mode == "error":
        raise RuntimeError("the agent failed on purpose")
    with ctx.message() as m:
        m.write(f"you said: {last}")
        if mode in ("hang", "ignore_term"):
            ctx.custom("ready", os.getpid())
            while True:  # hang mid-message: a cancel (hang) or only SIGKILL (ignore_term) ends it
                if mode == "hang":
                    ctx.check_cancelled()
                time.sleep(0.01)
    ctx.state_delta([{"op": "replace", "path": "/phase", "value": "done"}])
    return {"answered": True}


async def _framework(mode: str) -> Any:
    """A stand-in framework: an async generator of AG-UI events, as pydantic-ai's or LangGraph's."""
    from ag_ui import core
    yield core.RunStartedEvent(thread_id="fw-thread", run_id="fw-run")
    yield {"type": "TEXT_MESSAGE_CHUNK", "messageId": "m1", "delta": "hel"}
    yield {"type": "TEXT_MESSAGE_CHUNK", "delta": "lo"}
    yield core.StepStartedEvent(step_name="think")
    yield {"type": "SOMETHING_FROM_2030", "x": 1}
    yield {"type": "TOOL_CALL_ARGS", "toolCallId": "never-started", "delta": "{"}
    if mode == "hang":
        try:
            yield core.CustomEvent(name="ready", value=os.getpid())
            await asyncio.sleep(3600)
        finally:
            yield_from_finally = core.CustomEvent(name="framework_cancelled", value=True)
            _CTX[0].emit(yield_from_finally)  # the cancel reached the framework's own code
    yield core.StepFinishedEvent(step_name="think")
    if mode == "error":
        yield core.RunErrorEvent(message="the model refused", code="refusal")
        return
    if mode == "raise":
        raise ValueError("framework exploded")
    yield core.RunFinishedEvent(thread_id="fw-thread", run_id="fw-run", result={"from": "framework"})


_CTX: list[TurnContext] = []


async def framework_free(ctx: TurnContext, input: Any) -> Any:
    from worker.adapters.stream import run_stream
    _CTX[:] = [ctx]
    return await run_stream(ctx, _framework((input or {}).get("mode", "ok")))


def _pydantic_ai_agent() -> Any:
    from pydantic_ai import Agent
    from pydantic_ai.models.test import TestModel

    agent = Agent(TestModel(custom_output_text="four"), name="calc")

    @agent.tool_plain
    def add(a: int, b: int) -> int:
        """Adds two numbers."""
        return a + b

    return agent


def pydantic_ai_agent(ctx: TurnContext, input: Any) -> Any:
    from worker.adapters.pydantic_ai import from_pydantic_ai
    return from_pydantic_ai(_pydantic_ai_agent())(ctx, input)


def pydantic_ai_slow(ctx: TurnContext, input: Any) -> Any:
    """A FunctionModel that streams a word, then waits forever: for cancel."""
    from pydantic_ai import Agent
    from pydantic_ai.models.function import AgentInfo, FunctionModel

    from worker.adapters.pydantic_ai import from_pydantic_ai

    async def stream(messages: list[Any], info: AgentInfo) -> Any:
        yield "thinking"
        ctx.custom("ready", os.getpid())
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            ctx.custom("model_cancelled", True)
            raise
        yield "never"

    return from_pydantic_ai(Agent(FunctionModel(stream_function=stream)))(ctx, input)


def _langgraph(slow: bool) -> Any:
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.graph import END, START, MessagesState, StateGraph

    model = GenericFakeChatModel(messages=iter([AIMessage(content="hello from the graph")]))

    async def chat(state: MessagesState) -> dict[str, Any]:
        if slow:
            _CTX[0].custom("ready", os.getpid())
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                _CTX[0].custom("graph_cancelled", True)
                raise
        return {"messages": [await model.ainvoke(state["messages"])]}

    builder = StateGraph(MessagesState)
    builder.add_node("chat", chat)
    builder.add_edge(START, "chat")
    builder.add_edge("chat", END)
    return builder.compile(checkpointer=InMemorySaver())


def langgraph_agent(ctx: TurnContext, input: Any) -> Any:
    from worker.adapters.langgraph import from_langgraph
    _CTX[:] = [ctx]
    return from_langgraph(_langgraph(slow=(input or {}).get("slow", False) if isinstance(input, dict) else False),
                          emit_raw_events=False)(ctx, input)


def openai_agents_agent(ctx: TurnContext, input: Any) -> Any:
    """A ScriptedModel (the SDK's own test double): a tool call, then the answer; or a stream that hangs."""
    from agents import Agent, function_tool
    from agents.testing import (
        ModelStep,
        ScriptedModel,
        assistant_message,
        function_call,
    )

    from worker.adapters.openai_agents import from_openai_agents

    @function_tool
    def add(a: int, b: int) -> int:
        """Adds two numbers."""
        return a + b

    if isinstance(input, dict) and input.get("slow"):
        async def hang(call: Any) -> Any:
            ctx.custom("ready", os.getpid())
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                ctx.custom("model_cancelled", True)
                raise
            yield None  # a generator: the SDK iterates the factory's result

        model = ScriptedModel([ModelStep.stream(hang)])
    else:
        model = ScriptedModel([[function_call("add", {"a": 2, "b": 2}, call_id="call-1")],
                               [assistant_message("four")]])
    return from_openai_agents(Agent(name="calc", model=model, tools=[add]))(ctx, input)


def sync_wrapping_async(ctx: TurnContext, input: Any) -> None:
    """A plain def agent running its own coroutine; ``ctx.run_async`` gives it the turn's cancel."""
    async def work() -> None:
        ctx.custom("ready", os.getpid())
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            ctx.custom("task_cancelled", True)
            raise

    if (input or {}).get("plain"):
        asyncio.run(work())  # what the README warns about: only SIGTERM ends it
    else:
        ctx.run_async(work())
