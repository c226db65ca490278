"""The cancel token: a ``multiprocessing.Event`` shared by parent and child.

The child waits for it on one thread (``worker.asyncrun.CancelWatch``); agent code
reads a local flag, so no check takes the cross-process lock.
"""

from __future__ import annotations

import multiprocessing.context
import multiprocessing.synchronize

CancelToken = multiprocessing.synchronize.Event


def new_token(ctx: multiprocessing.context.BaseContext) -> CancelToken:
    return ctx.Event()
