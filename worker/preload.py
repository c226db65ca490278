"""Imported once in the forkserver: preload the configured agents' modules.

An agent whose import fails is skipped here (it fails again, cleanly, as
``agent_unavailable`` in its own turn) instead of killing the forkserver.
"""

from __future__ import annotations

import importlib
import os
import sys

for _entry in os.environ.get("RUNNERD_PRELOAD_PATH", "").split(os.pathsep):
    if _entry and _entry not in sys.path:
        sys.path.append(_entry)

for _name in filter(None, os.environ.get("RUNNERD_PRELOAD", "").split(",")):
    try:
        importlib.import_module(_name)
    except BaseException:  # noqa: BLE001 - any failure of agent code at import
        pass
