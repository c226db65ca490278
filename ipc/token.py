"""The cancel token: a ``multiprocessing.Event`` shared by parent and child.

The child waits for it on one thread (``worker.main.CancelWatch``); agent code
reads a local flag, so no check takes the cross-process lock.
"""

from __future__ import annotations

import multiprocessing.context
import multiprocessing.synchronize
from typing import Protocol

CancelToken = multiprocessing.synchronize.Event


class CancelFlag(Protocol):
    """What agent-side code asks of a cancel: has it come?"""

    def is_set(self) -> bool: ...


def new_token(ctx: multiprocessing.context.BaseContext) -> CancelToken:
    return ctx.Event()
