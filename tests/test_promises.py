"""Documented promises without a home elsewhere: one test each (docs/RELIABILITY.md maps them)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import make_config, wait_for
from daemon_fixture import BIN, child_env, start_daemon, stopped, write_config

from supervisor.config import LimitsConfig, RetentionConfig
from supervisor.embedded import Supervisor
from supervisor.turns import TurnStatus

SECRET = "s3cr3t-VALUE-7f1e"
TOKEN = "tok-0123456789abcdef-XYZ"


# -- the daemon: logs, body cap ------------------------------------------------------------

@pytest.mark.timeout(60)
def test_no_secret_reaches_the_daemons_log(tmp_path: Path) -> None:
    """Inputs, results, event contents, agent output and the token stay out of the log."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for d in stopped(start_daemon(tmp_path, tcp=f"127.0.0.1:{port}", token_file=str(token_file))):
        with d.http() as c:
            for agent in ("secretive", "fail"):
                turn = c.post("/v1/turns", json={"agent": agent, "input": {"key": SECRET}}).json()
                body = c.get(f"/v1/turns/{turn['turn_id']}/events").text
            assert SECRET in body or agent == "fail"
            c.post("/v1/turns", json={"agent": "nope", "input": SECRET})  # refused: 404
            c.post("/v1/turns", content=b'{"agent": "' + SECRET.encode())  # malformed: 400
        httpx.get(f"http://127.0.0.1:{port}/v1/health", headers={"authorization": f"Bearer {TOKEN}x"})
        assert d.stop() == 0
    log = d.log.read_text()
    assert "turn_ended" in log  # the log is the daemon's real log
    assert SECRET not in log and TOKEN not in log


@pytest.mark.timeout(60)
def test_the_body_cap_holds_for_a_chunked_body(tmp_path: Path) -> None:
    """No Content-Length to check up front: the cap is enforced while reading."""
    for d in stopped(start_daemon(tmp_path, max_body_bytes=4096)):
        def chunks() -> Iterator[bytes]:
            yield b'{"agent": "count", "input": {"n": 1, "pad": "'
            for _ in range(64):
                yield b"x" * 1024
            yield b'"}}'

        with d.http() as c:
            r = c.post("/v1/turns", content=chunks(), headers={"content-type": "application/json"})
            assert r.request.headers.get("transfer-encoding") == "chunked"
            assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
            small = c.post("/v1/turns", content=iter([b'{"agent": "count", ', b'"input": {"n": 1}}']),
                           headers={"content-type": "application/json"})
            assert small.status_code == 201  # a chunked body under the cap is fine
            assert len(c.get("/v1/turns").json()["turns"]) == 1  # the refused one changed nothing


def test_503_while_shutting_down() -> None:
    """Once shutdown began (the daemon closes its stream set first), every request gets 503."""
    from supervisor.server.http import create_app
    from supervisor.server.sse import StreamSet

    async def ask(app: object) -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://runnerd") as c:
            return [await c.get("/v1/health"), await c.post("/v1/turns", json={"agent": "nope"}),
                    await c.get("/v1/agents")]

    import tempfile
    with tempfile.TemporaryDirectory() as tmp, Supervisor(make_config(Path(tmp))) as sup:
        streams = StreamSet()
        app = create_app(sup, streams=streams)
        assert [r.status_code for r in asyncio.run(ask(app))] == [200, 404, 200]
        streams.close_all()
        answers = asyncio.run(ask(app))
        assert [r.status_code for r in answers] == [503, 503, 503]
        assert all(r.json()["error"]["code"] == "shutting_down" for r in answers)
        assert sup.list_turns() == []


def test_tcp_connections_drop_half_open_peers() -> None:
    """Accepted TCP connections inherit keepalive probes and TCP_USER_TIMEOUT."""
    from supervisor.config import ServerConfig
    from supervisor.server.daemon import bind_tcp
    listener, _ = bind_tcp(ServerConfig(tcp="127.0.0.1:0", tcp_insecure_loopback=True))
    with listener, socket.create_connection(listener.getsockname()) as client:
        conn, _ = listener.accept()
        with conn:
            opt = conn.getsockopt
            assert opt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            idle, intvl, cnt = (opt(socket.IPPROTO_TCP, o) for o in
                                (socket.TCP_KEEPIDLE, socket.TCP_KEEPINTVL, socket.TCP_KEEPCNT))
            assert idle + intvl * cnt <= 120  # a dead peer is found within two minutes
            assert 0 < opt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) <= 120_000
        client.close()


