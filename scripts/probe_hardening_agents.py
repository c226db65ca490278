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


def long_text(ctx: TurnContext, input: Any) -> None:
    """One assistant message of ``n`` deltas of ``size`` bytes (what a long session folds into)."""
    delta = "y" * int(input.get("size", 1000))
    ctx.emit(ev.TextMessageStart(message_id="m1"))
    for _ in range(int(input["n"])):
        ctx.emit(ev.TextMessageContent(message_id="m1", delta=delta))
    ctx.emit(ev.TextMessageEnd(message_id="m1"))
