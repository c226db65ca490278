"""Configuration: one msgspec Struct, loadable from TOML."""

from __future__ import annotations

import hashlib
import os
import re
import socket
from pathlib import Path
from urllib.parse import urlsplit

import msgspec

DEFAULT_AGENTS = {
    "demo": "worker.demos:chat",
    "sleep": "worker.demos:sleeper",
    "fail": "worker.demos:failer",
}


def default_state_dir() -> str:
    """``$STATE_DIRECTORY`` (systemd), else a per-user directory."""
    if env := os.environ.get("STATE_DIRECTORY"):
        return env.split(":")[0]
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return str(Path(base) / "runnerd")


def default_socket_path() -> str:
    """``$RUNTIME_DIRECTORY`` (systemd), else ``$XDG_RUNTIME_DIR/runnerd``, else ``./.runnerd``."""
    if env := os.environ.get("RUNTIME_DIRECTORY"):
        return str(Path(env.split(":")[0]) / "runnerd.sock")
    if xdg := os.environ.get("XDG_RUNTIME_DIR"):
        return str(Path(xdg) / "runnerd" / "runnerd.sock")
    return str(Path.cwd() / ".runnerd" / "runnerd.sock")


class ServerConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The daemon's listeners and HTTP limits (``[server]`` in the TOML file)."""

    socket: str = msgspec.field(default_factory=default_socket_path)
    socket_mode: str = "0660"  # octal, as a string
    socket_group: str | None = None
    tcp: str | None = None  # "127.0.0.1:8765"; needs token_file (or tcp_insecure_loopback on loopback)
    token_file: str | None = None
    tcp_insecure_loopback: bool = False  # loopback TCP without a token: open to every local user
    tcp_host_names: list[str] = msgspec.field(default_factory=list)  # extra Host names the TCP listener answers
    max_tcp_connections: int = 1024  # also bounded by RLIMIT_NOFILE (see server/connections.py)
    max_tcp_connections_per_peer: int = 128
    header_timeout_s: float = 10.0  # a request's headers must be complete within this
    body_timeout_s: float = 30.0  # and its body within this after the headers
    idle_timeout_s: float = 30.0  # a keep-alive connection with no new request is closed
    max_body_bytes: int = 1 << 20
    keepalive_s: float = 15.0
    send_timeout_s: float = 30.0  # a client that takes no write (JSON or SSE) this long is dropped
    shutdown_timeout_s: float = 10.0
    shutdown_mode: str = "cancel"  # or "drain": let running turns finish first

    def __post_init__(self) -> None:
        try:
            mode = int(self.socket_mode, 8)
        except ValueError:
            raise ValueError(f"server.socket_mode must be octal like '0660', not {self.socket_mode!r}") from None
        if not 0 <= mode <= 0o777:
            raise ValueError("server.socket_mode must be within 0000-0777")
        if self.shutdown_mode not in ("cancel", "drain"):
            raise ValueError("server.shutdown_mode must be 'cancel' or 'drain'")
        if self.max_body_bytes < 1024:
            raise ValueError("server.max_body_bytes must be at least 1024")
        if self.max_tcp_connections < 1 or self.max_tcp_connections_per_peer < 1:
            raise ValueError("server.max_tcp_connections and max_tcp_connections_per_peer must be >= 1")
        for name in ("header_timeout_s", "body_timeout_s", "idle_timeout_s", "send_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"server.{name} must be > 0")


class RetentionConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Limits on finished turns (``[retention]``); the oldest go first. None: no limit."""

    max_age_s: float | None = None
    max_turns: int | None = None
    max_bytes: int | None = None
    keep_raw_s: float | None = None  # drop a compacted turn's full log after this long
    interval_s: float = 60.0  # how often the background pass runs

    def __post_init__(self) -> None:
        for name in ("max_age_s", "max_turns", "max_bytes", "keep_raw_s"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"retention.{name} must be >= 0")
        if self.interval_s <= 0:
            raise ValueError("retention.interval_s must be > 0")


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def sentinel_of(url: str) -> tuple[list[tuple[str, int]], str, int] | None:
    """``redis+sentinel://HOST:PORT[,HOST:PORT…]/MASTER[/DB]`` as (sentinels, master name, db);
    None for any other scheme. Raises ``ValueError`` saying what is wrong."""
    scheme = "redis+sentinel://"
    if not url.startswith(scheme):
        return None
    form = f"cluster.redis_url {url!r}: expected {scheme}HOST:PORT[,HOST:PORT...]/MASTER[/DB]"
    hosts, _, path = url[len(scheme):].partition("/")
    master, _, db = path.partition("/")
    sentinels = []
    for host in hosts.split(","):
        name, _, port = host.rpartition(":")
        if not name or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{form} (a sentinel needs a host and a port)")
        sentinels.append((name, int(port)))
    if not _NAME.fullmatch(master):
        raise ValueError(f"{form} (the master name is missing or has other characters than letters, "
                         "digits, '.', '_' or '-')")
    if db and not db.isdigit():
        raise ValueError(f"{form} (DB is a number)")
    return sentinels, master, int(db or 0)


class ClusterConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Several nodes on one Redis (``[cluster]``); absent: a single node on files."""

    # redis://host:port/db, rediss://… (TLS), unix:///path/redis.sock, or through Sentinel:
    # redis+sentinel://host:port[,host:port…]/master-name[/db]
    redis_url: str
    node_id: str | None = None  # default: stable per host and state directory (see node_name)
    node_ttl_s: float = 10.0  # a node whose heartbeat is this old is dead; its turns end lost
    key_prefix: str = "runnerd"
    redis_retry_s: float = 5.0  # an append waits this long for Redis to come back, then the turn fails

    def __post_init__(self) -> None:
        url = urlsplit(self.redis_url)
        if url.scheme == "redis+sentinel":
            sentinel_of(self.redis_url)  # raises on a malformed one
        elif url.scheme in ("redis", "rediss"):
            if not url.hostname:
                raise ValueError(f"cluster.redis_url {self.redis_url!r} names no host (redis://HOST:PORT/DB)")
        elif url.scheme == "unix":
            if not url.path.startswith("/"):
                raise ValueError(f"cluster.redis_url {self.redis_url!r} needs an absolute socket path "
                                 "(unix:///path/redis.sock)")
        else:
            raise ValueError(f"cluster.redis_url must start with redis://, rediss://, unix:// or "
                             f"redis+sentinel://, not {self.redis_url!r}")
        if self.node_id is not None and not _NAME.fullmatch(self.node_id):
            raise ValueError("cluster.node_id must be 1-64 characters of letters, digits, '.', '_' or '-'")
        if not _NAME.fullmatch(self.key_prefix):
            raise ValueError("cluster.key_prefix must be 1-64 characters of letters, digits, '.', '_' or '-'")
        if not 0.5 <= self.node_ttl_s <= 3600:
            raise ValueError("cluster.node_ttl_s must be within [0.5, 3600]")
        if not 0 <= self.redis_retry_s <= 600:
            raise ValueError("cluster.redis_retry_s must be within [0, 600]")

    def node_name(self, state_dir: str) -> str:
        """``node_id``, else the host name plus a hash of the state directory: the same
        daemon gets the same id after a restart, two daemons on one host get two."""
        if self.node_id is not None:
            return self.node_id
        digest = hashlib.sha256(os.path.realpath(state_dir).encode()).hexdigest()[:8]
        host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:50] or "host"
        return f"{host}-{digest}"


