"""The agent of scripts/bench_idle.py: an async turn that only waits."""

from __future__ import annotations

import asyncio
from typing import Any

from worker.context import TurnContext


async def idle(ctx: TurnContext, input: Any) -> None:
    await asyncio.sleep(3600)
