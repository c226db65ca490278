"""The runnerd agent for ``scripts/bench_peer.py``: the same work as the peer's graph node.

Async like the peer's node, so a cancel lands at its next ``await`` there and here.
Imported by name in the turn's process; cheap to import, no import of the benchmark.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from worker.context import TurnContext


async def emit(ctx: TurnContext, input: Any) -> None:
    """Emits ``n`` CUSTOM "e" events ``{"t": monotonic_ns, "i": i}``, at ``rate``/s (0: at once)."""
    n = int(input["n"])
    rate = float(input.get("rate", 0))
    t0 = time.monotonic_ns()
    for i in range(n):
        if rate:
            delay = t0 + i * 1e9 / rate - time.monotonic_ns()
            if delay > 0:
                await asyncio.sleep(delay / 1e9)
        ctx.custom("e", {"t": time.monotonic_ns(), "i": i})
