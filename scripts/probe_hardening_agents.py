"""The agent of ``scripts/probe_hardening.py``: a turn with a large history, fast."""

from __future__ import annotations

from typing import Any

from ipc import events as ev
from worker.context import TurnContext


def bulk(ctx: TurnContext, input: Any) -> None:
    """``n`` CUSTOM events of ``pad`` bytes each."""
    pad = "x" * int(input.get("pad", 400))
    for i in range(int(input["n"])):
        ctx.emit(ev.Custom(name="i", value=[i, pad]))
