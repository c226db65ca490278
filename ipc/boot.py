"""Process target that starts the worker by name.

The supervisor never imports ``worker``; it hands this function and an entry
name to multiprocessing, so the child imports only ``ipc`` and the worker.
"""

from __future__ import annotations

import importlib
from typing import Any


def boot(entry: str, *args: Any) -> None:
    module, _, func = entry.partition(":")
    getattr(importlib.import_module(module), func)(*args)