DEFAULT_ENV_ALLOWLIST = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR",
                         "PYTHONPATH", "PYTHONUNBUFFERED", "VIRTUAL_ENV")


class LimitsConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Per-turn limits (``[limits]``). None: no limit."""

    memory_bytes: int | None = None  # the turn's memory (cgroup limit, else polled RSS) -> memory_limit
    max_processes: int | None = None  # the turn's processes (cgroup pids.max, else polled) -> limit_exceeded
    cpu_quota: float | None = None  # CPUs' worth of time per turn (cgroup cpu quota; 0.5 = half a CPU)
    cgroups: str = "auto"  # "auto": a cgroup per turn when possible | "require": refuse to start without | "off"
    max_events: int | None = None  # events per turn -> limit_exceeded
    max_turn_bytes: int | None = None  # event bytes per turn -> limit_exceeded
    open_files: int | None = 1024  # RLIMIT_NOFILE of the turn's process
    core_dumps: bool = False
    user: str | None = None  # drop to this user (and group) in the turn's process; needs root
    group: str | None = None
    env_allowlist: list[str] | None = msgspec.field(default_factory=lambda: list(DEFAULT_ENV_ALLOWLIST))
    output_bytes: int = 10 << 20  # of a turn's stdout/stderr kept in <id>.output; the rest is counted
    poll_s: float = 0.25  # polled memory and process count; with cgroups only v1 pids.events is read this often

    def __post_init__(self) -> None:
        for name in ("memory_bytes", "max_processes", "max_events", "max_turn_bytes", "open_files"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"limits.{name} must be >= 1")
        if self.cgroups not in ("auto", "require", "off"):
            raise ValueError(f"limits.cgroups must be 'auto', 'require' or 'off', not {self.cgroups!r}")
        if self.cpu_quota is not None and not self.cpu_quota >= 0.01:
            raise ValueError("limits.cpu_quota must be >= 0.01 (CPUs)")
        if self.poll_s <= 0 or self.output_bytes < 0:
            raise ValueError("limits.poll_s must be > 0 and limits.output_bytes >= 0")


class AguiConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /v1/agents/{agent}/ag-ui`` (``[agui]``)."""

    on_disconnect: str = "cancel"  # or "continue": the run goes on for a later reattach

    def __post_init__(self) -> None:
        if self.on_disconnect not in ("cancel", "continue"):
            raise ValueError("agui.on_disconnect must be 'cancel' or 'continue'")


