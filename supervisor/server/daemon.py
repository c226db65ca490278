"""``runnerd``: the Supervisor plus the HTTP API on a Unix socket (and optional TCP).

Start-up: load the config, start the Supervisor (forkserver warm), bind the
listeners ourselves (the socket is 0660; uvicorn's ``--uds`` would make it
0666), then serve and send ``READY=1``. Shutdown on SIGTERM/SIGINT (handlers
only set an event): refuse new requests, end every open stream with a
``shutdown`` frame, cancel (or drain) running turns, flush, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import ipaddress
import os
import signal
import socket
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import click
import uvicorn

from supervisor.config import Config, ServerConfig, load_config
from supervisor.embedded import Supervisor
from supervisor.errors import RunnerdError
from supervisor.logs import configure_logging, get_logger
from supervisor.server import sdnotify
from supervisor.server.access import TcpPolicy, listener_hosts
from supervisor.server.connections import (
    ConnectionStats,
    protocol_class,
    quiet_uvicorn,
    tcp_connection_cap,
)
from supervisor.server.http import create_app
from supervisor.server.proctitle import set_title
from supervisor.server.sse import StreamSet

log = get_logger("runnerd.daemon")
DEFAULT_CONFIG = "/etc/runnerd/runnerd.toml"
WATCHDOG_STALE_S = 10.0  # a relay heartbeat older than this stops the watchdog pings


class StartupError(Exception):
    """A clear reason the daemon cannot start (exit code 2)."""


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the daemon owns shutdown."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def resolve_config(path: str | None) -> Config:
    if path is None and os.path.exists(DEFAULT_CONFIG):
        path = DEFAULT_CONFIG
    if path is None:
        return Config()
    try:
        return load_config(path)
    except FileNotFoundError:
        raise StartupError(f"config file {path} does not exist") from None
    except (ValueError, OSError) as exc:  # msgspec errors are ValueErrors
        raise StartupError(f"invalid config {path}: {exc}") from None


def bind_unix(path: str, mode: int, group: str | None) -> socket.socket:
    """Bind ``path`` with ``mode``; refuse if another daemon answers there."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    if p.exists() or p.is_symlink():
        if not stat.S_ISSOCK(p.lstat().st_mode):
            raise StartupError(f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            p.unlink()  # stale: its daemon is gone
        else:
            raise StartupError(f"another runnerd is already listening on {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # no window in which the socket is world-connectable
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, mode)
    if group is not None:
        try:
            os.chown(path, -1, grp.getgrnam(group).gr_gid)
        except KeyError:
            sock.close()
            p.unlink()  # a refused start leaves no socket file behind
            raise StartupError(f"socket group {group!r} does not exist") from None
    sock.listen(1024)
    sock.set_inheritable(False)
    return sock


def bind_tcp(server: ServerConfig) -> tuple[socket.socket, TcpPolicy]:
    """Bind ``server.tcp``: a token is required (loopback included) unless
    ``tcp_insecure_loopback`` on a loopback address."""
    spec = server.tcp or ""
    host, sep, port = spec.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit():
        raise StartupError(f"server.tcp must be HOST:PORT, got {spec!r}")
    token = None
    if server.token_file is not None:
        try:
            token = Path(server.token_file).read_text().strip()
        except OSError as exc:
            raise StartupError(f"cannot read token file {server.token_file}: {exc.strerror}") from None
        if len(token) < 16:
            raise StartupError(f"the token in {server.token_file} is shorter than 16 characters")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if token is None and not (server.tcp_insecure_loopback and loopback):
        raise StartupError(f"refusing to listen on {spec} without server.token_file "
                           "(tcp_insecure_loopback = true allows a loopback address without one)")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say so, and
    # without it a response written in two sends waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Inherited by accepted connections: a half-open peer is found by keepalive
    # probes, and unacknowledged data times the connection out.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 60_000)
    try:
        sock.bind((host, int(port)))
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot listen on {spec}: {exc.strerror}") from None
    sock.listen(1024)
    sock.set_inheritable(False)
    hosts = listener_hosts(host, sock.getsockname()[1], loopback=loopback, extra=server.tcp_host_names)
    if token is None:
        log.warning("tcp_insecure_loopback", tcp=spec,
                    message="TCP without a token: every local user can start agents as this daemon's user")
        click.echo(f"runnerd: WARNING: {spec} accepts requests without a token "
                   "(tcp_insecure_loopback): every local user can start agents", err=True)
    return sock, TcpPolicy(hosts=hosts, token=token, insecure_loopback=token is None)


class Daemon:
    """One run of runnerd: owns the Supervisor, the listeners and the shutdown."""

    def __init__(self, config: Config, nofile: int = 1024) -> None:
        self.config = config
        server = config.server
        self.connections = ConnectionStats(
            max_tcp=tcp_connection_cap(nofile, config.max_running_turns, server.max_tcp_connections),
            max_per_peer=server.max_tcp_connections_per_peer, header_timeout_s=server.header_timeout_s,
            body_timeout_s=server.body_timeout_s, send_timeout_s=server.send_timeout_s)
        self.stop_requested = asyncio.Event()
        self.streams = StreamSet()
        self.sup: Supervisor | None = None
        self._owned_socket: str | None = None

    def request_stop(self) -> None:
        """Signal handler and ``POST /v1/shutdown``: only enqueue."""
        self.stop_requested.set()

    def _listeners(self) -> tuple[list[socket.socket], TcpPolicy | None]:
        server = self.config.server
        inherited = sdnotify.listen_fds()  # systemd socket activation
        policy = None
        if inherited:
            sockets = inherited
        else:
            sockets = [bind_unix(server.socket, int(server.socket_mode, 8), server.socket_group)]
            self._owned_socket = server.socket
        if server.tcp:
            try:
                tcp, policy = bind_tcp(server)
            except StartupError:
                for s in sockets:
                    s.close()
                raise
            sockets.append(tcp)
        return sockets, policy

    async def run(self) -> int:
        try:
            return await self._run()
        except StartupError:
            self._remove_socket()  # a failed start leaves no socket file behind
            raise

    async def _run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(self.connections.accept_error_handler)
        server_cfg = self.config.server
        sockets, policy = self._listeners()
        try:
            self.sup = await asyncio.to_thread(Supervisor(self.config).start)
        except (RunnerdError, OSError) as exc:
            for s in sockets:
                s.close()
            raise StartupError(f"cannot start the supervisor: {exc}") from None
        app = create_app(self.sup, max_body_bytes=server_cfg.max_body_bytes,
                         keepalive_s=server_cfg.keepalive_s, tcp=policy, streams=self.streams,
                         send_timeout_s=server_cfg.send_timeout_s, connections=self.connections,
                         on_shutdown=self.request_stop)
        quiet_uvicorn()
        uv_config = uvicorn.Config(
            app, lifespan="off", log_config=None, access_log=False, server_header=False,
            http=protocol_class(self.connections),
            timeout_graceful_shutdown=max(1, int(server_cfg.shutdown_timeout_s / 2)),
            h11_max_incomplete_event_size=16 * 1024,  # caps request line + headers arriving in pieces
            timeout_keep_alive=max(1, round(server_cfg.idle_timeout_s)),
        )
        server = _Server(uv_config)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        serving = asyncio.ensure_future(server.serve(sockets=sockets))
        while not server.started and not serving.done():
            await asyncio.sleep(0.01)  # uvicorn exposes no readiness event
        if serving.done():
            await self._stop_supervisor(drain=False)
            serving.result()
            raise StartupError("the HTTP server failed to start")
        where = self.config.server.socket if self._owned_socket else "inherited sockets"
        log.info("runnerd_ready", listen=where, tcp=server_cfg.tcp, pid=os.getpid(),
                 max_tcp_connections=self.connections.max_tcp)
        sdnotify.notify("READY=1", f"STATUS=serving on {where}; 0 turns running")
        watchdog = asyncio.ensure_future(self._watchdog())
        stop = asyncio.ensure_future(self.stop_requested.wait())
        await asyncio.wait({serving, stop}, return_when=asyncio.FIRST_COMPLETED)
        started = time.monotonic()
        sdnotify.notify("STOPPING=1", "STATUS=shutting down")
        log.info("runnerd_stopping", open_streams=self.streams.count, running=self.sup.table.running)
        watchdog.cancel()
        self.streams.close_all()  # final frame on every stream; new requests get 503
        server.should_exit = True  # uvicorn stops accepting and waits for connections
        await self._stop_supervisor(drain=server_cfg.shutdown_mode == "drain")
        remaining = server_cfg.shutdown_timeout_s - (time.monotonic() - started)
        try:
            await asyncio.wait_for(serving, max(0.5, remaining))
        except asyncio.TimeoutError:
            log.error("http_server_shutdown_timeout")
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        self._remove_socket()
        log.info("runnerd_stopped", seconds=round(time.monotonic() - started, 3))
        return 0

    async def _stop_supervisor(self, *, drain: bool) -> None:
        if self.sup is not None:
            budget = max(1.0, self.config.server.shutdown_timeout_s - 1.0)
            await asyncio.to_thread(self.sup.close, drain=drain, timeout=budget)

    def _remove_socket(self) -> None:
        if self._owned_socket is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._owned_socket)

    async def _watchdog(self) -> None:
        """WATCHDOG=1 only while the relay loop is alive and turning over; STATUS= too."""
        interval = sdnotify.watchdog_interval()
        period = min(interval, 5.0) if interval else 5.0
        assert self.sup is not None
        while True:
            await asyncio.sleep(period)
            relay = self.sup.relay
            healthy = relay.alive and time.monotonic() - relay.heartbeat < WATCHDOG_STALE_S
            running = self.sup.table.running
            lines = [f"STATUS={running} turns running, {self.streams.count} streams open"]
            if interval and healthy:
                lines.append("WATCHDOG=1")
            elif interval:
                log.error("relay_unhealthy_watchdog_withheld")
            sdnotify.notify(*lines)