# -- the runtime -------------------------------------------------------------------------

@pytest.mark.timeout(40)
def test_the_memory_limit_counts_the_whole_tree(tmp_path: Path) -> None:
    """Four processes of 80 MiB each: none alone reaches 200 MiB, together they do."""
    limits = LimitsConfig(memory_bytes=200 << 20)  # the shipped poll_s: the sum is reached and held
    with Supervisor(make_config(tmp_path, limits=limits)) as sup:
        turn = sup.start_turn("memory_hog", {"children": 3, "each_mib": 80, "chunk_mib": 16, "pause": 0.01})
        info = sup.wait(turn.turn_id, 30)
    assert info.status is TurnStatus.FAILED and info.error is not None, info
    assert info.error.code == "memory_limit" and "limits.memory_bytes 200 MiB" in info.error.message


@pytest.mark.timeout(30)
def test_a_lifecycle_event_written_to_the_pipe_ends_the_turn_crashed(sup: Supervisor) -> None:
    turn = sup.start_turn("lifecycle_on_pipe")
    info = sup.wait(turn.turn_id, 20)
    assert info.status is TurnStatus.FAILED and info.error is not None
    assert info.error.code == "crashed", info.error
    events = [e for _, e in sup.events(turn.turn_id)]
    assert [type(e).__name__ for e in events] == ["RunStarted", "Custom", "RunError"]  # not its RUN_FINISHED


@pytest.mark.timeout(30)
def test_metadata_is_rebuilt_from_the_log_and_compaction_runs_at_start_up(tmp_path: Path) -> None:
    config = make_config(tmp_path, compact_finished=False)
    with Supervisor(config) as sup:
        kept = sup.start_turn("count", {"n": 5})
        lost_meta = sup.start_turn("result_value", {"x": 1})
        for t in (kept, lost_meta):
            sup.wait(t.turn_id, 10)
        logdir = sup.event_store.dir
    assert not list(logdir.glob("*.compact.jsonl"))
    (logdir / f"{lost_meta.turn_id}.meta.json").unlink()
    with Supervisor(make_config(tmp_path)) as sup:
        info = sup.status(lost_meta.turn_id)  # from its log alone
        assert info.status is TurnStatus.SUCCEEDED and info.last_seq == 2  # RUN_STARTED, RUN_FINISHED
        wait_for(lambda: all(sup.status(t.turn_id).compaction == "done" for t in (kept, lost_meta)))
        assert (logdir / f"{kept.turn_id}.compact.jsonl").exists()
        assert [s for s, _ in sup.events(kept.turn_id)] == list(range(1, 8))


def _finished(sup: Supervisor, n: int, pad: int = 0) -> list[str]:
    ids = []
    for _ in range(n):
        turn = sup.start_turn("count", {"n": 20, "pad": pad})
        sup.wait(turn.turn_id, 10)
        ids.append(turn.turn_id)
    return ids


@pytest.mark.timeout(30)
def test_retention_by_age(tmp_path: Path) -> None:
    with Supervisor(make_config(tmp_path, retention=RetentionConfig(max_age_s=1.0))) as sup:
        old = _finished(sup, 2)
        info = sup.status(old[-1])
        wait_for(lambda: time.time() - (info.ended_at or 0) > 1.0, 5)
        young = _finished(sup, 1)
        report = sup.prune()
        assert sorted(report.removed) == sorted(old)
        assert [t.turn_id for t in sup.list_turns()] == young


@pytest.mark.timeout(30)
def test_retention_by_bytes_removes_the_oldest_first(tmp_path: Path) -> None:
    with Supervisor(make_config(tmp_path, compact_finished=False)) as sup:
        ids = _finished(sup, 4, pad=1000)  # ~20 KiB each
        size = sum(f.stat().st_size for f in sup.event_store.dir.glob(f"{ids[0]}.*"))
    with Supervisor(make_config(tmp_path, compact_finished=False,
                                retention=RetentionConfig(max_bytes=int(size * 2.5)))) as sup:
        report = sup.prune()
        assert report.removed == ids[:2]
        assert [t.turn_id for t in sup.list_turns()] == ids[:1:-1]


@pytest.mark.timeout(30)
def test_retention_runs_on_its_timer(tmp_path: Path) -> None:
    with Supervisor(make_config(tmp_path, retention=RetentionConfig(max_turns=1, interval_s=0.2))) as sup:
        ids = _finished(sup, 3)
        wait_for(lambda: [t.turn_id for t in sup.list_turns()] == ids[-1:], 10)  # nobody called prune


