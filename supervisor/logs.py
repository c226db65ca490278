"""Logging as a library: runnerd logs through the standard ``logging`` tree (``runnerd.*``).

Embedded, the host decides where that goes (nothing is configured, so nothing
is written unless the host asks). The daemon configures its own output with
``configure_logging``: JSON lines off a terminal (journald), console on one.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

logging.getLogger("runnerd").addHandler(logging.NullHandler())  # the host's choice, not lastResort's


def get_logger(name: str) -> Any:
    """A structured logger on ``logging.getLogger(name)``, independent of structlog's global config."""
    return structlog.wrap_logger(
        logging.getLogger(name),
        processors=[structlog.stdlib.filter_by_level, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.stdlib.BoundLogger,
    )


def configure_logging(level: str = "info", *, json: bool | None = None) -> None:
    """The daemon's own output: every ``logging`` record (runnerd's and uvicorn's) on stderr."""
    if json is None:
        json = not sys.stderr.isatty()
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name],
        processors=[
            structlog.stdlib.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.format_exc_info,  # log.exception() keeps its traceback in JSON
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            renderer,
        ],
    ))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
