"""Configuration: one msgspec Struct, loadable from TOML."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

DEFAULT_AGENTS = {
    "demo": "supervisor.demo_agents:chat",
    "sleep": "supervisor.demo_agents:sleeper",
    "fail": "supervisor.demo_agents:failer",
}


def default_state_dir() -> str:
    """``$STATE_DIRECTORY`` (systemd), else a per-user directory."""
    if env := os.environ.get("STATE_DIRECTORY"):
        return env.split(":")[0]
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return str(Path(base) / "runnerd")


class Config(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Every knob, with defaults that run a fresh install as it is."""

    agents: dict[str, str] = msgspec.field(default_factory=lambda: dict(DEFAULT_AGENTS))
    state_dir: str = msgspec.field(default_factory=default_state_dir)
    start_method: str = "forkserver"  # or "spawn"
    preload_agents: bool = True  # import configured agents in the forkserver once
    cancel_grace_s: float = 2.0  # cooperative cancel -> SIGTERM
    kill_grace_s: float = 2.0  # SIGTERM -> SIGKILL
    default_timeout_s: float | None = None
    max_event_bytes: int = 1 << 20
    buffer_bytes: int = 4 << 20  # per turn, recent events kept in memory
    log_level: str = "info"

    def __post_init__(self) -> None:
        if self.start_method not in ("forkserver", "spawn"):
            raise ValueError(f"start_method must be 'forkserver' or 'spawn', not {self.start_method!r}")
        for name, target in self.agents.items():
            module, sep, func = target.partition(":")
            if not sep or not module or not func:
                raise ValueError(f"agent {name!r}: expected 'module:function', got {target!r}")
        if self.cancel_grace_s < 0 or self.kill_grace_s < 0:
            raise ValueError("cancel_grace_s and kill_grace_s must be >= 0")
        if self.max_event_bytes < 1024:
            raise ValueError("max_event_bytes must be at least 1024")


def load_config(path: str | os.PathLike[str]) -> Config:
    with open(path, "rb") as f:
        return msgspec.toml.decode(f.read(), type=Config)
