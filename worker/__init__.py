"""What runs inside a turn's process: the entry point and the agent's context."""

from worker.context import Cancelled, EventTooLarge, TurnContext

__all__ = ["Cancelled", "EventTooLarge", "TurnContext"]
