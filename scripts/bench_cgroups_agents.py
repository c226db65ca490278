"""Agents for ``scripts/bench_cgroups.py``: each crosses one limit at a moment it
reports first, by a bounded amount (never a bomb, never an endless hog)."""

from __future__ import annotations

import os
import time
from typing import Any

from worker.context import TurnContext


def noop(ctx: TurnContext, input: Any) -> None:
    return None


def cross_memory(ctx: TurnContext, input: Any) -> None:
    """Report the time, then touch ``mib`` MiB in one go (over the limit), then wait."""
    ctx.custom("breach_at", time.time())
    block = bytearray(int(input["mib"]) << 20)
    block[::4096] = b"x" * len(block[::4096])
    while True:
        time.sleep(1)


def cross_processes(ctx: TurnContext, input: Any) -> None:
    """Report the time, then start ``n`` sleeping children (over the limit), then wait."""
    ctx.custom("breach_at", time.time())
    for _ in range(int(input["n"])):
        try:
            if os.fork() == 0:
                time.sleep(30)
                os._exit(0)
        except OSError:
            time.sleep(0.001)  # refused at pids.max: the agent carries on as most would
    while True:
        time.sleep(1)


def spin(ctx: TurnContext, input: Any) -> None:
    """Keep one core busy in pure Python until cancelled (bounded: ``seconds``, default 60)."""
    ctx.custom("spinning", os.getpid())
    end = time.monotonic() + float((input or {}).get("seconds", 60))
    while time.monotonic() < end:
        ctx.check_cancelled()
