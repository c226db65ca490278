"""The cancel token: one-shot, set by the parent, waited for by the child.

The child waits for it on one thread (``worker.asyncrun.CancelWatch``); agent code
reads a local flag, so no check touches the shared semaphore.

A bare semaphore, not ``multiprocessing.Event``: ``Event.set()`` waits until every
process sleeping in ``wait()`` has woken and said so, so it blocks for as long as
the turn's process is stopped (SIGSTOP, a frozen cgroup) and forever when that
process died while waiting, and it is the relay thread that sets it. ``sem_post``
never waits for anyone.
"""

from __future__ import annotations

import multiprocessing.context
import multiprocessing.synchronize

__all__ = ["CancelToken", "new_token"]


class CancelToken:
    """``set()`` (parent, any thread, never blocks) and ``wait()`` (child, one thread)."""

    def __init__(self, sem: multiprocessing.synchronize.Semaphore) -> None:
        self._sem = sem
        self._set = False  # this process's view: posted once; two racing setters post twice, harmlessly

    def set(self) -> None:
        if not self._set:
            self._set = True
            self._sem.release()

    def is_set(self) -> bool:
        """Whether this process has set it (the child learns of it from ``wait``)."""
        return self._set

    def wait(self) -> None:
        self._sem.acquire()


def new_token(ctx: multiprocessing.context.BaseContext) -> CancelToken:
    return CancelToken(ctx.Semaphore(0))
