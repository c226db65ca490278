"""Any async iterator of AG-UI events, passed through a ``TurnContext``.

- The framework's own ``RUN_STARTED``/``RUN_FINISHED``/``RUN_ERROR`` become the
  turn's: ``RUN_FINISHED.result`` is returned (runnerd puts it in its own
  ``RUN_FINISHED``); a ``RUN_ERROR`` raises ``FrameworkRunError`` (the turn
  fails ``agent_error``), after a ``CUSTOM`` ``runnerd.error`` event keeping the
  framework's ``code`` and ``message``. An exception out of the framework is
  kept the same way, with its traceback, then re-raised.
- ``*_CHUNK`` events are expanded by ``ctx.emit``; event types runnerd does not
  know, and events the order checks refuse, go out as ``RAW`` (``source``
  says which), so the turn's stream stays valid for AG-UI clients.
- Cancel: the worker cancels the agent's task, which closes the framework's
  iterator (``CancelledError`` at its ``await``); the relay closes what the
  framework left open.
"""

from __future__ import annotations

import traceback
from collections.abc import AsyncIterable, Mapping
from typing import Any

from ipc import events as ev
from worker.context import InvalidEvent, TurnContext, wire_form

__all__ = ["run_stream", "FrameworkRunError"]

_LIFECYCLE = ev.LIFECYCLE_TYPES


class FrameworkRunError(RuntimeError):
    """The framework ended its run with ``RUN_ERROR``."""

    def __init__(self, message: str, code: str | None) -> None:
        super().__init__(f"{message} (code {code})" if code else message)
        self.code = code


async def run_stream(ctx: TurnContext, events: AsyncIterable[Any]) -> Any:
    """Emit every event of ``events`` (structs, ``ag_ui.core`` models or dicts); return the run's result."""
    result: Any = None
    error: dict[str, Any] | None = None
    try:
        async for item in events:
            event = wire_form(item)
            kind = event.get("type")
            if kind == "RUN_FINISHED":
                result = event.get("result")
            elif kind == "RUN_ERROR":
                error = event
            elif kind not in _LIFECYCLE:
                _emit(ctx, event)
    except Exception as exc:  # the framework's failure: kept with its traceback, then the turn's
        ctx.custom("runnerd.error", {"type": type(exc).__name__, "message": str(exc),
                                     "traceback": traceback.format_exc()})
        raise
    if error is not None:
        ctx.custom("runnerd.error", {"code": error.get("code"), "message": error.get("message")})
        raise FrameworkRunError(str(error.get("message", "")), error.get("code"))
    return result


def _emit(ctx: TurnContext, event: Mapping[str, Any]) -> None:
    if event.get("type") not in ev.EVENT_TYPES:
        ctx.raw(dict(event), source="agui-adapter:unknown-type")
        return
    try:
        ctx.emit(event)
    except InvalidEvent as exc:
        ctx.log.warning("framework_event_refused", error=str(exc))
        ctx.raw(dict(event), source="agui-adapter:refused")
