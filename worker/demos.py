"""Built-in demo agents, so a fresh install has something to run."""

from __future__ import annotations

import time
from typing import Any

from worker.context import TurnContext

_ANSWER = ("runnerd runs each agent turn in its own process, relays its events "
           "through a pipe, numbers them, logs them and serves them live or as an export.")


def chat(ctx: TurnContext, input: Any) -> dict[str, Any]:
    """Streams a message word by word, with a tool call and state updates."""
    prompt = (input or {}).get("prompt", "what is runnerd?") if isinstance(input, dict) else str(input)
    delay = float(input.get("delay", 0.02)) if isinstance(input, dict) else 0.02
    ctx.state_snapshot({"prompt": prompt, "phase": "thinking", "words": 0})
    with ctx.step("lookup"):
        with ctx.tool_call("search") as call:
            call.args('{"query": ' + _json_str(prompt) + "}")
            call.result("runnerd: a supervisor daemon for agent runs")
    ctx.state_delta([{"op": "replace", "path": "/phase", "value": "answering"}])
    words = _ANSWER.split(" ")
    with ctx.message() as m:
        for i, word in enumerate(words):
            ctx.check_cancelled()
            m.write(word if i == 0 else " " + word)
            if delay:
                time.sleep(delay)
    ctx.state_delta([{"op": "replace", "path": "/phase", "value": "done"},
                     {"op": "replace", "path": "/words", "value": len(words)}])
    return {"words": len(words)}


def sleeper(ctx: TurnContext, input: Any) -> None:
    """Sleeps ``seconds`` (default 60), checking the cancel token."""
    seconds = float(input.get("seconds", 60)) if isinstance(input, dict) else 60.0
    deadline = time.monotonic() + seconds
    ctx.custom("sleeping", {"seconds": seconds})
    while time.monotonic() < deadline:
        ctx.check_cancelled()
        time.sleep(0.01)


def failer(ctx: TurnContext, input: Any) -> None:
    """Emits one event, then raises."""
    ctx.custom("about_to_fail", None)
    raise RuntimeError("the demo agent failed on purpose")


def _json_str(s: str) -> str:
    import json
    return json.dumps(s)
