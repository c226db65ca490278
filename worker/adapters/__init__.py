"""Run an agent framework's AG-UI stream as a runnerd turn, in one line.

``stream.run_stream`` takes any async iterator of AG-UI events (the
framework-free path); ``pydantic_ai`` wraps a pydantic-ai ``Agent`` (extra
``runnerd[pydantic-ai]``). Adapters import their framework lazily, so this
package imports without any of them.
"""
