"""The cancel token: a ``multiprocessing.Event`` shared by parent and child.

Polling it is one semaphore probe, cheap enough to check between tokens.
"""

from __future__ import annotations

import multiprocessing.context
import multiprocessing.synchronize

CancelToken = multiprocessing.synchronize.Event


def new_token(ctx: multiprocessing.context.BaseContext) -> CancelToken:
    return ctx.Event()
