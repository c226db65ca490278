"""supervisor.server.sdnotify against real sockets: a datagram listener standing in for
systemd, and a child process that receives listening sockets at fd 3+."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_fixture import child_env

from supervisor.server import sdnotify

pytestmark = pytest.mark.timeout(10)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # AF_UNIX paths are limited to 108 bytes; pytest's tmp_path can exceed that.
    with tempfile.TemporaryDirectory(prefix="sdn-") as d:
        yield Path(d)


@pytest.fixture
def listener(short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A unix datagram socket playing systemd's notify socket."""
    path = short_dir / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield sock


def test_notify_sends_lines_as_one_datagram(listener: socket.socket) -> None:
    assert sdnotify.notify("READY=1", "STATUS=0 turns running") is True
    assert listener.recv(4096) == b"READY=1\nSTATUS=0 turns running"


def test_notify_sends_one_datagram_per_call(listener: socket.socket) -> None:
    assert sdnotify.notify("WATCHDOG=1")
    assert sdnotify.notify("STOPPING=1")
    assert listener.recv(4096) == b"WATCHDOG=1"
    assert listener.recv(4096) == b"STOPPING=1"


def test_notify_abstract_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"runnerd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.notify("READY=1")
        assert sock.recv(4096) == b"READY=1"


def test_notify_without_env_is_noop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "")
    assert sdnotify.notify("READY=1") is False


def test_notify_without_lines_sends_nothing(listener: socket.socket) -> None:
    assert sdnotify.notify() is False
    listener.setblocking(False)
    with pytest.raises(BlockingIOError):
        listener.recv(4096)


@pytest.mark.parametrize("address", ["/nonexistent/dir/notify.sock", "relative.sock", "@runnerd-nobody-listens"])
def test_notify_send_error_returns_false(monkeypatch: pytest.MonkeyPatch, address: str) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    assert sdnotify.notify("READY=1") is False


def test_notify_to_a_non_datagram_socket_returns_false(short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = short_dir / "stream.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))
        sock.listen()
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert sdnotify.notify("READY=1") is False


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("30000000", None, 15.0),
        ("30000000", "self", 15.0),
        ("1000", None, 0.0005),
        ("30000000", "other", None),
        ("30000000", "garbage", None),
        ("0", None, None),
        ("-5", None, None),
        ("abc", None, None),
        ("", None, None),
        (None, None, None),
    ],
)
def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None, expected: float | None) -> None:
    for name, value in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", pid)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            value = {"self": str(os.getpid()), "other": str(os.getpid() + 1)}.get(value, value)
            monkeypatch.setenv(name, value)
    assert sdnotify.watchdog_interval() == expected


def test_listen_fds_without_env_is_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        monkeypatch.delenv(name, raising=False)
    assert sdnotify.listen_fds() == []


@pytest.mark.parametrize("pid", ["other", "garbage", ""])
def test_listen_fds_for_another_pid_is_empty_and_unsets_env(monkeypatch: pytest.MonkeyPatch, pid: str) -> None:
    # A wrong pid must not touch fd 3 of the test process; the variables still go.
    monkeypatch.setenv("LISTEN_PID", str(os.getpid() + 1) if pid == "other" else pid)
    monkeypatch.setenv("LISTEN_FDS", "1")
    monkeypatch.setenv("LISTEN_FDNAMES", "runnerd.socket")
    assert sdnotify.listen_fds() == []
    assert not {"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} & os.environ.keys()


# Plays systemd's part inside the child: move the passed sockets to fd 3, 4, ...,
# set LISTEN_PID to its own pid (unknowable before exec), then call listen_fds()
# and serve one connection per socket, reporting what it saw on stdout.
CHILD = r"""
import fcntl, json, os, sys
from supervisor.server import sdnotify

passed = [int(a) for a in sys.argv[1:]]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in passed]  # out of the way of 3, 4
for fd in passed:
    os.close(fd)
for i, fd in enumerate(high):
    os.dup2(fd, sdnotify.LISTEN_FDS_START + i)  # inheritable, as systemd hands them over
    os.close(fd)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS=str(len(passed)), LISTEN_FDNAMES="a:b")

socks = sdnotify.listen_fds()
report = {
    "fds": [s.fileno() for s in socks],
    "inheritable": [os.get_inheritable(s.fileno()) for s in socks],
    "env": sorted(k for k in os.environ if k.startswith("LISTEN_")),
    "families": [s.family.name for s in socks],
}
for s in socks:
    s.settimeout(5)
    conn, _ = s.accept()
    with conn:
        conn.sendall(b"hello from fd %d: " % s.fileno() + conn.recv(64))
    s.close()
print(json.dumps(report))
"""


def test_listen_fds_in_child_serves_passed_sockets(short_dir: Path) -> None:
    paths = [short_dir / "a.sock", short_dir / "b.sock"]
    servers = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in paths]
    clients = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in paths]
    try:
        for server, client, path in zip(servers, clients, paths):
            server.bind(str(path))
            server.listen()
            # Connect before the child runs: the backlog holds the connection,
            # so the child's accept() needs no synchronisation.
            client.settimeout(5)
            client.connect(str(path))
            client.sendall(b"ping " + path.name.encode())
        fds = [s.fileno() for s in servers]
        env = {k: v for k, v in child_env().items() if not k.startswith("LISTEN_")}
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, *map(str, fds)],
            pass_fds=fds,
            env=env,
            capture_output=True,
            text=True,
            timeout=8,
        )
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout)
        assert report == {
            "fds": [3, 4],
            "inheritable": [False, False],
            "env": [],
            "families": ["AF_UNIX", "AF_UNIX"],
        }
        assert clients[0].recv(64) == b"hello from fd 3: ping a.sock"
        assert clients[1].recv(64) == b"hello from fd 4: ping b.sock"
    finally:
        for s in servers + clients:
            s.close()
