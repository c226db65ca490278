"""Agents and the naive baseline's emitter for ``scripts/bench_daemon.py``.

The daemon's turn processes import this module by name (``PYTHONPATH`` holds
``scripts/``), so it stays cheap to import and never imports the benchmark.
"""

from __future__ import annotations

import os
import time
from typing import Any

from ipc import events as ev
from worker.context import TurnContext

# ~100-byte events: '{"seq":N,"type":"TEXT_MESSAGE_CONTENT","timestamp":…,"messageId":"msg-bench-1",
# "delta":"xxxxxx"}' is 100-106 bytes as stored and served.
TEXT_DELTA = "x" * 6
MESSAGE_ID = "msg-bench-1"
TICK_PAD = "y" * 24  # pads a "tick" CUSTOM event to ~110 bytes
GO_WAIT_S = 120.0  # a paced emitter never waits longer than this for its go file


def noop(ctx: TurnContext, input: Any) -> None:
    """Returns at once: the turn is RUN_STARTED + RUN_FINISHED."""


def flood(ctx: TurnContext, input: Any) -> None:
    """``n`` TEXT_MESSAGE_CONTENT events as fast as the agent can emit them, as text messages
    of ``per_message`` deltas each (TEXT_MESSAGE_START ... TEXT_MESSAGE_END).

    ``batch`` = 1: one ``ctx.emit`` per event (the usual token loop);
    ``batch`` > 1: ``ctx.emit_many`` of that many contents (the agent batches itself).
    The turn has n + 2 * ceil(n / per_message) + 2 events (with RUN_STARTED and RUN_FINISHED).
    """
    n = int(input["n"])
    batch = int(input.get("batch", 1))
    per_message = int(input.get("per_message", 1000))
    for first in range(0, n, per_message):
        message_id = f"{MESSAGE_ID[:-1]}{first // per_message % 10}"  # same length for every message
        size = min(per_message, n - first)
        ctx.emit(ev.TextMessageStart(message_id=message_id))
        if batch <= 1:
            for _ in range(size):
                ctx.emit(ev.TextMessageContent(message_id=message_id, delta=TEXT_DELTA))
        else:
            for start in range(0, size, batch):
                ctx.emit_many([ev.TextMessageContent(message_id=message_id, delta=TEXT_DELTA)
                               for _ in range(min(batch, size - start))])
        ctx.emit(ev.TextMessageEnd(message_id=message_id))


def wait_go(path: str) -> bool:
    """Poll for the go file (bounded); False if it never came."""
    deadline = time.monotonic() + GO_WAIT_S
    while time.monotonic() < deadline:
        if os.path.exists(path):
            return True
        time.sleep(0.002)
    return False


def tick_value(i: int) -> dict[str, Any]:
    return {"t": time.monotonic_ns(), "i": i, "pad": TICK_PAD}


def paced(ctx: TurnContext, input: Any) -> dict[str, Any]:
    """Once ``input["go"]`` exists, CUSTOM "tick" events at ``rate``/s for ``count`` events.

    Each tick carries its emit time as CLOCK_MONOTONIC ns (system-wide on Linux),
    taken right before the emit, so a subscriber in another process can time delivery.
    """
    if not wait_go(str(input["go"])):
        raise RuntimeError("no go signal")
    rate, count = float(input["rate"]), int(input["count"])
    t0 = time.monotonic()
    late = 0
    for i in range(count):
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            late += 1
        ctx.custom("tick", tick_value(i))
    return {"late": late}


def naive_emitter(q: Any, go: str, rate: float, count: int) -> None:
    """The naive server's producer process: same payload and pacing, one dict per ``Queue.put``."""
    if not wait_go(go):
        q.put(None)
        return
    t0 = time.monotonic()
    for i in range(count):
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        q.put({"type": "CUSTOM", "timestamp": time.time_ns() // 1_000_000, "name": "tick",
               "value": tick_value(i)})
    q.put(None)
