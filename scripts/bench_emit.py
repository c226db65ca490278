#!/usr/bin/env python3
"""CPU cost of ``TurnContext.emit`` (checks included), without the pipe, beside encoding alone.

    python scripts/bench_emit.py

The writer is a stub that drops the bytes, so what is measured is the child's
own work per event: parsing what was given (struct, dict or ``ag_ui.core``
model), the AG-UI order checks, encoding. The baseline, measured in the same
run, is building the struct and ``encode_event`` alone. Best of 7 repeats of
100,000 ``TEXT_MESSAGE_CONTENT`` events into one open message.
"""

from __future__ import annotations

import multiprocessing
import sys
import timeit
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ipc import events as ev  # noqa: E402
from worker.asyncrun import CancelWatch
from worker.context import TurnContext  # noqa: E402

N = 100_000


class _Drop:
    def send_events(self, events: list[bytes]) -> None:
        pass


def per_event(fn: Any) -> float:
    return min(timeit.repeat(fn, number=N, repeat=7)) / N * 1e6


def main() -> None:
    ctx = TurnContext(turn_id="01M8TP48WQDF8T372BN3X5AST3", thread_id="t", writer=_Drop(),  # type: ignore[arg-type]
                      token=CancelWatch(multiprocessing.get_context("spawn").Event()), max_event_bytes=1 << 20)
    ctx.emit(ev.TextMessageStart(message_id="m"))
    rows = [("baseline: struct + encode_event",
             per_event(lambda: ev.encode_event(ev.TextMessageContent(message_id="m", delta="word", timestamp=1)))),
            ("ctx.emit(struct)", per_event(lambda: ctx.emit(ev.TextMessageContent(message_id="m", delta="word")))),
            ("ctx.emit(dict)", per_event(lambda: ctx.emit(
                {"type": "TEXT_MESSAGE_CONTENT", "messageId": "m", "delta": "word"})))]
    try:
        from ag_ui.core import TextMessageContentEvent
        rows.append(("ctx.emit(ag_ui.core model)", per_event(
            lambda: ctx.emit(TextMessageContentEvent(message_id="m", delta="word")))))
    except ImportError:
        pass
    base = rows[0][1]
    for name, us in rows:
        print(f"  {name:34s} {us:7.2f} us/event   x{us / base:.1f}")


if __name__ == "__main__":
    main()
