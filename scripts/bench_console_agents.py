"""Agents for scripts/bench_console.py; imported in the turn's process."""

from __future__ import annotations

import time
from typing import Any

from worker.context import TurnContext


def quick(ctx: TurnContext, input: Any) -> None:
    """A short message: a finished turn for the list."""
    with ctx.message() as m:
        m.write("done")


def long_transcript(ctx: TurnContext, input: Any) -> None:
    """``n`` events: messages of 10 deltas and tool calls with args and a result, in turn."""
    n, sent, k = int(input["n"]), 0, 0
    while sent < n:
        k += 1
        if k % 2:
            with ctx.message() as m:
                for j in range(10):
                    m.write(f"word{k}.{j} ")
            sent += 12
        else:
            with ctx.tool_call(f"tool{k}") as call:
                call.args('{"k": %d}' % k)
                call.result(f"result {k}")
            sent += 4


def ticker(ctx: TurnContext, input: Any) -> None:
    """A running turn: one message delta every ``interval`` seconds until cancelled."""
    with ctx.message() as m:
        while not ctx.cancelled:
            m.write("tick ")
            time.sleep(float(input.get("interval", 0.5)))
