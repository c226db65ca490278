"""runnerd end to end over its Unix socket: HTTP API, SSE, bad input, shutdown."""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import turn_processes, wait_for
from daemon_fixture import Daemon, start_daemon, stopped


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    yield from stopped(start_daemon(tmp_path))


def _sse_events(text: str) -> list[tuple[int, dict[str, object]]]:
    out = []
    for frame in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in frame.splitlines() if line and not line.startswith(":"))
        if "id" in fields:
            out.append((int(fields["id"]), json.loads(fields["data"])))
    return out


def _start(c: httpx.Client, agent: str, input: object = None, **kw: object) -> dict[str, object]:
    r = c.post("/v1/turns", json={"agent": agent, "input": input, **kw})
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


@pytest.mark.timeout(30)
def test_socket_is_0660_and_health_answers(daemon: Daemon) -> None:
    assert stat.S_IMODE(os.stat(daemon.socket).st_mode) == 0o660
    with daemon.http() as c:
        health = c.get("/v1/health").json()
        assert {k: health[k] for k in ("status", "running", "open_streams")} == {
            "status": "ok", "running": 0, "open_streams": 0}
        assert health["containment"]["mode"] in ("cgroup-v2", "cgroup-v1", "polling")
        assert {"name": "demo"} in c.get("/v1/agents").json()["agents"]


@pytest.mark.timeout(30)
def test_sse_streams_a_turn_and_closes_after_the_terminal_event(daemon: Daemon) -> None:
    with daemon.http() as c:
        turn = _start(c, "count", {"n": 200})
        r = c.get(f"/v1/turns/{turn['turn_id']}/events")
        assert r.headers["content-type"].startswith("text/event-stream")
        events = _sse_events(r.text)
        assert [s for s, _ in events] == list(range(1, 203))
        assert all(e["seq"] == s for s, e in events)
        assert events[-1][1]["type"] == "RUN_FINISHED"
        info = c.get(f"/v1/turns/{turn['turn_id']}").json()
        assert info["status"] == "succeeded" and info["last_seq"] == 202


@pytest.mark.timeout(30)
def test_sse_resumed_mid_stream_with_last_event_id_gets_exactly_the_rest(daemon: Daemon) -> None:
    with daemon.http() as c:
        turn = _start(c, "paced", {"n": 300, "interval": 0.002})
        url = f"/v1/turns/{turn['turn_id']}/events"
        seen: list[int] = []
        with c.stream("GET", url) as r:  # drop the connection after 100 events
            buf = ""
            for chunk in r.iter_text():
                buf += chunk
                *frames, buf = buf.split("\n\n")
                seen += [s for s, _ in _sse_events("\n\n".join(frames))]
                if len(seen) >= 100:
                    break
        rest = _sse_events(c.get(url, headers={"Last-Event-ID": str(seen[-1])}).text)
        assert seen + [s for s, _ in rest] == list(range(1, 303))
        again = _sse_events(c.get(url + "?after=250").text)  # ?after= is the same cursor
        assert [s for s, _ in again] == list(range(251, 303))


@pytest.mark.timeout(60)
def test_export_answers_at_once_while_50_streams_are_open(daemon: Daemon) -> None:
    with daemon.http() as c:
        turn = _start(c, "paced", {"n": 4000, "interval": 0.002})
        url = f"/v1/turns/{turn['turn_id']}/events"
        opened = threading.Barrier(51)
        stop = threading.Event()

        def reader() -> None:
            with daemon.http(30) as rc, rc.stream("GET", url) as r:
                opened.wait(10)
                for _ in r.iter_bytes():
                    if stop.is_set():
                        return

        threads = [threading.Thread(target=reader) for _ in range(50)]
        for t in threads:
            t.start()
        opened.wait(20)
        wait_for(lambda: c.get("/v1/health").json()["open_streams"] == 50)
        for _ in range(10):  # the export never waits on the streams, nor on the running turn
            page = c.get(f"/v1/turns/{turn['turn_id']}/export", params={"limit": 50}).json()
            assert page["returned"] == 50 and page["turn"]["status"] == "running"
        stop.set()
        c.post(f"/v1/turns/{turn['turn_id']}/cancel", json={})
        for t in threads:
            t.join(20)
        wait_for(lambda: c.get("/v1/health").json()["open_streams"] == 0)


