"""An OpenAI Agents SDK ``Agent`` as a runnerd agent (``runnerd[openai-agents]``).

The SDK has no AG-UI adapter, so its stream events are mapped here:

- a message output item -> ``TEXT_MESSAGE_START`` / ``CONTENT`` (text deltas) / ``END``;
- a function call item -> ``TOOL_CALL_START`` / ``ARGS`` (argument deltas) / ``END``,
  and its output -> ``TOOL_CALL_RESULT``;
- reasoning text deltas -> reasoning messages (``REASONING_MESSAGE_CHUNK``);
- the running agent -> one step per agent (``STEP_STARTED``/``FINISHED``, its name), so a
  handoff shows as the next step;
- ``final_output`` -> the turn's result (as JSON when it is, else its ``str``).

In your module::

    from agents import Agent
    from worker.adapters.openai_agents import from_openai_agents
    chat = from_openai_agents(Agent(name="assistant", instructions="Be brief."))

Cancel cancels the agent's task; the SDK's own run task is cancelled with it
(``RunResultStreaming.cancel``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from worker.adapters.runinput import as_run_input
from worker.adapters.stream import run_stream
from worker.context import TurnContext

__all__ = ["from_openai_agents"]


def from_openai_agents(agent: Any, **run_options: Any) -> Callable[[TurnContext, Any], Awaitable[Any]]:
    """``run_options`` go to ``Runner.run_streamed`` (``context``, ``max_turns``, ``run_config`` …)."""
    from agents import Runner

    async def run(ctx: TurnContext, input: Any) -> Any:
        result = Runner.run_streamed(agent, _sdk_input(as_run_input(ctx, input)), **run_options)
        return await run_stream(ctx, _agui_events(result))

    return run


def _sdk_input(run_input: dict[str, Any]) -> Any:
    """AG-UI text messages as the SDK's input items (tool history is the SDK's own business)."""
    items = []
    for m in run_input["messages"]:
        if m.get("role") in ("user", "assistant", "system", "developer") and isinstance(m.get("content"), str):
            items.append({"role": m["role"], "content": m["content"]})
    return items


async def _agui_events(result: Any) -> AsyncIterator[dict[str, Any]]:
    calls: dict[str, str] = {}  # output item id -> call_id
    step: str | None = None
    try:
        async for event in result.stream_events():
            if event.type == "agent_updated_stream_event":
                if step is not None:
                    yield {"type": "STEP_FINISHED", "stepName": step}
                step = f"agent:{event.new_agent.name}"
                yield {"type": "STEP_STARTED", "stepName": step}
            elif event.type == "raw_response_event":
                for out in _raw(event.data, calls):
                    yield out
            elif event.type == "run_item_stream_event" and event.name == "tool_output":
                raw = event.item.raw_item
                call_id = raw.get("call_id") if isinstance(raw, dict) else getattr(raw, "call_id", None)
                if call_id:
                    yield {"type": "TOOL_CALL_RESULT", "messageId": f"tool-{call_id}", "toolCallId": call_id,
                           "content": str(event.item.output), "role": "tool"}
    except asyncio.CancelledError:
        result.cancel()  # the SDK runs the agent in its own task: stop it too
        raise
    if step is not None:
        yield {"type": "STEP_FINISHED", "stepName": step}
    yield {"type": "RUN_FINISHED", "threadId": "", "runId": "", "result": _jsonable(result.final_output)}


def _raw(data: Any, calls: dict[str, str]) -> list[dict[str, Any]]:
    kind = data.type
    if kind == "response.output_item.added":
        item = data.item
        if item.type == "message":
            return [{"type": "TEXT_MESSAGE_START", "messageId": item.id, "role": "assistant"}]
        if item.type == "function_call":
            calls[item.id] = item.call_id
            return [{"type": "TOOL_CALL_START", "toolCallId": item.call_id, "toolCallName": item.name}]
    elif kind == "response.output_text.delta" and data.delta:
        return [{"type": "TEXT_MESSAGE_CONTENT", "messageId": data.item_id, "delta": data.delta}]
    elif kind == "response.function_call_arguments.delta" and data.item_id in calls:
        return [{"type": "TOOL_CALL_ARGS", "toolCallId": calls[data.item_id], "delta": data.delta}]
    elif kind in ("response.reasoning_text.delta", "response.reasoning_summary_text.delta"):
        return [{"type": "REASONING_MESSAGE_CHUNK", "messageId": f"reasoning-{data.item_id}", "delta": data.delta}]
    elif kind == "response.output_item.done":
        item = data.item
        if item.type == "message":
            return [{"type": "TEXT_MESSAGE_END", "messageId": item.id}]
        if item.type == "function_call" and item.id in calls:
            return [{"type": "TOOL_CALL_END", "toolCallId": calls.pop(item.id)}]
    return []


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return str(value)
    return value
