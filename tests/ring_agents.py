"""Agents for tests/test_ring.py (imported by name in the turn's process)."""

from __future__ import annotations

import os
import signal
import struct
import time
from typing import Any

from worker.context import TurnContext

_U64 = struct.Struct("@Q")


def burst_then_sigkill(ctx: TurnContext, input: Any) -> None:
    """Emits ``n`` events as fast as it can, then SIGKILLs itself the moment the last
    emit returns; first it notes how many published bytes the relay had not read yet."""
    for i in range(int(input["n"])):
        ctx.custom("i", i)
    mm = ctx._writer._mm  # type: ignore[attr-defined]
    unread = _U64.unpack_from(mm, 0)[0] - _U64.unpack_from(mm, 64)[0]  # head - tail
    with open(input["report"], "w") as f:
        f.write(str(unread))
    os.kill(os.getpid(), signal.SIGKILL)


def big_and_small(ctx: TurnContext, input: Any) -> None:
    """Small events in the ring with events too big for it (on the pipe) between them."""
    for i in range(int(input["n"])):
        ctx.custom("i", {"i": i, "pad": "b" * (int(input["big"]) if i % 3 == 1 else 10)})


def gated(ctx: TurnContext, input: Any) -> None:
    """Emits event i, then waits (asleep, as the relay is) until the test has read it."""
    for i in range(int(input["n"])):
        ctx.custom("i", i)
        gate = os.path.join(input["dir"], f"go-{i}")
        deadline = time.monotonic() + 30
        while not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.01)