@pytest.mark.timeout(30)
def test_a_client_disconnecting_mid_stream_leaves_the_daemon_serving(daemon: Daemon) -> None:
    with daemon.http() as c:
        turn = _start(c, "sleep", {"seconds": 30})
        for _ in range(5):
            with c.stream("GET", f"/v1/turns/{turn['turn_id']}/events") as r:
                next(r.iter_bytes())
        wait_for(lambda: c.get("/v1/health").json()["open_streams"] == 0)
        answer = c.post(f"/v1/turns/{turn['turn_id']}/cancel", json={"reason": "done"})
        # A running turn: cancelled from the event loop, the answer after the relay recorded it.
        assert answer.status_code == 202
        assert answer.json()["cancel_requested"] is True and answer.json()["cancel_reason"] == "done"
        r = c.get(f"/v1/turns/{turn['turn_id']}/events")
        assert _sse_events(r.text)[-1][1]["outcome"] == {"type": "cancelled"}


@pytest.mark.timeout(30)
def test_metrics(daemon: Daemon) -> None:
    with daemon.http() as c:
        turn = _start(c, "count", {"n": 10})
        c.get(f"/v1/turns/{turn['turn_id']}/events")
        text = c.get("/metrics").text
        assert 'runnerd_turns{status="succeeded"} 1' in text
        assert "runnerd_events_relayed_total 12" in text
        assert "runnerd_open_streams 0" in text
        assert "runnerd_relay_lag_seconds" in text


def _metric(c: httpx.Client, name: str) -> float:
    for line in c.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


# -- bad input ------------------------------------------------------------------

JSON = {"content-type": "application/json"}

@pytest.mark.timeout(30)
def test_bad_requests_get_the_right_status_and_a_json_error(daemon: Daemon) -> None:
    with daemon.http() as c:
        done = _start(c, "count", {"n": 1})
        tid = done["turn_id"]
        c.get(f"/v1/turns/{tid}/events")
        unknown = "01M80G34PMMFJ1N1BN5GV52C57"
        cases = [
            (c.post("/v1/turns", content=b'{"agent": ', headers=JSON), 400, "invalid_request"),
            (c.post("/v1/turns", content=b'{"agent": "count"}'), 415, "unsupported_media_type"),
            (c.post("/v1/turns", json={"agent": 5}), 400, "invalid_request"),
            (c.post("/v1/turns", json={"agent": "count", "extra": 1}), 400, "invalid_request"),
            (c.post("/v1/turns", json={"agent": "count", "timeout_s": "x"}), 400, "invalid_request"),
            (c.post("/v1/turns", json={"agent": "count", "timeout_s": -1}), 400, "invalid_request"),
            (c.post("/v1/turns", content=b"x" * (2 << 20), headers=JSON), 413, "body_too_large"),
            (c.post("/v1/turns", json={"agent": "count", "session_id": "../x"}), 400, "invalid_session_id"),
            (c.post("/v1/turns", json={"agent": "nope"}), 404, "unknown_agent"),
            (c.post("/v1/turns", json={"agent": "os.path:join"}), 404, "unknown_agent"),
            (c.get("/v1/turns/not-an-id"), 400, "invalid_turn_id"),
            (c.get(f"/v1/turns/{'A' * 300}/export"), 400, "invalid_turn_id"),
            (c.get(f"/v1/turns/{unknown}"), 404, "unknown_turn"),
            (c.get(f"/v1/turns/{unknown}/events"), 404, "unknown_turn"),
            (c.post(f"/v1/turns/{unknown}/cancel", json={}), 404, "unknown_turn"),
            (c.get(f"/v1/turns/{tid}/events", headers={"Last-Event-ID": "abc"}), 400, "invalid_request"),
            (c.get(f"/v1/turns/{tid}/events", headers={"Last-Event-ID": "4"}), 400, "invalid_cursor"),
            (c.get(f"/v1/turns/{tid}/export", params={"limit": "-1"}), 400, "invalid_request"),
            (c.get(f"/v1/turns/{tid}/export", params={"after": "9"}), 400, "invalid_cursor"),
            (c.get("/v1/turns", params={"status": "bogus"}), 400, "invalid_request"),
            (c.get("/v1/nope"), 404, "not_found"),
            (c.delete("/v1/turns"), 405, "method_not_allowed"),
            (c.get("/v1/health", headers={"x-big": "a" * 20_000}), 431, "headers_too_large"),
            (c.get("/v1/turns", params={"session_id": "s" * 20_000}), 431, "headers_too_large"),
        ]
        for response, status, code in cases:
            assert response.status_code == status, (response.request.url, response.text)
            assert response.json()["error"]["code"] == code, response.text
            assert response.json()["error"]["message"]
        assert [t["turn_id"] for t in c.get("/v1/turns").json()["turns"]] == [tid]  # nothing else changed
        r = c.post(f"/v1/turns/{tid}/cancel", json={})  # a finished turn: no-op, its final status
        assert r.status_code == 202 and r.json()["status"] == "succeeded"
        assert c.get("/v1/health").status_code == 200


