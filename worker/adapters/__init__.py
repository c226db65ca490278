"""Run an agent framework as a runnerd turn, in one line.

``stream.run_stream`` takes any async iterator of AG-UI events (the
framework-free path); ``pydantic_ai``, ``langgraph`` and ``openai_agents``
wrap those frameworks (extras ``runnerd[pydantic-ai]``, ``runnerd[langgraph]``,
``runnerd[openai-agents]``). Each imports its framework only when called, so
this package imports without any of them.
"""
