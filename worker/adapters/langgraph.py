"""A compiled LangGraph graph as a runnerd agent, through ``ag-ui-langgraph`` (``runnerd[langgraph]``).

In your module::

    from worker.adapters.langgraph import from_langgraph
    chat = from_langgraph(builder.compile(checkpointer=InMemorySaver()))

and ``chat = "yourmodule:chat"`` under ``[agents]``. The input is handled as
for every adapter (``worker.adapters.runinput``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from worker.adapters.runinput import as_run_input
from worker.adapters.stream import run_stream
from worker.context import TurnContext

__all__ = ["from_langgraph"]


def from_langgraph(graph: Any, *, name: str = "agent", **options: Any) -> Callable[[TurnContext, Any], Awaitable[Any]]:
    """``options`` go to ``ag_ui_langgraph.LangGraphAgent`` (``config``, ``emit_raw_events`` …)."""
    from ag_ui.core import RunAgentInput
    from ag_ui_langgraph import LangGraphAgent

    agent = LangGraphAgent(name=name, graph=graph, **options)

    async def run(ctx: TurnContext, input: Any) -> Any:
        run_input = RunAgentInput.model_validate(as_run_input(ctx, input))
        return await run_stream(ctx, agent.run(run_input))

    return run
