"""An async agent that only waits: what a turn blocked on a model call looks like."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from worker.context import TurnContext


async def idle(ctx: TurnContext, input: Any) -> None:
    ctx.custom("ready", os.getpid())
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        ctx.custom("task_cancelled", True)
        raise