class Config(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Every knob, with defaults that run a fresh install as it is."""

    agents: dict[str, str] = msgspec.field(default_factory=lambda: dict(DEFAULT_AGENTS))
    state_dir: str = msgspec.field(default_factory=default_state_dir)
    start_method: str = "forkserver"  # or "spawn"
    preload_agents: bool = True  # import configured agents in the forkserver once
    cancel_grace_s: float = 2.0  # cooperative cancel -> SIGTERM
    kill_grace_s: float = 2.0  # SIGTERM -> SIGKILL
    default_timeout_s: float | None = None
    max_running_turns: int = 32  # beyond this, turns wait in a FIFO queue
    max_queued: int = 1000  # beyond this, a start is refused (HTTP 429)
    max_event_bytes: int = 1 << 20
    # Bytes of the shared-memory ring each turn's events come through (ipc/ring.py);
    # 0: over the pipe only, one write(2) per emit. x86-64 only: elsewhere the pipe.
    ring_bytes: int = 1 << 20
    max_page_bytes: int = 1 << 20  # of events in one export page (at least one event is always returned)
    buffer_bytes: int = 4 << 20  # per turn, recent events kept in memory
    ended_memory_s: float = 30.0  # an ended turn's events leave memory after this long
    log_level: str = "info"
    compact_finished: bool = True  # fold finished turns into their snapshot form
    retention: RetentionConfig = msgspec.field(default_factory=RetentionConfig)
    limits: LimitsConfig = msgspec.field(default_factory=LimitsConfig)
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    agui: AguiConfig = msgspec.field(default_factory=AguiConfig)
    cluster: ClusterConfig | None = None  # several nodes on one Redis (docs/CLUSTER.md)

    def __post_init__(self) -> None:
        if self.start_method not in ("forkserver", "spawn"):
            raise ValueError(f"start_method must be 'forkserver' or 'spawn', not {self.start_method!r}")
        for name, target in self.agents.items():
            module, sep, func = target.partition(":")
            if not sep or not module or not func:
                raise ValueError(f"agent {name!r}: expected 'module:function', got {target!r}")
        if self.cancel_grace_s < 0 or self.kill_grace_s < 0:
            raise ValueError("cancel_grace_s and kill_grace_s must be >= 0")
        if self.max_running_turns < 1 or self.max_queued < 0:
            raise ValueError("max_running_turns must be >= 1 and max_queued >= 0")
        if self.max_event_bytes < 1024:
            raise ValueError("max_event_bytes must be at least 1024")
        if self.ring_bytes and (self.ring_bytes < 65536 or self.ring_bytes % 4096):
            raise ValueError("ring_bytes must be 0 or a multiple of 4096 of at least 65536")
        if self.max_page_bytes < 1024:
            raise ValueError("max_page_bytes must be at least 1024")


def load_config(path: str | os.PathLike[str]) -> Config:
    with open(path, "rb") as f:
        return msgspec.toml.decode(f.read(), type=Config)