# -- configuration and the CLI -------------------------------------------------------------

def test_etc_runnerd_toml_is_the_default_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from supervisor.server import daemon
    default = tmp_path / "etc" / "runnerd.toml"
    monkeypatch.setattr(daemon, "DEFAULT_CONFIG", str(default))
    assert daemon.resolve_config(None).state_dir != str(tmp_path / "state")  # absent: built-in defaults
    default.parent.mkdir()
    default.write_text(write_config(tmp_path).read_text())
    assert daemon.resolve_config(None).state_dir == str(tmp_path / "state")  # present: used
    (tmp_path / "other").mkdir()
    other = write_config(tmp_path / "other")
    assert daemon.resolve_config(str(other)).state_dir == str(tmp_path / "other" / "state")  # --config wins
    assert daemon.DEFAULT_CONFIG != "/etc/runnerd/runnerd.toml" and \
        "/etc/runnerd/runnerd.toml" in Path(daemon.__file__).read_text()


@pytest.mark.timeout(60)
def test_runnerctl_serve_runs_the_daemon_in_the_foreground(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    sock = str(tmp_path / "serve.sock")
    proc = subprocess.Popen([str(BIN / "runnerctl"), "--socket", sock, "serve", "--config", str(config)],
                            env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        def healthy() -> bool:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
            try:
                with httpx.Client(transport=httpx.HTTPTransport(uds=sock), base_url="http://runnerd") as c:
                    return c.get("/v1/health").status_code == 200
            except (httpx.TransportError, FileNotFoundError):
                return False

        wait_for(healthy, 20, 0.05)
        r = subprocess.run([str(BIN / "runnerctl"), "--socket", sock, "start", "count", "--input", '{"n": 2}',
                            "--follow"], capture_output=True, text=True, timeout=30, env=child_env())
        assert r.returncode == 0 and json.loads(r.stdout.splitlines()[-1])["type"] == "RUN_FINISHED"
        assert (tmp_path / "state" / "turns").is_dir()  # its --config was used
    finally:
        proc.terminate()
        assert proc.wait(20) == 0
    assert not os.path.exists(sock)


@pytest.mark.timeout(90)
def test_runnerctl_demo_starts_a_daemon_streams_the_demo_and_says_how_to_stop_it(tmp_path: Path) -> None:
    env = child_env({"XDG_RUNTIME_DIR": str(tmp_path / "run"), "XDG_STATE_HOME": str(tmp_path / "state"),
                     "HOME": str(tmp_path)})
    for name in ("RUNTIME_DIRECTORY", "STATE_DIRECTORY", "RUNNERD_SOCKET", "RUNNERD_URL"):
        env.pop(name, None)
    (tmp_path / "run").mkdir()
    r = subprocess.run([str(BIN / "runnerctl"), "--no-json", "demo"], capture_output=True, text=True,
                       timeout=80, env=env, cwd=tmp_path)
    started = r.stderr.split("runnerd is running in the background (pid ", 1)
    pid = int(started[1].split(")", 1)[0]) if len(started) == 2 else None
    try:
        assert r.returncode == 0, r.stderr
        assert "assistant: runnerd runs each agent turn" in r.stdout and "[run] finished: success" in r.stdout
        summary = r.stderr.split("export of turn ", 1)[1].splitlines()
        assert ": succeeded," in summary[0], summary[0]
        assert any(line.split() == ["RUN_FINISHED", "1"] for line in summary)  # AG-UI type names
        assert "stop it with: runnerctl shutdown" in r.stderr
        assert (tmp_path / "run" / "runnerd" / "runnerd.sock").exists()  # the default socket
        assert (tmp_path / "state" / "runnerd" / "turns").is_dir()  # the default state dir
        assert pid is not None
        stop = subprocess.run([str(BIN / "runnerctl"), "shutdown"], capture_output=True, text=True, timeout=60,
                              env=env, cwd=tmp_path)
        assert stop.returncode == 0, stop.stderr
        wait_for(lambda: not _alive(pid), 20)  # the way the demo says stops it
    finally:
        if pid is not None and _alive(pid):
            os.kill(pid, 15)
            wait_for(lambda: not _alive(pid), 20)
        if pid is not None:  # the detached daemon was re-parented to us (a subreaper): reap it
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass  # not ours, or reaped already


def _alive(pid: int) -> bool:
    import psutil
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
