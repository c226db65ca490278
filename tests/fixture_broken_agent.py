"""An agent module that cannot be imported."""

raise ImportError("this agent module is broken on purpose")


def run(ctx: object, input: object) -> None:  # pragma: no cover - never reached
    pass
