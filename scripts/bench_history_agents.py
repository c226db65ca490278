"""The agent of ``scripts/bench_history.py``: one long turn with a realistic event mix.

The daemon's turn processes import this module by name (``PYTHONPATH`` holds
``scripts/``), so it stays cheap to import and never imports the benchmark.
"""

from __future__ import annotations

import random
from typing import Any

from worker.context import TurnContext

# One round is 50 events, all emitted through the ctx helpers:
#   STEP_STARTED, TEXT_MESSAGE_START, 40 x TEXT_MESSAGE_CONTENT, TEXT_MESSAGE_END,
#   TOOL_CALL_START, 2 x TOOL_CALL_ARGS, TOOL_CALL_END + TOOL_CALL_RESULT, STATE_DELTA, STEP_FINISHED
DELTAS_PER_MESSAGE = 40
ROUND_EVENTS = 2 + (DELTAS_PER_MESSAGE + 2) + 5 + 1
WORDS = ("the supervisor relays every event of the turn to the stream registry and the log "
         "agents call tools read files write patches think about state resume cursor export "
         "history replay memory bounded bytes socket client daemon process pipe frame batch "
         "token delta message snapshot compaction retention seq order gap none").split()


def _text(rng: random.Random, lo: int, hi: int) -> str:
    """Words up to a length drawn from [lo, hi] characters."""
    target = rng.randint(lo, hi)
    out: list[str] = []
    size = 0
    while size < target:
        w = rng.choice(WORDS)
        out.append(w)
        size += len(w) + 1
    return (" " + " ".join(out))[:target]


def history(ctx: TurnContext, input: Any) -> dict[str, int]:
    """Emit exactly ``n`` events (the turn then holds n + 2 with RUN_STARTED/RUN_FINISHED).

    Mostly TEXT_MESSAGE_CONTENT deltas of 40-170 characters (~160-290 bytes as stored),
    a tool call and a state delta per round; a remainder of ``n % 50`` is CUSTOM events.
    """
    n = int(input["n"])
    rng = random.Random(int(input.get("seed", 1)))
    emitted = 0
    rounds = n // ROUND_EVENTS
    for r in range(rounds):
        ctx.check_cancelled()
        with ctx.step(f"round-{r}"):
            with ctx.message() as m:
                for _ in range(DELTAS_PER_MESSAGE):
                    m.write(_text(rng, 40, 170))
            with ctx.tool_call("search") as call:
                call.args('{"query": "%s", ' % _text(rng, 60, 120).strip())
                call.args('"limit": %d, "filters": {"kind": "%s"}}' % (rng.randint(1, 50),
                                                                       _text(rng, 40, 90).strip()))
                call.result(_text(rng, 120, 220))
            ctx.state_delta([
                {"op": "replace", "path": "/round", "value": r},
                {"op": "add", "path": "/notes/-", "value": _text(rng, 40, 120).strip()},
            ])
        emitted += ROUND_EVENTS
    while emitted < n:
        ctx.custom("filler", {"i": emitted, "text": _text(rng, 60, 150)})
        emitted += 1
    return {"events": emitted}
