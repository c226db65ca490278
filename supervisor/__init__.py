"""runnerd's supervisor side: the embedded ``Supervisor``, the daemon, the CLI, the client.

Names are imported lazily so ``import supervisor.x`` stays cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Supervisor", "Config", "TurnInfo", "TurnStatus", "ExportPage", "load_config"]


def __getattr__(name: str) -> Any:
    if name in ("Supervisor", "ExportPage"):
        from supervisor import embedded
        return getattr(embedded, name)
    if name in ("Config", "load_config"):
        from supervisor import config
        return getattr(config, name)
    if name in ("TurnInfo", "TurnStatus"):
        from supervisor import turns
        return getattr(turns, name)
    if name in ("Client", "AsyncClient"):
        from supervisor.control import client
        return getattr(client, name)
    raise AttributeError(name)