def raise_nofile_limit() -> int:
    """Every SSE stream and every turn holds descriptors: use the whole hard limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def run(config: Config) -> int:
    """Run the daemon until SIGTERM/SIGINT; returns the exit code."""
    configure_logging(config.log_level)
    nofile = raise_nofile_limit()
    try:
        return asyncio.run(Daemon(config, nofile).run())
    except StartupError as exc:
        log.error("startup_failed", error=str(exc))
        click.echo(f"runnerd: {exc}", err=True)
        return 2


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help=f"TOML config (default: {DEFAULT_CONFIG} when present, else built-in defaults).")
@click.option("--socket", "socket_path", help="Unix socket path (overrides server.socket).")
@click.option("--state-dir", help="State directory (overrides state_dir).")
def main(config_path: str | None, socket_path: str | None, state_dir: str | None) -> None:
    """runnerd: the supervisor daemon for agent turns."""
    set_title("runnerd", sys.argv[1:])
    try:
        config = resolve_config(config_path)
    except StartupError as exc:
        click.echo(f"runnerd: {exc}", err=True)
        sys.exit(2)
    if socket_path:
        config.server.socket = socket_path
    if state_dir:
        config.state_dir = state_dir
    sys.exit(run(config))


if __name__ == "__main__":
    main()