@pytest.mark.timeout(30)
def test_session_busy_is_409_naming_the_active_turn(daemon: Daemon) -> None:
    with daemon.http() as c:
        first = _start(c, "sleep", {"seconds": 30}, session_id="chat-7")
        r = c.post("/v1/turns", json={"agent": "count", "input": {"n": 1}, "session_id": "chat-7"})
        assert r.status_code == 409
        assert r.json()["error"]["code"] == "session_busy"
        assert r.json()["error"]["active_turn_id"] == first["turn_id"]
        c.post(f"/v1/turns/{first['turn_id']}/cancel", json={})


# -- shutdown and systemd ----------------------------------------------------------

@pytest.mark.timeout(60)
def test_sigterm_ends_open_streams_with_a_shutdown_frame_and_exits_0(tmp_path: Path) -> None:
    d = start_daemon(tmp_path, shutdown_timeout_s=8.0)
    with d.http() as c:
        turns = [_start(c, "ignore_sigterm") for _ in range(3)]
    bodies: list[bytes] = [b""] * 6

    def reader(i: int) -> None:
        with d.http(30) as rc, rc.stream("GET", f"/v1/turns/{turns[i % 3]['turn_id']}/events") as r:
            for chunk in r.iter_bytes():
                bodies[i] += chunk

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    with d.http() as c:
        wait_for(lambda: c.get("/v1/health").json()["open_streams"] == 6)
    assert d.stop(timeout=15) == 0
    for t in threads:
        t.join(10)
    for body in bodies:
        assert body.endswith(b'event: shutdown\ndata: {"reason":"runnerd is shutting down"}\n\n'), body[-200:]
    assert not os.path.exists(d.socket)
    assert turn_processes() == []
    # The turns were cancelled (escalated to SIGKILL) and say so after a restart.
    d2 = start_daemon(tmp_path)
    try:
        with d2.http() as c:
            for turn in turns:
                assert c.get(f"/v1/turns/{turn['turn_id']}").json()["status"] == "cancelled"
    finally:
        assert d2.stop() == 0


@pytest.mark.timeout(30)
def test_sd_notify_ready_status_watchdog_stopping(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    d = start_daemon(tmp_path, extra_env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})
    messages: list[str] = []

    def until(prefix: str) -> None:
        while not any(m.startswith(prefix) or f"\n{prefix}" in m for m in messages):
            messages.append(sock.recv(4096).decode())

    try:
        until("READY=1")
        until("WATCHDOG=1")
        assert any("STATUS=" in m for m in messages)
        assert d.stop() == 0
        until("STOPPING=1")
    finally:
        sock.close()
        if d.proc.poll() is None:
            d.proc.kill()
    ready = next(m for m in messages if "READY=1" in m)
    assert "STATUS=serving on" in ready


