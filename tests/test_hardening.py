"""Regression tests for the probes of issue 9, each against a real daemon and real sockets.

Each test names the figure it guards: connections held, bytes read or buffered,
a deadline that must cut a connection. Deadlines in the daemon are configured
short (1 s) so the tests wait on the condition, never on a fixed sleep.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from conftest import wait_for
from daemon_fixture import BIN, Daemon, start_daemon, stopped, write_config

TOKEN = "s3cret-token-0123456789"
JSON = {"content-type": "application/json"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    yield from stopped(start_daemon(tmp_path))


@pytest.fixture
def tcp_daemon(tmp_path: Path) -> Iterator[tuple[Daemon, int]]:
    port = _free_port()
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    d = start_daemon(tmp_path, tcp=f"127.0.0.1:{port}", token_file=str(token), header_timeout_s=1.0,
                     body_timeout_s=1.0, send_timeout_s=1.0, max_tcp_connections_per_peer=64)
    yield from ((d, port) for d in stopped(d))


def _metric(d: Daemon, name: str) -> float:
    with d.http() as c:
        for line in c.get("/metrics").text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


def _read_all(sock: socket.socket) -> bytes:
    """Everything until the daemon closes (the test's own timeout bounds it)."""
    out = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return out
        if not chunk:
            return out
        out += chunk


def _json_error(raw: bytes) -> tuple[int, dict[str, str], dict[str, object]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, json.loads(body)


# -- 1. loopback TCP is not a free pass ------------------------------------------

@pytest.mark.timeout(30)
def test_loopback_tcp_without_a_token_does_not_start(tmp_path: Path) -> None:
    config = write_config(tmp_path, tcp=f"127.0.0.1:{_free_port()}")
    r = subprocess.run([str(BIN / "runnerd"), "--config", str(config)], capture_output=True, text=True,
                       timeout=20)
    assert r.returncode == 2 and "without server.token_file" in r.stderr
    assert not (tmp_path / "run" / "runnerd.sock").exists()  # and no stale socket file


@pytest.mark.timeout(30)
def test_insecure_loopback_is_explicit_and_loud(tmp_path: Path) -> None:
    port = _free_port()
    d = start_daemon(tmp_path, tcp=f"127.0.0.1:{port}", tcp_insecure_loopback=True)
    try:
        assert "WARNING" in d.log.read_text() and "tcp_insecure_loopback" in d.log.read_text()
        r = httpx.post(f"http://127.0.0.1:{port}/v1/turns", json={"agent": "count", "input": {"n": 1}})
        assert r.status_code == 201
        # The browser rules still hold without a token.
        r = httpx.post(f"http://127.0.0.1:{port}/v1/turns", content=b'{"agent":"count"}',
                       headers={"content-type": "text/plain"})
        assert r.status_code == 415
    finally:
        assert d.stop() == 0


@pytest.mark.timeout(30)
def test_insecure_loopback_is_refused_on_another_address(tmp_path: Path) -> None:
    config = write_config(tmp_path, tcp="0.0.0.0:0", tcp_insecure_loopback=True)
    r = subprocess.run([str(BIN / "runnerd"), "--config", str(config)], capture_output=True, text=True,
                       timeout=20)
    assert r.returncode == 2 and "without server.token_file" in r.stderr


@pytest.mark.timeout(30)
def test_a_web_page_cannot_use_the_tcp_listener(tcp_daemon: tuple[Daemon, int]) -> None:
    d, port = tcp_daemon
    base = f"http://127.0.0.1:{port}"
    auth = {"authorization": f"Bearer {TOKEN}"}
    # DNS rebinding: the browser sends the attacker's name as Host.
    r = httpx.get(base + "/v1/health", headers={**auth, "host": "rebind.evil.example"})
    assert r.status_code == 421 and r.json()["error"]["code"] == "unknown_host"
    # A page on another origin (even with the token, e.g. from a leaked page).
    r = httpx.post(base + "/v1/turns", json={"agent": "count"},
                   headers={**auth, "origin": "http://evil.example"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "foreign_origin"
    r = httpx.get(base + "/v1/health", headers={**auth, "origin": "null"})
    assert r.status_code == 403
    # A "simple" cross-site POST (text/plain, no preflight) is not JSON.
    r = httpx.post(base + "/v1/turns", content=b'{"agent": "count"}', headers={**auth, "content-type": "text/plain"})
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
    # Its own origin and names pass.
    r = httpx.get(base + "/v1/health", headers={**auth, "origin": f"http://127.0.0.1:{port}"})
    assert r.status_code == 200
    r = httpx.get(f"http://localhost:{port}/v1/health", headers=auth)
    assert r.status_code == 200
    with d.http() as c:  # nothing was started by the refused requests
        assert c.get("/v1/turns").json()["turns"] == []


# -- 2. connections are bounded ----------------------------------------------------

@pytest.mark.timeout(60)
def test_silent_tcp_connections_leave_the_unix_socket_and_turns_working(tmp_path: Path) -> None:
    """300 silent TCP connections on a daemon with 320 descriptors: the Unix socket still
    answers, a turn still runs, the silent ones are closed by the header deadline, and
    the log does not flood."""
    port = _free_port()
    token = tmp_path / "token"
    token.write_text(TOKEN)
    d = start_daemon(tmp_path, nofile=320, limits={"open_files": 256}, tcp=f"127.0.0.1:{port}",
                     token_file=str(token), header_timeout_s=1.0)
    silent: list[socket.socket] = []
    try:
        for _ in range(300):
            s = socket.create_connection(("127.0.0.1", port))
            silent.append(s)
        cap = _metric(d, "runnerd_tcp_connections_max")
        assert cap < 300  # RLIMIT_NOFILE 320 leaves room for fewer connections than that
        assert _metric(d, "runnerd_tcp_connections") <= cap
        with d.http() as c:
            assert c.get("/v1/health").status_code == 200
            turn = c.post("/v1/turns", json={"agent": "count", "input": {"n": 3}}).json()
            wait_for(lambda: c.get(f"/v1/turns/{turn['turn_id']}").json()["status"] not in
                     ("queued", "starting", "running"), 20)
            assert c.get(f"/v1/turns/{turn['turn_id']}").json()["status"] == "succeeded", \
                c.get(f"/v1/turns/{turn['turn_id']}").json()
        wait_for(lambda: _metric(d, "runnerd_connections_refused_total") >= 300 - cap, 20)
        # Every silent connection ends: refused at once (503) or timed out (408).
        statuses = set()
        for s in silent:
            raw = _read_all(s)
            statuses.add(_json_error(raw)[0] if raw else None)
        assert statuses <= {408, 503}
        wait_for(lambda: _metric(d, "runnerd_tcp_connections") == 0)
        assert d.log.stat().st_size < 64 * 1024
    finally:
        for s in silent:
            s.close()
        assert d.stop() == 0


@pytest.mark.timeout(30)
def test_connections_per_peer_are_capped_and_other_peers_still_connect(tmp_path: Path) -> None:
    port = _free_port()
    token = tmp_path / "token"
    token.write_text(TOKEN)
    d = start_daemon(tmp_path, tcp=f"127.0.0.1:{port}", token_file=str(token), max_tcp_connections_per_peer=5)
    held: list[socket.socket] = []
    try:
        for _ in range(5):
            held.append(socket.create_connection(("127.0.0.1", port)))
        wait_for(lambda: _metric(d, "runnerd_tcp_connections") == 5)
        with socket.create_connection(("127.0.0.1", port)) as sixth:
            status, _, body = _json_error(_read_all(sixth))  # answered and closed at once
        assert status == 503 and body["error"]["code"] == "too_many_connections"  # type: ignore[index]
        with socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.2", 0)) as other:
            other.sendall(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAuthorization: Bearer %s\r\n"
                          b"Connection: close\r\n\r\n" % (port, TOKEN.encode()))
            assert _read_all(other).startswith(b"HTTP/1.1 200")
    finally:
        for s in held:
            s.close()
        assert d.stop() == 0


@pytest.mark.timeout(30)
def test_an_idle_keep_alive_connection_is_closed(tmp_path: Path) -> None:
    d = start_daemon(tmp_path, idle_timeout_s=1.0)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(d.socket)
            s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = _read_all(s)  # returns only once the daemon closes the idle connection
        assert answer.startswith(b"HTTP/1.1 200") and answer.count(b"HTTP/1.1") == 1
    finally:
        assert d.stop() == 0


@pytest.mark.timeout(30)
def test_a_body_shorter_than_its_content_length_is_cut(tcp_daemon: tuple[Daemon, int]) -> None:
    d, port = tcp_daemon
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"POST /v1/turns HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAuthorization: Bearer %s\r\n"
                  b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"agent\"" % (port, TOKEN.encode()))
        _read_all(s)  # returns only because the daemon closed it (body deadline 1 s)
    assert _metric(d, "runnerd_request_timeouts_total") == 1
    assert "internal_error" not in d.log.read_text()


@pytest.mark.timeout(30)
def test_headers_trickled_forever_get_408(tcp_daemon: tuple[Daemon, int]) -> None:
    d, port = tcp_daemon
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"GET /v1/health HTTP/1.1\r\nX-A: 1\r\n")
        status, _, body = _json_error(_read_all(s))
    assert status == 408 and body["error"]["code"] == "request_timeout"  # type: ignore[index]


@pytest.mark.timeout(60)
def test_running_out_of_descriptors_is_counted_not_flooded(tmp_path: Path) -> None:
    """Unix-socket connections exhaust a 128-descriptor daemon: accept fails (EMFILE);
    that is a counter and a few log lines, and the daemon serves again afterwards."""
    d = start_daemon(tmp_path, nofile=128, limits={"open_files": 64}, header_timeout_s=1.0)
    held: list[socket.socket] = []
    try:
        for _ in range(300):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.connect(d.socket)
            except BlockingIOError:
                pass
            except OSError:
                s.close()
                break
            held.append(s)
        wait_for(lambda: d.log.read_text().count("accept_out_of_descriptors") >= 1, 20)
        for s in held:
            s.close()
        held.clear()
        wait_for(lambda: _metric(d, "runnerd_accept_errors_total") >= 1, 20)
        assert d.log.read_text().count("accept_out_of_descriptors") <= 3
        assert "Traceback" not in d.log.read_text()
        assert d.log.stat().st_size < 64 * 1024
    finally:
        for s in held:
            s.close()
        assert d.stop() == 0


# -- 3. answers are bounded --------------------------------------------------------

@pytest.mark.timeout(90)
def test_non_reading_export_clients_are_dropped(tmp_path: Path) -> None:
    """20 clients ask for an 8 MB export and never read: each page is at most
    max_page_bytes, and every one of them is cut after the send deadline."""
    d = start_daemon(tmp_path, send_timeout_s=1.0, top={"max_page_bytes": 2 << 20})
    clients: list[socket.socket] = []
    try:
        with d.http(30) as c:
            turn = c.post("/v1/turns", json={"agent": "count", "input": {"n": 20000, "pad": 400}}).json()
            tid = turn["turn_id"]
            wait_for(lambda: c.get(f"/v1/turns/{tid}").json()["status"] == "succeeded", 60)
            page = c.get(f"/v1/turns/{tid}/export", params={"after": 0, "limit": 10000})
            assert len(page.content) <= (2 << 20) + 4096 and page.json()["truncated"]
        for _ in range(20):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(d.socket)
            s.sendall(f"GET /v1/turns/{tid}/export?after=0&limit=10000 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            clients.append(s)
        wait_for(lambda: _metric(d, "runnerd_send_aborted_total") >= 20, 30)
        for s in clients:  # what is left for them is what the kernel buffered, then the end
            assert len(_read_all(s)) < (2 << 20)
    finally:
        for s in clients:
            s.close()
        assert d.stop() == 0


# -- 4. inputs are bounded ---------------------------------------------------------

@pytest.mark.timeout(30)
def test_deep_nesting_is_a_400_not_a_500(daemon: Daemon) -> None:
    with daemon.http() as c:
        for depth in (65, 969, 5000):
            body = '{"agent": "count", "input": ' + "[" * depth + "]" * depth + "}"
            r = c.post("/v1/turns", content=body.encode(), headers=JSON)
            assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request", depth
        ok = '{"agent": "count", "input": {"n": 1, "x": ' + "[" * 60 + "]" * 60 + "}}"
        assert c.post("/v1/turns", content=ok.encode(), headers=JSON).status_code == 201
    assert "Traceback" not in daemon.log.read_text() and "internal_error" not in daemon.log.read_text()


@pytest.mark.timeout(30)
def test_a_client_dropping_mid_body_is_not_an_error(daemon: Daemon) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(daemon.socket)
        s.sendall(b"POST /v1/turns HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100\r\n\r\n{\"agent\"")
    with daemon.http() as c:
        assert c.get("/v1/health").status_code == 200
    text = daemon.log.read_text()
    assert "internal_error" not in text and "Traceback" not in text


# -- 5. the small ones ---------------------------------------------------------------

@pytest.mark.timeout(30)
def test_empty_headers_count_toward_the_cap(daemon: Daemon) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(daemon.socket)
        s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n" + b"X:\r\n" * 16_000 + b"\r\n")
        status, _, body = _json_error(_read_all(s))
    assert status == 431 and body["error"]["code"] == "headers_too_large"  # type: ignore[index]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:  # and the count alone
        s.connect(daemon.socket)
        s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n" + b"X:\r\n" * 101 + b"\r\n")
        assert _json_error(_read_all(s))[0] == 431


@pytest.mark.timeout(30)
def test_trickled_headers_get_the_json_431(daemon: Daemon) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(daemon.socket)
        s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n")
        try:
            for _ in range(40):  # 40 KiB in 1 KiB pieces, each its own read on the server
                s.sendall(b"X-Pad: " + b"a" * 1017 + b"\r\n")
                s.recv(0)
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, headers, body = _json_error(_read_all(s))
    assert status == 431 and headers["content-type"] == "application/json"
    assert body["error"]["code"] == "headers_too_large"  # type: ignore[index]


@pytest.mark.timeout(30)
def test_405_names_the_allowed_methods(daemon: Daemon) -> None:
    with daemon.http() as c:
        r = c.delete("/v1/turns")
        assert r.status_code == 405 and set(r.headers["allow"].split(", ")) == {"GET", "HEAD", "POST"}
        r = c.put("/v1/health")
        assert r.status_code == 405 and set(r.headers["allow"].split(", ")) == {"GET", "HEAD"}


@pytest.mark.timeout(30)
def test_413_closes_without_reading_the_rest(daemon: Daemon) -> None:
    """A 1 GiB body: the daemon answers 413 and closes; the client cannot push the GiB."""
    sent = 0
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(daemon.socket)
        s.sendall(b"POST /v1/turns HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % (1 << 30))
        chunk = b"x" * 65536
        try:
            while sent < 1 << 30:
                sent += s.send(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, headers, _ = _json_error(_read_all(s))
    assert status == 413 and headers.get("connection") == "close"
    assert sent < 64 << 20  # the daemon stopped reading long before the GiB


@pytest.mark.timeout(30)
def test_no_redirect_for_a_trailing_slash(daemon: Daemon) -> None:
    with daemon.http() as c:
        r = c.get("/v1/turns/")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


@pytest.mark.timeout(60)
def test_compacted_files_are_private(daemon: Daemon, tmp_path: Path) -> None:
    with daemon.http() as c:
        tid = c.post("/v1/turns", json={"agent": "count", "input": {"n": 3}}).json()["turn_id"]
        wait_for(lambda: c.get(f"/v1/turns/{tid}").json().get("compaction") == "done", 30)
    turns = tmp_path / "state" / "turns"
    for path in (turns / f"{tid}.compact.jsonl", turns / f"{tid}.jsonl"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


@pytest.mark.timeout(30)
def test_a_tcp_bind_failure_leaves_no_socket_file(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        token = tmp_path / "token"
        token.write_text(TOKEN)
        config = write_config(tmp_path, tcp=f"127.0.0.1:{taken.getsockname()[1]}", token_file=str(token))
        r = subprocess.run([str(BIN / "runnerd"), "--config", str(config)], capture_output=True, text=True,
                           timeout=20, env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)})
    assert r.returncode == 2 and "cannot listen" in r.stderr
    assert not (tmp_path / "run" / "runnerd.sock").exists()
    assert not any(p.name() == "runnerd" for p in psutil.Process().children(recursive=True))


@pytest.mark.timeout(30)
def test_no_token_input_or_event_content_in_the_log(tcp_daemon: tuple[Daemon, int]) -> None:
    d, port = tcp_daemon
    base = f"http://127.0.0.1:{port}"
    secret = "SECRET-INPUT-7f3a9c"
    r = httpx.post(base + "/v1/turns", json={"agent": "count", "input": {"n": 2, "secret": secret}},
                   headers={"authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 201
    assert httpx.get(base + "/v1/health", headers={"authorization": "Bearer WRONG-TOKEN-91b2"}).status_code == 401
    with d.http() as c:
        wait_for(lambda: c.get(f"/v1/turns/{r.json()['turn_id']}").json()["status"] == "succeeded", 20)
        c.post("/v1/turns", json={"agent": "count", "input": {"n": "x" + secret}})  # a failing one too
    log = d.log.read_text()
    assert r.json()["turn_id"] in log  # the log does name turns...
    assert TOKEN not in log and "WRONG-TOKEN-91b2" not in log and secret not in log  # ...never secrets


@pytest.mark.timeout(30)
def test_a_bad_query_parameter_is_refused_even_when_a_header_wins(daemon: Daemon) -> None:
    """Found by schemathesis: with Last-Event-ID present, a garbage ?after= was ignored."""
    with daemon.http() as c:
        tid = c.post("/v1/turns", json={"agent": "count", "input": {"n": 1}}).json()["turn_id"]
        wait_for(lambda: c.get(f"/v1/turns/{tid}").json()["status"] == "succeeded", 20)
        r = c.get(f"/v1/turns/{tid}/events", params={"after": "x"}, headers={"Last-Event-ID": "0"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"
        r = c.get(f"/v1/turns/{tid}/export", params=[("limit", "1"), ("limit", "2")])
        assert r.status_code == 400 and "more than once" in r.json()["error"]["message"]
        assert c.get(f"/v1/turns/{tid}/events", params={"after": "1"},
                     headers={"Last-Event-ID": "2"}).text.count("id: ") == 1  # the header wins


@pytest.mark.timeout(30)
def test_a_refused_small_body_is_read_before_the_answer(tcp_daemon: tuple[Daemon, int]) -> None:
    """Found by schemathesis: a 415 sent before the body arrived, then a close on unread
    bytes, reset the connection and the client lost the answer."""
    import select
    d, port = tcp_daemon
    body = b'{"agent": "count"}' * 100
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"POST /v1/turns HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAuthorization: Bearer %s\r\n"
                  b"Content-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % (port, TOKEN.encode(), len(body)))
        poller = select.poll()
        poller.register(s, select.POLLIN | select.POLLRDHUP)
        assert poller.poll(500) == []  # no answer (and no close) while the body is outstanding
        s.sendall(body)
        status, headers, answer = _json_error(_read_all(s))
    assert status == 415 and answer["error"]["code"] == "unsupported_media_type"  # type: ignore[index]


def test_the_names_a_listener_answers_to() -> None:
    from supervisor.server.access import listener_hosts
    assert listener_hosts("127.0.0.1", 8765, loopback=True) == {"127.0.0.1:8765", "localhost:8765"}
    assert listener_hosts("localhost", 80, loopback=True) == {"127.0.0.1:80", "localhost:80"}
    assert listener_hosts("::1", 81, loopback=True, extra=["Runnerd.LAN"]) == {
        "[::1]:81", "localhost:81", "runnerd.lan:81"}
    assert listener_hosts("10.0.0.5", 90, loopback=False) == {"10.0.0.5:90"}  # no "localhost" off loopback


def test_the_tcp_cap_leaves_descriptors_for_turns() -> None:
    from supervisor.server.connections import tcp_connection_cap
    assert tcp_connection_cap(1 << 20, 32, 1024) == 1024  # the configured cap when descriptors abound
    assert tcp_connection_cap(1024, 32, 1024) == (1024 - 64 - 8 * 32) // 2
    assert tcp_connection_cap(256, 32, 1024) == 4  # never zero: the daemon stays reachable over TCP
