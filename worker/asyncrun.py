"""Cancel inside the turn: the parent's token waited for on one thread, and
coroutines whose task is cancelled the moment it comes (no polling)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ipc.token import CancelToken

__all__ = ["CancelWatch", "cancel_on_token"]

T = TypeVar("T")


class CancelWatch:
    """The parent's cancel token, waited for on one thread: no polling, and the
    token's cross-process lock is taken once per turn, not once per check."""

    def __init__(self, token: CancelToken) -> None:
        self._flag = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], object]] = []
        threading.Thread(target=self._wait, args=(token,), name="runnerd-cancel", daemon=True).start()

    def _wait(self, token: CancelToken) -> None:
        token.wait()  # blocks on the token's semaphore
        with self._lock:
            self._flag.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def is_set(self) -> bool:
        return self._flag.is_set()

    def on_cancel(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` (from the watching thread) once the cancel comes; at once if it came."""
        with self._lock:
            if not self._flag.is_set():
                self._callbacks.append(callback)
                return
        callback()


async def cancel_on_token(coro: Awaitable[T], token: CancelWatch) -> T:
    """Run ``coro`` as a task; cancel the task once the cancel comes (CancelledError at its ``await``)."""
    task: asyncio.Future[T] = asyncio.ensure_future(coro)
    loop = asyncio.get_running_loop()
    token.on_cancel(lambda: _cancel_soon(loop, task))
    return await task


def _cancel_soon(loop: asyncio.AbstractEventLoop, task: asyncio.Future[Any]) -> None:
    try:
        loop.call_soon_threadsafe(task.cancel)
    except RuntimeError:
        pass  # the loop already closed: the coroutine had finished
