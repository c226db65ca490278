"""A coroutine whose task is cancelled when the turn's cancel token is set."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from ipc.token import CancelToken

__all__ = ["cancel_on_token", "CANCEL_POLL_S"]

CANCEL_POLL_S = 0.01  # the token is a semaphore probe: cheap to look at this often
T = TypeVar("T")


async def cancel_on_token(coro: Awaitable[T], token: CancelToken) -> T:
    """Run ``coro`` as a task; cancel the task once ``token`` is set (CancelledError at its ``await``)."""
    task: asyncio.Future[T] = asyncio.ensure_future(coro)
    while not task.done():
        await asyncio.wait([task], timeout=CANCEL_POLL_S)
        if token.is_set() and not task.done():
            task.cancel()
    return task.result()


