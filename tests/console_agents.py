"""Agents for the console's browser tests; imported in the turn's process."""

from __future__ import annotations

import sys
import time
from typing import Any

from worker.context import TurnContext

XSS = ['<script>window.__xss = "script"</script>', '<img src=x onerror="window.__xss = \'img\'">',
       '"><svg onload="window.__xss=\'svg\'">']


def trickle(ctx: TurnContext, input: Any) -> dict[str, int]:
    """One message of ``n`` words, one every ``delay`` seconds, between a tool call and a step."""
    n, delay = int(input.get("n", 20)), float(input.get("delay", 0.05))
    print(f"trickle: {n} words", flush=True)  # captured stdout
    print("trickle: to stderr", file=sys.stderr, flush=True)
    ctx.state_snapshot({"words": 0})
    with ctx.tool_call("lookup") as call:
        call.args('{"n": %d}' % n)
        call.result(f"{n} words to send")
    with ctx.step("answer"), ctx.message() as m:
        for i in range(n):
            ctx.check_cancelled()
            m.write(f"w{i} ")
            if i % 10 == 9:
                ctx.state_delta([{"op": "replace", "path": "/words", "value": i + 1}])
            time.sleep(delay)
    return {"words": n}


def mixed(ctx: TurnContext, input: Any) -> None:
    """``n`` events: messages of 10 deltas and tool calls with args and results, in turn."""
    n = int(input.get("n", 100))
    sent = 0
    k = 0
    while sent < n:
        k += 1
        if k % 2:
            with ctx.message() as m:
                for j in range(10):
                    m.write(f"m{k}.{j} ")
            sent += 12
        else:
            with ctx.tool_call(f"tool{k}") as call:
                call.args('{"k": %d, ' % k)
                call.args('"x": "y"}')
                call.result(f"result {k}")
            sent += 5


def xss(ctx: TurnContext, input: Any) -> dict[str, list[str]]:
    """Every kind of agent-provided string carries the payloads."""
    ctx.state_snapshot({"note": XSS[0], XSS[1]: XSS[2]})
    with ctx.step(XSS[1]):
        with ctx.tool_call(XSS[0]) as call:
            call.args('{"q": "%s"}' % XSS[1].replace('"', '\\"'))
            call.result(XSS[2])
    with ctx.message() as m:
        for payload in XSS:
            m.write(payload)
    ctx.custom(XSS[0], {"html": XSS[1]})
    return {"echo": XSS}
