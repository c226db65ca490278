"""A real ``redis-server`` per test: its own Unix socket in a temp folder, no TCP port, gone at teardown.

``SentinelSet`` (a master, a replica, a sentinel) is the exception: Sentinel watches over TCP, so
it listens on 127.0.0.1 only, on ports chosen at run time.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REDIS_SERVER = shutil.which("redis-server")
needs_redis = pytest.mark.skipif(REDIS_SERVER is None,
                                 reason="redis-server is not installed (apt-get install -y redis-server)")


class RedisServer:
    def __init__(self, folder: Path, *, aof: bool = False) -> None:
        self.folder = folder
        self.aof = aof
        self.socket = str(folder / "redis.sock")
        self.url = f"unix://{self.socket}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> RedisServer:
        import redis

        self.folder.mkdir(parents=True, exist_ok=True)
        assert REDIS_SERVER is not None
        args = [REDIS_SERVER, "--port", "0", "--unixsocket", self.socket, "--unixsocketperm", "700",
                "--dir", str(self.folder), "--save", "", "--daemonize", "no", "--loglevel", "warning"]
        args += ["--appendonly", "yes", "--appendfsync", "always"] if self.aof else ["--appendonly", "no"]
        with open(self.folder / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=log)
        _until(_answers(self.proc, self.folder / "redis.log",
                        lambda: redis.Redis(unix_socket_path=self.socket, socket_timeout=2)),
               "redis-server to answer PING", timeout)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            _terminate(self.proc)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()


def free_port() -> int:
    """A TCP port on 127.0.0.1 free right now (Sentinel watches its master over TCP, not a Unix socket)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _ping(port: int, timeout: float, proc: subprocess.Popen[bytes], log: Path) -> None:
    import redis

    _until(_answers(proc, log, lambda: redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)),
           f"redis on port {port} to answer PING", timeout)


def _answers(proc: subprocess.Popen[bytes], log: Path, connect: Callable[[], Any]) -> Callable[[], bool]:
    """A PING through a fresh client; a server that exited fails at once, with its log."""
    def check() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"redis-server exited {proc.returncode}: {log.read_text()}")
        client = connect()
        try:
            return bool(client.ping())
        finally:
            client.close()
    return check


def _until(condition: Callable[[], object], what: str, timeout: float = 60.0, step: float = 0.02) -> None:
    """Wait for ``condition`` with a deadline; a Redis error counts as not yet."""
    import redis

    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout} s for {what}")
        time.sleep(step)


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class SentinelSet:
    """A master, its replica and one sentinel watching them, each on a 127.0.0.1 port chosen at run time."""

    MASTER = "rtmaster"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ports = {"master": free_port(), "replica": free_port(), "sentinel": free_port()}
        self.procs: list[subprocess.Popen[bytes]] = []
        self.url = f"redis+sentinel://127.0.0.1:{self.ports['sentinel']}/{self.MASTER}"

    def _start(self, name: str, args: list[str]) -> None:
        folder = self.folder / name
        folder.mkdir(parents=True, exist_ok=True)
        assert REDIS_SERVER is not None
        with open(folder / "redis.log", "ab") as log:
            proc = subprocess.Popen([REDIS_SERVER, *args], stdout=log, stderr=log, cwd=folder)
        self.procs.append(proc)
        _ping(self.ports[name], 30.0, proc, folder / "redis.log")

    def client(self, name: str) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.ports[name], socket_timeout=5)

    def start(self) -> SentinelSet:
        common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no",
                  "--loglevel", "warning"]
        self._start("master", ["--port", str(self.ports["master"]), "--dir", str(self.folder / "master"), *common])
        self._start("replica", ["--port", str(self.ports["replica"]), "--dir", str(self.folder / "replica"),
                                "--replicaof", "127.0.0.1", str(self.ports["master"]), *common])
        replica = self.client("replica")
        _until(lambda: replica.info("replication").get("master_link_status") == "up", "the replica's link")
        (self.folder / "sentinel").mkdir(parents=True, exist_ok=True)
        conf = self.folder / "sentinel" / "sentinel.conf"  # Sentinel rewrites its own config: a file of its own
        conf.write_text(f"port {self.ports['sentinel']}\nbind 127.0.0.1\ndir {self.folder / 'sentinel'}\n"
                        f"sentinel monitor {self.MASTER} 127.0.0.1 {self.ports['master']} 1\n"
                        f"sentinel down-after-milliseconds {self.MASTER} 2000\n"
                        f"sentinel failover-timeout {self.MASTER} 10000\n")
        self._start("sentinel", [str(conf), "--sentinel", "--daemonize", "no", "--loglevel", "warning"])
        sentinel = self.client("sentinel")
        _until(lambda: any(r.get(b"flags") == b"slave" and r.get(b"master-link-status") == b"ok"
                                for r in sentinel.execute_command("SENTINEL", "REPLICAS", self.MASTER)),
                    "the sentinel to know the replica")
        return self

    def master_port(self) -> int:
        host, port = self.client("sentinel").execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.MASTER)
        return int(port)

    def failover(self) -> None:
        """Promote the replica (as Sentinel does when the master dies) and wait until the old master follows it."""
        self.client("sentinel").execute_command("SENTINEL", "FAILOVER", self.MASTER)
        _until(lambda: self.master_port() == self.ports["replica"], "the sentinel to name the new master")
        old = self.client("master")
        _until(lambda: old.info("replication").get("role") == "slave", "the old master to be demoted")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            _terminate(proc)


@pytest.fixture
def sentinel_set(tmp_path: Path) -> Iterator[SentinelSet]:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    group = SentinelSet(tmp_path / "sentinel-set")
    try:
        yield group.start()
    finally:
        group.stop()
