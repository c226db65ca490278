"""A pydantic-ai ``Agent`` as a runnerd agent, through its own ``AGUIAdapter`` (``runnerd[pydantic-ai]``).

In your module::

    from pydantic_ai import Agent
    from worker.adapters.pydantic_ai import from_pydantic_ai

    chat = from_pydantic_ai(Agent("openai:gpt-4o", instructions="Be brief."))

and ``chat = "yourmodule:chat"`` under ``[agents]``. The turn's input is the
AG-UI ``RunAgentInput`` (what ``POST /v1/agents/{agent}/ag-ui`` passes); any
other input (a string, ``{"prompt": …}``) becomes one user message.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from worker.adapters.runinput import as_run_input
from worker.adapters.stream import run_stream
from worker.context import TurnContext

__all__ = ["from_pydantic_ai"]


def from_pydantic_ai(agent: Any, **run_options: Any) -> Callable[[TurnContext, Any], Awaitable[Any]]:
    """``run_options`` go to ``AGUIAdapter.run_stream`` (``deps``, ``model``, ``usage_limits`` …)."""
    from ag_ui.core import RunAgentInput
    from pydantic_ai.ui.ag_ui import (
        AGUIAdapter,  # the extra's import, at definition: fail early
    )

    async def run(ctx: TurnContext, input: Any) -> Any:
        run_input = RunAgentInput.model_validate(as_run_input(ctx, input))
        adapter = AGUIAdapter(agent=agent, run_input=run_input)
        return await run_stream(ctx, adapter.run_stream(**run_options))

    return run
