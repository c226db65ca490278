"""The agent scripts/chaos.py runs: emits numbered events and records, after each
emit returned, how far it got, in a side file the supervisor never touches."""

from __future__ import annotations

import os
import time
from typing import Any

from worker.context import TurnContext


def emitter(ctx: TurnContext, input: Any) -> dict[str, int]:
    n = int(input["n"])
    fd = os.open(input["side"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for i in range(1, n + 1):
            ctx.custom("i", i)
            # Written only after emit returned: the log must hold every i <= this.
            os.pwrite(fd, b"%12d" % i, 0)
            if i % 50 == 0:
                time.sleep(float(input.get("pause", 0.002)))
    finally:
        os.close(fd)
    return {"n": n}
