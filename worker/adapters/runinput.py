"""The turn's input as an AG-UI ``RunAgentInput`` (wire-form dict), whatever started it."""

from __future__ import annotations

from typing import Any

from worker.context import TurnContext


def as_run_input(ctx: TurnContext, input: Any) -> dict[str, Any]:
    """A RunAgentInput as is (from the AG-UI endpoint); else one user message holding ``input``."""
    if isinstance(input, dict) and "messages" in input and "threadId" in input:
        return {"runId": ctx.turn_id, "tools": [], "context": [], **input}
    text = input.get("prompt") if isinstance(input, dict) and isinstance(input.get("prompt"), str) else input
    content = text if isinstance(text, str) else ("" if text is None else str(text))
    return {"threadId": ctx.thread_id, "runId": ctx.turn_id, "tools": [], "context": [], "state": None,
            "messages": [{"id": ctx.new_id("user"), "role": "user", "content": content}]}