@pytest.mark.timeout(30)
def test_a_second_daemon_on_the_same_socket_refuses_to_start(daemon: Daemon, tmp_path: Path) -> None:
    import subprocess

    from daemon_fixture import BIN
    r = subprocess.run([str(BIN / "runnerd"), "--config", str(daemon.config)], capture_output=True,
                       text=True, timeout=20, env=daemon.env)
    assert r.returncode == 2
    assert "another runnerd is already listening" in r.stderr
    with daemon.http() as c:
        assert c.get("/v1/health").status_code == 200


@pytest.mark.timeout(30)
def test_tcp_off_loopback_needs_a_token(tmp_path: Path) -> None:
    import subprocess

    from daemon_fixture import BIN, child_env, write_config
    config = write_config(tmp_path, tcp="0.0.0.0:0")
    r = subprocess.run([str(BIN / "runnerd"), "--config", str(config)], capture_output=True, text=True,
                       timeout=20, env=child_env())
    assert r.returncode == 2 and "without server.token_file" in r.stderr


@pytest.mark.timeout(30)
def test_tcp_with_a_token_requires_the_bearer(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = tmp_path / "token"
    token.write_text("s3cret-token-0123456789\n")
    d = start_daemon(tmp_path, tcp=f"127.0.0.1:{port}", token_file=str(token))
    try:
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(base + "/v1/health").status_code == 401
        assert httpx.get(f"http://localhost:{port}/v1/health").status_code == 401  # a name of the listener
        assert httpx.get(base + "/v1/health", headers={"authorization": "Bearer wrong"}).status_code == 401
        ok = httpx.get(base + "/v1/health", headers={"authorization": "Bearer s3cret-token-0123456789"})
        assert ok.status_code == 200
        with d.http() as c:  # the unix socket is guarded by its file mode instead
            assert c.get("/v1/health").status_code == 200
        from supervisor.control.client import Client
        from supervisor.errors import RunnerdError
        with Client(url=base, token="s3cret-token-0123456789") as client:
            turn = client.start_turn("count", {"n": 2})
            assert [s for s, _ in client.events(turn.turn_id)] == [1, 2, 3, 4]
        with Client(url=base, token="wrong-token-xxxxxxxx") as client, pytest.raises(RunnerdError) as err:
            client.list_turns()
        assert err.value.code == "unauthorized"
    finally:
        assert d.stop() == 0


@pytest.mark.timeout(30)
def test_keepalive_comments_on_an_idle_stream(tmp_path: Path) -> None:
    d = start_daemon(tmp_path, keepalive_s=0.1)
    try:
        with d.http() as c:
            turn = _start(c, "sleep", {"seconds": 30})
            wait_for(lambda: c.get(f"/v1/turns/{turn['turn_id']}").json()["last_seq"] >= 2)
            body = b""
            # A read timeout well above keepalive_s: without the comments the idle stream times out.
            with d.http(timeout=5) as rc, rc.stream("GET", f"/v1/turns/{turn['turn_id']}/events") as r:
                assert r.status_code == 200
                for chunk in r.iter_bytes():
                    body += chunk
                    if body.count(b": keep-alive\n\n") >= 2:
                        break
            c.post(f"/v1/turns/{turn['turn_id']}/cancel", json={})
    finally:
        assert d.stop() == 0
    # Both events came first, then the comments on the now idle stream, and nothing else.
    frames = body.split(b"\n\n")
    assert [s for s, _ in _sse_events(body.decode())] == [1, 2]
    assert frames[-3:] == [b": keep-alive", b": keep-alive", b""], frames


@pytest.mark.timeout(30)
def test_socket_activation_serves_on_the_inherited_socket(tmp_path: Path) -> None:
    import subprocess
    import sys

    from daemon_fixture import BIN, child_env, write_config
    path = str(tmp_path / "activated.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    config = write_config(tmp_path)
    # systemd hands the socket over as fd 3 with LISTEN_PID set to the daemon's own pid.
    launcher = ("import os, sys; os.dup2(int(sys.argv[1]), 3); os.environ['LISTEN_PID'] = str(os.getpid());"
                "os.environ['LISTEN_FDS'] = '1'; os.execv(sys.argv[2], sys.argv[2:])")
    env = child_env()
    proc = subprocess.Popen([sys.executable, "-c", launcher, str(listener.fileno()), str(BIN / "runnerd"),
                             "--config", str(config)], pass_fds=[listener.fileno()], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    listener.close()
    try:
        client = httpx.Client(transport=httpx.HTTPTransport(uds=path), base_url="http://runnerd")

        def healthy() -> bool:
            try:
                return client.get("/v1/health").status_code == 200
            except httpx.TransportError:
                return False

        wait_for(healthy, 20)
        assert not os.path.exists(tmp_path / "run" / "runnerd.sock")  # it bound nothing itself
        client.close()
    finally:
        proc.send_signal(15)
        assert proc.wait(20) == 0
    assert os.path.exists(path)  # an inherited socket is systemd's to remove


@pytest.mark.timeout(30)
def test_queue_full_is_429_and_queued_turns_show_their_position(tmp_path: Path) -> None:
    d = start_daemon(tmp_path, top={"max_running_turns": 1, "max_queued": 1})
    try:
        with d.http() as c:
            running = _start(c, "sleep", {"seconds": 30})
            queued = _start(c, "count", {"n": 1})
            assert queued["status"] == "queued" and queued["queue_position"] == 1
            r = c.post("/v1/turns", json={"agent": "count", "input": {"n": 1}})
            assert r.status_code == 429 and r.json()["error"]["code"] == "queue_full"
            r = c.post("/v1/turns", json={"agent": "count", "multitask": "sometimes"})
            assert r.status_code == 400 and "multitask" in r.json()["error"]["message"]
            c.post(f"/v1/turns/{running['turn_id']}/cancel", json={})
            body = c.get(f"/v1/turns/{queued['turn_id']}/events").text
            assert '"type":"RUN_FINISHED"' in body
    finally:
        assert d.stop() == 0


@pytest.mark.timeout(60)
def test_a_subscriber_that_stops_reading_is_dropped_without_slowing_others(tmp_path: Path) -> None:
    d = start_daemon(tmp_path, send_timeout_s=8.0)
    try:
        with d.http() as c:
            turn = _start(c, "count", {"n": 4000, "pad": 500})  # ~2.2 MB of events
            tid = turn["turn_id"]
            stalled = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            stalled.connect(d.socket)
            stalled.sendall(f"GET /v1/turns/{tid}/events HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            wait_for(lambda: c.get("/v1/health").json()["open_streams"] == 1)
            # ...and never reads. A well-behaved reader gets everything meanwhile,
            # while the stalled one is still attached: it did not wait for the drop.
            events = _sse_events(c.get(f"/v1/turns/{tid}/events", timeout=30).text)
            assert [s for s, _ in events] == list(range(1, 4003))
            dropped = lambda: (_metric(c, "runnerd_slow_consumers_dropped_total")  # noqa: E731
                               + _metric(c, "runnerd_send_aborted_total"))
            assert dropped() == 0 and c.get("/v1/health").json()["open_streams"] == 1
            # Dropped by the SSE writer's send timeout or by the connection's stalled-write cut,
            # whichever fires first; either way the stream ends while the client still holds it.
            wait_for(lambda: dropped() >= 1, 30)
            wait_for(lambda: c.get("/v1/health").json()["open_streams"] == 0)
            stalled.close()
            # It can come back with its cursor.
            rest = _sse_events(c.get(f"/v1/turns/{tid}/events", headers={"Last-Event-ID": "3990"}).text)
            assert [s for s, _ in rest] == list(range(3991, 4003))
    finally:
        assert d.stop() == 0
