"""Two real runnerd daemons on one real redis-server: any node serves any turn.

Each test starts its own redis-server on a Unix socket in its temp folder and
its own daemons; everything is stopped at teardown.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from conftest import turn_processes, wait_for
from daemon_fixture import BIN, Daemon, start_daemon, stopped, write_config
from redis_fixture import RedisServer, SentinelSet, needs_redis

pytestmark = needs_redis


class Nodes:
    """Daemons on one redis-server, started on demand (a turn runs where there is room:
    a test that needs it on A starts it before B exists); all stopped at teardown."""

    def __init__(self, tmp: Path, redis: RedisServer) -> None:
        self.tmp = tmp
        self.redis = redis
        self.daemons: list[Daemon] = []

    def add(self, name: str, top: dict[str, object] | None = None,
            retention: dict[str, object] | None = None, **cluster: object) -> Daemon:
        settings: dict[str, object] = {"redis_url": self.redis.url, "node_id": name, "key_prefix": "rt"}
        settings.update(cluster)
        (self.tmp / name).mkdir()
        d = start_daemon(self.tmp / name, cluster=settings, top=top, retention=retention)
        self.daemons.append(d)
        return d

    def stop_all(self) -> None:
        for d in reversed(self.daemons):
            gen = stopped(d)
            next(gen)
            next(gen, None)


@pytest.fixture
def nodes(tmp_path: Path, redis_server: RedisServer) -> Iterator[Nodes]:
    n = Nodes(tmp_path, redis_server)
    try:
        yield n
    finally:
        n.stop_all()


def sse(text: str) -> list[tuple[int, dict[str, object]]]:
    out = []
    for frame in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in frame.splitlines() if line and not line.startswith(":"))
        if "id" in fields:
            out.append((int(fields["id"]), json.loads(fields["data"])))
    return out


def start(c: httpx.Client, agent: str, input: object = None) -> str:
    r = c.post("/v1/turns", json={"agent": agent, "input": input})
    assert r.status_code == 201, r.text
    return str(r.json()["turn_id"])


@pytest.mark.timeout(120)
def test_a_turn_started_on_a_is_followed_resumed_exported_and_listed_on_b(nodes: Nodes) -> None:
    a = nodes.add("a")
    with a.http(30) as ca:
        tid = start(ca, "paced", {"n": 100000, "interval": 0.01})  # runs until cancelled
        wait_for(lambda: ca.get(f"/v1/turns/{tid}").json()["status"] == "running", 30, 0.05)
    b = nodes.add("b")
    with a.http(30) as ca, b.http(30) as cb:
        url = f"/v1/turns/{tid}/events"
        seen: list[int] = []
        stored = cb.get(f"/v1/turns/{tid}").json()["last_seq"]
        with cb.stream("GET", url) as r:  # on B: the stored events, 100 live ones, then the connection drops
            assert r.status_code == 200
            buf = ""
            for chunk in r.iter_text():
                buf += chunk
                *frames, buf = buf.split("\n\n")
                seen += [s for s, _ in sse("\n\n".join(frames))]
                if seen and seen[-1] >= stored + 100:
                    break
        last_seen = seen[-1]
        assert cb.get(f"/v1/turns/{tid}").json()["status"] == "running"
        assert cb.post(f"/v1/turns/{tid}/cancel").status_code == 202
        rest = sse(cb.get(url, headers={"Last-Event-ID": str(last_seen)}).text)  # resumed on B to the end
        total = seen + [s for s, _ in rest]
        assert total == list(range(1, len(total) + 1)) and len(rest) > 0  # no gap, no duplicate
        assert rest[-1][1]["type"] == "RUN_FINISHED" and rest[-1][1]["outcome"] == {"type": "cancelled"}
        n = len(total)
        on_a = ca.get(f"/v1/turns/{tid}/export?limit=10000").json()
        on_b = cb.get(f"/v1/turns/{tid}/export?limit=10000").json()
        assert on_b["events"] == on_a["events"] and on_b["total"] == n
        status = cb.get(f"/v1/turns/{tid}").json()
        assert status["status"] == "cancelled" and status["last_seq"] == n
        listed = {t["turn_id"]: t for t in cb.get("/v1/turns").json()["turns"]}
        assert listed[tid]["status"] == "cancelled"
        tid_b = start(cb, "count", {"n": 3})
        wait_for(lambda: ca.get(f"/v1/turns/{tid_b}").json()["status"] == "succeeded", 30, 0.05)
        assert [t["turn_id"] for t in ca.get("/v1/turns").json()["turns"]][:2] == [tid_b, tid]
        assert cb.get("/v1/turns/01ARZ3NDEKTSV4RRFFQ69G5FAV").status_code == 404


@pytest.mark.timeout(120)
def test_cancel_on_b_ends_a_turn_running_on_a_and_runnerctl_on_c_lists_it(nodes: Nodes) -> None:
    a = nodes.add("a")
    with a.http(30) as ca:
        tid = start(ca, "wait_forever")
        wait_for(lambda: ca.get(f"/v1/turns/{tid}").json()["status"] == "running", 30, 0.05)
    b = nodes.add("b")
    with a.http(30) as ca, b.http(30) as cb:
        wait_for(lambda: cb.get(f"/v1/turns/{tid}").json()["last_seq"] >= 7, 30, 0.05)
        running = [t["turn_id"] for t in cb.get("/v1/turns?status=running").json()["turns"]]
        assert tid in running  # B sees A's turn running (its record still says what A wrote at spawn)
        r = cb.post(f"/v1/turns/{tid}/cancel", json={"reason": "from b"})
        assert r.status_code == 202 and r.json()["cancel_requested"] is True
        events = sse(cb.get(f"/v1/turns/{tid}/events").text)  # follows on B until the end
        assert events[-1][1]["type"] == "RUN_FINISHED"
        assert events[-1][1]["outcome"] == {"type": "cancelled"}
        info = ca.get(f"/v1/turns/{tid}").json()
        assert info["status"] == "cancelled" and info["cancel_reason"] == "from b"
        wait_for(lambda: cb.get(f"/v1/turns/{tid}").json()["status"] == "cancelled", 30, 0.05)
    c = nodes.add("c")  # runnerctl against a third node
    assert tid in [t["turn_id"] for t in json.loads(c.ctl("list").stdout)]
    assert json.loads(c.ctl("status", tid).stdout)["status"] == "cancelled"
    exported = c.ctl("export", tid)
    assert exported.returncode == 0 and "RUN_FINISHED" in exported.stdout


@pytest.mark.timeout(120)
def test_sigkill_of_a_node_ends_its_running_turns_lost_on_the_survivor(nodes: Nodes) -> None:
    a = nodes.add("a", node_ttl_s=1.0)
    with a.http(30) as ca:
        tid = start(ca, "wait_forever")
        wait_for(lambda: ca.get(f"/v1/turns/{tid}").json()["last_seq"] >= 7, 30, 0.05)
    b = nodes.add("b", node_ttl_s=1.0)
    with b.http(30) as cb:
        orphans = psutil.Process(a.proc.pid).children(recursive=True)
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait(10)
        info = wait_for(lambda: (i := cb.get(f"/v1/turns/{tid}").json())["status"] == "lost" and i, 30, 0.05)
        assert isinstance(info, dict) and info["error"]["code"] == "lost" and info["last_seq"] == 8
        events = sse(cb.get(f"/v1/turns/{tid}/events").text)
        assert [s for s, _ in events] == list(range(1, 9))
        assert [e["type"] for _, e in events].count("RUN_ERROR") == 1
        assert events[-1][1]["code"] == "lost"
    for p in orphans:  # A's turn processes: a dead daemon cannot reap them (its host's recovery would)
        try:
            p.kill()
        except psutil.Error:
            pass
    wait_for(lambda: not turn_processes(), 10, 0.05)


@pytest.mark.timeout(120)
def refused(tmp: Path, cluster: dict[str, object], *, without_redis: bool = False) -> str:
    tmp.mkdir()
    config = write_config(tmp, cluster=cluster)
    path = [str(Path(__file__).parent)]
    if without_redis:  # an install without the runnerd[redis] extra
        (tmp / "shadow").mkdir()
        (tmp / "shadow" / "redis.py").write_text("raise ImportError(\"No module named 'redis'\")\n")
        path.insert(0, str(tmp / "shadow"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
    r = subprocess.run([str(BIN / "runnerd"), "--config", str(config)], capture_output=True, text=True,
                       timeout=60, env=env)
    assert r.returncode == 2, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.startswith("runnerd: ")]
    assert len(lines) == 1, r.stderr
    return lines[0]


@pytest.mark.timeout(120)
def test_bad_cluster_settings_stop_the_daemon_with_one_line(tmp_path: Path, redis_server: RedisServer,
                                                           nodes: Nodes) -> None:
    assert "redis_url must start with redis://" in refused(tmp_path / "1", {"redis_url": "http://x"})
    assert "a sentinel needs a host and a port" in refused(tmp_path / "6", {"redis_url": "redis+sentinel://h/m"})
    assert "absolute socket path" in refused(tmp_path / "2", {"redis_url": "unix://relative.sock"})
    gone = refused(tmp_path / "3", {"redis_url": f"unix://{tmp_path}/nothing.sock"})
    assert "cannot reach Redis" in gone
    bare = refused(tmp_path / "5", {"redis_url": redis_server.url}, without_redis=True)
    assert "pip install 'runnerd[redis]'" in bare
    a = nodes.add("a")
    twice = refused(tmp_path / "4", {"redis_url": redis_server.url, "node_id": "a", "key_prefix": "rt"})
    assert "node id 'a' is in use" in twice and "cluster.node_id" in twice
    with a.http() as c:
        assert c.get("/v1/health").status_code == 200  # the refused twin changed nothing


@pytest.mark.timeout(120)
def test_a_cancel_whose_message_was_missed_is_read_by_the_owner_before_it_launches(
        redis_server: RedisServer, nodes: Nodes) -> None:
    import redis

    a = nodes.add("a", top={"max_running_turns": 1})
    with a.http(30) as c:
        first = start(c, "wait_forever")
        queued = start(c, "count", {"n": 3})
        assert c.get(f"/v1/turns/{queued}").json()["status"] == "queued"
        # What another node's cancel leaves when its pub/sub message never arrives: the key alone.
        r = redis.Redis(unix_socket_path=redis_server.socket)
        r.set(f"rt:cancel:{{{queued}}}", "sent early")
        r.close()
        assert c.post(f"/v1/turns/{first}/cancel").status_code == 202  # frees the slot
        info = wait_for(lambda: (i := c.get(f"/v1/turns/{queued}").json())["status"] != "queued"
                        and i["status"] not in ("starting", "running") and i, 30, 0.05)
        assert isinstance(info, dict)
        assert info["status"] == "cancelled" and info["cancel_reason"] == "sent early"


@pytest.mark.timeout(120)
def test_health_and_metrics_show_the_node_and_the_cluster(nodes: Nodes) -> None:
    a = nodes.add("a")
    with a.http(30) as ca:
        tid = start(ca, "wait_forever")
        wait_for(lambda: ca.get(f"/v1/turns/{tid}").json()["status"] == "running", 30, 0.05)
    b = nodes.add("b")
    with a.http(30) as ca, b.http(30) as cb:
        health = cb.get("/v1/health").json()
        assert health["status"] == "ok" and health["running"] == 0  # B runs nothing itself
        assert health["cluster"]["node"] == "b" and health["cluster"]["nodes"] == 2
        assert health["cluster"]["running"] == 1 and health["cluster"]["queued"] == 0
        metrics = cb.get("/metrics").text
        assert 'runnerd_cluster_redis_up{node="b"} 1' in metrics and "runnerd_cluster_nodes 2" in metrics
        assert 'runnerd_cluster_turns{state="running"} 1' in metrics
        ca.post(f"/v1/turns/{tid}/cancel")
        wait_for(lambda: cb.get("/v1/health").json()["cluster"]["running"] == 0, 30, 0.05)


@pytest.mark.timeout(120)
def test_redis_gone_past_the_retry_window_ends_the_turn_storage_error_and_the_node_recovers(
        redis_server: RedisServer, nodes: Nodes) -> None:
    a = nodes.add("a", redis_retry_s=0.5)
    with a.http(30) as c:
        tid = start(c, "paced", {"n": 100000, "interval": 0.01})
        wait_for(lambda: c.get(f"/v1/turns/{tid}").json()["last_seq"] >= 5, 30, 0.05)
        redis_server.stop()
        info = wait_for(lambda: (i := c.get(f"/v1/turns/{tid}").json())["status"] == "failed" and i, 30, 0.05)
        assert isinstance(info, dict) and info["error"]["code"] == "storage_error"
        health = c.get("/v1/health")
        assert health.status_code == 503 and health.json()["cluster"]["redis"] == "unavailable"
        listed = c.get("/v1/turns")  # needs Redis: refused, not hung
        assert listed.status_code == 503 and listed.json()["error"]["code"] == "storage_unavailable"
        refused = c.post("/v1/turns", json={"agent": "count", "input": {"n": 1}})
        assert refused.status_code == 503
        wait_for(lambda: "cluster_turn_unsettled" in a.log.read_text(), 60, 0.05)  # Redis missed its end
        redis_server.start()  # empty: this test runs it without persistence
        wait_for(lambda: c.get("/v1/health").status_code == 200, 30, 0.05)
        import redis

        r = redis.Redis(unix_socket_path=redis_server.socket)
        try:  # the node writes again what it held in memory, and the ending Redis missed
            wait_for(lambda: r.hget(f"rt:turn:{{{tid}}}", "status") == b"failed", 30, 0.05)
            assert r.xlen(f"rt:ev:{{{tid}}}") == info["last_seq"]
        finally:
            r.close()
        assert c.get(f"/v1/turns/{tid}").json()["last_seq"] == info["last_seq"]
        again = start(c, "count", {"n": 3})
        wait_for(lambda: c.get(f"/v1/turns/{again}").json()["status"] == "succeeded", 30, 0.05)


@pytest.mark.timeout(180)
def test_a_node_paused_past_its_ttl_finds_its_turn_ended_lost_and_its_processes_killed(
        redis_server: RedisServer, nodes: Nodes) -> None:
    a = nodes.add("a", node_ttl_s=1.0)
    with a.http(30) as ca:
        tid = start(ca, "paced", {"n": 100000, "interval": 0.01})
        wait_for(lambda: ca.get(f"/v1/turns/{tid}").json()["status"] == "running", 30, 0.05)
    b = nodes.add("b", node_ttl_s=1.0)
    with a.http(30) as ca, b.http(30) as cb:
        wait_for(lambda: cb.get(f"/v1/turns/{tid}").json()["last_seq"] >= 5, 30, 0.05)
        a.proc.send_signal(signal.SIGSTOP)
        try:
            lost = wait_for(lambda: (i := cb.get(f"/v1/turns/{tid}").json())["status"] == "lost" and i, 30, 0.05)
        finally:
            a.proc.send_signal(signal.SIGCONT)
        assert isinstance(lost, dict)
        ended_at = lost["last_seq"]
        # A wakes up: its appends are refused, the turn's processes are killed.
        wait_for(lambda: ca.get(f"/v1/turns/{tid}").json()["status"] not in ("starting", "running"), 30, 0.05)
        wait_for(lambda: not turn_processes(), 30, 0.05)
        on_a = wait_for(lambda: (i := ca.get(f"/v1/turns/{tid}").json())["status"] == "lost" and i, 30, 0.05)
        assert isinstance(on_a, dict) and on_a["last_seq"] == ended_at, on_a  # A adopts the ending B wrote
        assert [s for s, _ in sse(ca.get(f"/v1/turns/{tid}/events").text)] == list(range(1, ended_at + 1))
        events = sse(cb.get(f"/v1/turns/{tid}/events").text)
        assert [s for s, _ in events] == list(range(1, ended_at + 1))  # nothing of A's after the ending
        assert events[-1][1]["type"] == "RUN_ERROR" and events[-1][1]["code"] == "lost"
        assert cb.get(f"/v1/turns/{tid}").json()["status"] == "lost"
        import redis

        r = redis.Redis(unix_socket_path=redis_server.socket)
        try:  # the stream itself, not only what readers are served up to the recorded last seq
            assert r.xlen(f"rt:ev:{{{tid}}}") == ended_at
        finally:
            r.close()
        wait_for(lambda: ca.get("/v1/health").json()["cluster"]["nodes"] == 2, 30, 0.05)  # A rejoined


def owner_running(d: Daemon) -> int:
    with d.http(30) as c:
        return int(c.get("/v1/health").json()["running"])


@pytest.mark.timeout(180)
def test_starts_on_any_node_run_where_there_is_room_in_fifo_order_and_the_queue_is_cluster_wide(
        nodes: Nodes) -> None:
    one_each = {"max_running_turns": 1, "max_queued": 2}
    a = nodes.add("a", top=one_each)
    b = nodes.add("b", top=one_each)
    with a.http(30) as ca, b.http(30) as cb:
        first = start(cb, "wait_forever")
        second = start(cb, "wait_forever")
        for tid in (first, second):
            wait_for(lambda: ca.get(f"/v1/turns/{tid}").json()["status"] == "running", 60, 0.05)
        assert owner_running(a) == 1 and owner_running(b) == 1  # each node took one: its limit
        third = start(ca, "count", {"n": 2})
        fourth = start(cb, "count", {"n": 2})
        assert cb.get(f"/v1/turns/{third}").json()["queue_position"] == 1
        assert ca.get(f"/v1/turns/{fourth}").json()["queue_position"] == 2
        full = ca.post("/v1/turns", json={"agent": "count", "input": {"n": 1}})
        assert full.status_code == 429 and full.json()["error"]["code"] == "queue_full"
        assert cb.post(f"/v1/turns/{first}/cancel").status_code == 202  # one slot frees somewhere
        # Wait for the owners' records (ended_at), not only the endings in the streams.
        third_info = wait_for(lambda: (i := ca.get(f"/v1/turns/{third}").json())["ended_at"] is not None
                              and i, 60, 0.05)
        fourth_info = wait_for(lambda: (i := ca.get(f"/v1/turns/{fourth}").json())["ended_at"] is not None
                               and i, 60, 0.05)
        assert isinstance(third_info, dict) and isinstance(fourth_info, dict)
        assert third_info["status"] == fourth_info["status"] == "succeeded"
        # One free slot (the second still runs): the fourth started after the third had ended.
        assert fourth_info["started_at"] >= third_info["ended_at"]
        ca.post(f"/v1/turns/{second}/cancel")


@pytest.mark.timeout(120)
def test_cancel_of_a_turn_no_node_has_taken_ends_it_at_once(nodes: Nodes) -> None:
    a = nodes.add("a", top={"max_running_turns": 1})
    b = nodes.add("b", top={"max_running_turns": 1})
    with a.http(30) as ca, b.http(30) as cb:
        busy = [start(ca, "wait_forever") for _ in range(2)]
        for tid in busy:
            wait_for(lambda: ca.get(f"/v1/turns/{tid}").json()["status"] == "running", 60, 0.05)
        queued = start(ca, "count", {"n": 2})
        r = cb.post(f"/v1/turns/{queued}/cancel", json={"reason": "changed my mind"})
        assert r.status_code == 202 and r.json()["status"] == "cancelled"
        events = sse(ca.get(f"/v1/turns/{queued}/events").text)
        assert [e["type"] for _, e in events] == ["RUN_STARTED", "RUN_FINISHED"]
        assert events[-1][1]["outcome"] == {"type": "cancelled"}
        for tid in busy:
            ca.post(f"/v1/turns/{tid}/cancel")
        for tid in busy:
            wait_for(lambda: ca.get(f"/v1/turns/{tid}").json()["status"] == "cancelled", 60, 0.05)
        assert ca.get(f"/v1/turns/{queued}").json()["status"] == "cancelled"  # nobody ran it after all


@pytest.mark.timeout(120)
def test_a_queue_entry_read_by_a_node_that_died_is_claimed_and_run_by_a_live_one(
        redis_server: RedisServer, nodes: Nodes) -> None:
    import redis

    a = nodes.add("a", top={"max_running_turns": 1}, node_ttl_s=1.0)
    with a.http(30) as c:
        busy = start(c, "wait_forever")
        wait_for(lambda: c.get(f"/v1/turns/{busy}").json()["status"] == "running", 60, 0.05)
        waiting = start(c, "count", {"n": 2})
        # A node "ghost" reads the entry and dies before taking it: its consumer keeps it pending.
        r = redis.Redis(unix_socket_path=redis_server.socket)
        try:
            r.sadd("rt:nodes", "ghost")
            got = r.xreadgroup("rt:nodes", "ghost", {"rt:dispatch": ">"}, count=1)
            assert got and got[0][1][0][1][b"turn"].decode() == waiting
        finally:
            r.close()
        c.post(f"/v1/turns/{busy}/cancel")  # A has room again, but ">" no longer holds the entry
        wait_for(lambda: c.get(f"/v1/turns/{waiting}").json()["status"] == "succeeded", 60, 0.05)


@pytest.mark.timeout(180)
def test_redis_restarted_within_the_retry_window_loses_no_event_of_a_running_turn(tmp_path: Path) -> None:
    from redis_fixture import REDIS_SERVER

    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path / "redis", aof=True).start()
    nodes = Nodes(tmp_path, server)
    try:
        a = nodes.add("a", redis_retry_s=30.0)
        with a.http(30) as c:
            tid = start(c, "paced", {"n": 1500, "interval": 0.01})
            wait_for(lambda: c.get(f"/v1/turns/{tid}").json()["last_seq"] >= 20, 30, 0.05)
            server.stop()  # AOF (appendfsync always): what Redis acknowledged survives
            server.start()
            info = wait_for(lambda: (i := c.get(f"/v1/turns/{tid}").json())["status"] not in
                            ("queued", "starting", "running") and i, 120, 0.1)
            assert isinstance(info, dict) and info["status"] == "succeeded", info
            events = sse(c.get(f"/v1/turns/{tid}/events").text)
            assert [s for s, _ in events] == list(range(1, 1503))  # nothing lost, nothing twice
    finally:
        nodes.stop_all()
        server.stop()


@pytest.mark.timeout(180)
def test_the_session_policy_holds_across_nodes(redis_server: RedisServer, nodes: Nodes) -> None:
    import redis

    a = nodes.add("a", top={"max_running_turns": 1})
    with a.http(30) as ca:
        first = ca.post("/v1/turns", json={"agent": "wait_forever", "session_id": "s1"}).json()["turn_id"]
        wait_for(lambda: ca.get(f"/v1/turns/{first}").json()["status"] == "running", 60, 0.05)
    b = nodes.add("b")  # has room; A has none
    with b.http(30) as cb:
        # reject (the default), on the other node: refused, naming the active turn
        r = cb.post("/v1/turns", json={"agent": "count", "input": {"n": 1}, "session_id": "s1"})
        assert r.status_code == 409 and r.json()["error"]["code"] == "session_busy", r.text
        assert first in r.text
        # enqueue: B takes the entry from the queue but holds it while the first runs on A
        second = cb.post("/v1/turns", json={"agent": "count", "input": {"n": 2}, "session_id": "s1",
                                            "multitask": "enqueue"}).json()["turn_id"]
        client = redis.Redis(unix_socket_path=redis_server.socket)
        try:
            def held_by_b() -> bool:
                pending = client.xpending_range("rt:dispatch", "rt:nodes", "-", "+", 10, consumername="b")
                return bool(pending)
            wait_for(held_by_b, 30, 0.05)
        finally:
            client.close()
        assert cb.get(f"/v1/turns/{second}").json()["status"] == "queued"
        # interrupt: the session's earlier turns are cancelled, it runs after them
        third = cb.post("/v1/turns", json={"agent": "count", "input": {"n": 3}, "session_id": "s1",
                                           "multitask": "interrupt"}).json()["turn_id"]
        ended = {}
        for tid in (first, second, third):  # the owner's record, not only the ending in the stream
            ended[tid] = wait_for(lambda: (i := cb.get(f"/v1/turns/{tid}").json())["ended_at"] is not None
                                  and i, 60, 0.05)
        assert ended[first]["status"] == "cancelled"  # type: ignore[index]
        assert ended[first]["cancel_reason"] == f"interrupted by turn {third}"  # type: ignore[index]
        assert ended[second]["status"] == "cancelled"  # queued behind it: interrupted too  # type: ignore[index]
        assert ended[third]["status"] == "succeeded"  # type: ignore[index]
        assert ended[third]["started_at"] >= ended[first]["ended_at"]  # type: ignore[index]


@pytest.mark.timeout(120)
def test_compaction_by_the_owner_and_raw_log_trimming_show_on_every_node(nodes: Nodes) -> None:
    a = nodes.add("a", retention={"keep_raw_s": 0.0, "interval_s": 0.3})
    with a.http(30) as ca:
        tid = start(ca, "demo", {"prompt": "hello there"})
        wait_for(lambda: ca.get(f"/v1/turns/{tid}").json()["raw_removed"], 60, 0.05)
    b = nodes.add("b")
    with a.http(30) as ca, b.http(30) as cb:
        on_a = ca.get(f"/v1/turns/{tid}/export?after=0&limit=1000").json()
        on_b = cb.get(f"/v1/turns/{tid}/export?after=0&limit=1000").json()
        assert on_b["compacted"] is True and on_b["events"] == on_a["events"]
        assert on_b["gap"]["form"] == "compacted" and on_b["gap"] == on_a["gap"]
        assert [e["type"] for e in on_b["events"]][-1] == "RUN_FINISHED"
        assert cb.get(f"/v1/turns/{tid}").json()["compaction"] == "done"


@pytest.mark.timeout(120)
def test_many_followers_of_a_remote_turn_share_one_redis_read(redis_server: RedisServer, nodes: Nodes) -> None:
    import contextlib

    import redis

    a = nodes.add("a")
    with a.http(30) as ca:
        tid = start(ca, "paced", {"n": 100000, "interval": 0.01})
        wait_for(lambda: ca.get(f"/v1/turns/{tid}").json()["status"] == "running", 30, 0.05)
    b = nodes.add("b")
    r = redis.Redis(unix_socket_path=redis_server.socket)
    try:
        with b.http(30) as cb, contextlib.ExitStack() as streams:
            cb.get(f"/v1/turns/{tid}")
            before = r.info("clients")["connected_clients"]
            stored = cb.get(f"/v1/turns/{tid}").json()["last_seq"]
            for _ in range(20):  # one after the other: each gets a live event before the next opens
                lines = streams.enter_context(cb.stream("GET", f"/v1/turns/{tid}/events?after={stored}"))
                for line in lines.iter_lines():
                    if line.startswith("data: "):
                        break
            during = r.info("clients")["connected_clients"]
            assert during - before <= 5, (before, during)  # not one per subscriber (20)
        with a.http(30) as ca:
            ca.post(f"/v1/turns/{tid}/cancel")
    finally:
        r.close()


def finish(c: httpx.Client, agent: str, input: object = None) -> str:
    """Start a turn and follow it to its end on the same node (its ending is then in Redis)."""
    tid = start(c, agent, input)
    events = sse(c.get(f"/v1/turns/{tid}/events").text)
    assert events[-1][1]["type"] == "RUN_FINISHED", events[-1]
    return tid


def gone_everywhere(r: object, tid: str) -> bool:
    """No key of the turn and no index entry naming it is left in Redis (prefix ``rt``)."""
    import redis

    assert isinstance(r, redis.Redis)
    indexes = [k for k in r.keys("rt:*") if r.type(k) in (b"set", b"zset")]
    named = [k for k in indexes if (r.sismember(k, tid) if r.type(k) == b"set" else r.zscore(k, tid) is not None)]
    expiring: list[bytes] = r.zrange("rt:expiry", 0, -1)  # type: ignore[assignment]
    return not r.keys(f"*{tid}*") and not named and not any(m.startswith(tid.encode()) for m in expiring)


@pytest.mark.timeout(120)
def test_a_turn_older_than_max_age_expires_in_redis_and_every_node_then_answers_404(
        redis_server: RedisServer, nodes: Nodes) -> None:
    import redis

    retention: dict[str, object] = {"max_age_s": 2.0, "interval_s": 3600.0}  # no periodic pass: only Redis's TTL can remove it
    a = nodes.add("a", retention=retention)
    with a.http(30) as ca:  # both run on A (B does not exist yet to take them)
        keep = start(ca, "wait_forever")  # unended: never expires
        tid = finish(ca, "count", {"n": 3})
    b = nodes.add("b", retention=retention)
    r = redis.Redis(unix_socket_path=redis_server.socket)
    try:
        with a.http(30) as ca, b.http(30) as cb:
            wait_for(lambda: cb.get(f"/v1/turns/{tid}").status_code == 404, 30, 0.05)  # B: Redis expired it
            assert tid not in [t["turn_id"] for t in cb.get("/v1/turns").json()["turns"]]
            assert tid not in [t["turn_id"] for t in cb.get("/v1/turns?status=succeeded").json()["turns"]]
            assert cb.get(f"/v1/turns/{tid}/events").status_code == 404
            assert cb.get(f"/v1/turns/{tid}/export").status_code == 404
            # A (the owner) held it in memory; a pass there (explicit here) brings its view in step
            report = ca.post("/v1/prune", json={}).json()
            assert report["removed"] == []  # nothing left for the pass itself: Redis removed it
            for c in (ca, cb):
                assert c.get(f"/v1/turns/{tid}").status_code == 404
                assert tid not in [t["turn_id"] for t in c.get("/v1/turns").json()["turns"]]
            assert gone_everywhere(r, tid)  # the pass dropped its index entries too
            wait_for(lambda: ca.get(f"/v1/turns/{keep}").json()["status"] == "running", 30, 0.05)
            assert r.pttl(f"rt:turn:{{{keep}}}") == -1  # an unended turn never expires
            assert cb.post(f"/v1/turns/{keep}/cancel").status_code == 202
            ended = wait_for(lambda: (i := ca.get(f"/v1/turns/{keep}").json())["ended_at"] is not None and i, 30, 0.05)
            assert isinstance(ended, dict) and ended["status"] == "cancelled"
    finally:
        r.close()


@pytest.mark.timeout(180)
def test_the_turn_limit_holds_cluster_wide_and_a_dead_nodes_turns_are_pruned_by_a_live_nodes_pass(
        redis_server: RedisServer, nodes: Nodes) -> None:
    import redis

    a = nodes.add("a", retention={"max_turns": 1, "interval_s": 3600.0})  # A never runs a periodic pass
    with a.http(30) as ca:
        on_a = [finish(ca, "count", {"n": 3}) for _ in range(2)]
    r = redis.Redis(unix_socket_path=redis_server.socket)
    try:
        for tid in on_a:  # their records say so in Redis (written just after the terminal event)
            wait_for(lambda: r.hget(f"rt:turn:{{{tid}}}", "status") == b"succeeded", 30, 0.02)
        orphans = psutil.Process(a.proc.pid).children(recursive=True)
        a.proc.send_signal(signal.SIGKILL)  # A's turns have ended; nobody owns them now
        a.proc.wait(10)
        for p in orphans:  # its forkserver: a dead daemon cannot stop it
            try:
                p.kill()
            except psutil.Error:
                pass
        b = nodes.add("b", retention={"max_turns": 1, "interval_s": 0.3})
        with b.http(30) as cb:
            # B's periodic pass keeps the newest ended turn of the cluster: A's second one
            wait_for(lambda: cb.get(f"/v1/turns/{on_a[0]}").status_code == 404, 30, 0.05)
            assert cb.get(f"/v1/turns/{on_a[1]}").json()["status"] == "succeeded"
            mine = finish(cb, "count", {"n": 3})
            wait_for(lambda: cb.get(f"/v1/turns/{on_a[1]}").status_code == 404, 30, 0.05)
            assert [t["turn_id"] for t in cb.get("/v1/turns").json()["turns"]] == [mine]
            assert cb.get(f"/v1/turns/{on_a[1]}/events").status_code == 404
            assert gone_everywhere(r, on_a[0]) and gone_everywhere(r, on_a[1])
            ended = r.sunion([f"rt:status:{s}" for s in ("succeeded", "failed", "cancelled", "timed_out", "lost")])
            assert ended == {mine.encode()}
            c = nodes.add("c", retention={"max_turns": 1, "interval_s": 3600.0})
            dry = json.loads(c.ctl("prune", "--dry-run").stdout)
            assert dry["removed"] == [] and dry["dry_run"]
    finally:
        r.close()


@pytest.mark.timeout(180)
def test_a_pass_on_one_node_reaches_the_owners_view_and_gap_frames_are_as_on_one_node(nodes: Nodes) -> None:
    retention: dict[str, object] = {"max_turns": 1, "keep_raw_s": 0.0, "interval_s": 3600.0}  # when asked
    a = nodes.add("a", retention=retention)
    with a.http(30) as ca:
        ids = [finish(ca, "demo", {"delay": 0}) for _ in range(2)]
    b = nodes.add("b", retention=retention)
    with a.http(30) as ca, b.http(30) as cb:  # B reads the records in Redis: what its pass will see
        wait_for(lambda: all(cb.get(f"/v1/turns/{t}").json()["compaction"] == "done" for t in ids), 60, 0.05)
        report = cb.post("/v1/prune", json={}).json()  # B's pass, over A's turns
        assert report["removed"] == [ids[0]] and report["raw_removed"] == [ids[1]] and report["bytes_freed"] > 0
        # A, which runs no pass, hears of it: its own view of its turns follows
        wait_for(lambda: ca.get(f"/v1/turns/{ids[0]}").status_code == 404, 30, 0.05)
        wait_for(lambda: ca.get(f"/v1/turns/{ids[1]}").json()["raw_removed"], 30, 0.05)
        for c in (ca, cb):
            assert [t["turn_id"] for t in c.get("/v1/turns").json()["turns"]] == [ids[1]]
            text = c.get(f"/v1/turns/{ids[1]}/events", headers={"Last-Event-ID": "5"}).text
            head, _, rest = text.partition("\n\n")
            assert head.startswith("event: gap\ndata: ")
            gap = json.loads(head.split("data: ", 1)[1])
            assert gap["after"] == 5 and gap["missing"] == {"from": 6, "to": 40} and gap["form"] == "compacted"
            assert '"type":"RUN_FINISHED"' in rest
            assert c.get(f"/v1/turns/{ids[1]}/export", params={"after": 5}).json()["gap"] == gap
        assert json.loads(a.ctl("prune").stdout) == {"removed": [], "raw_removed": [], "bytes_freed": 0,
                                                     "dry_run": False}  # nothing left to do


@pytest.mark.timeout(180)
def test_through_sentinel_a_node_follows_a_failover_to_the_new_master(tmp_path: Path,
                                                                      sentinel_set: SentinelSet) -> None:
    (tmp_path / "a").mkdir()
    a = start_daemon(tmp_path / "a", cluster={"redis_url": sentinel_set.url, "node_id": "a", "key_prefix": "rt"})
    try:
        with a.http(30) as ca:
            before = finish(ca, "count", {"n": 3})
            master, replica = sentinel_set.client("master"), sentinel_set.client("replica")
            # on the master Sentinel named (the record is written just after the terminal event)
            wait_for(lambda: master.hget(f"rt:turn:{{{before}}}", "status") == b"succeeded", 30, 0.02)
            sentinel_set.failover()  # the replica is promoted, then the old master demoted (about 10 s here)

            def started() -> str | None:  # the first calls may meet the demoted master: 503, then the new one
                r = ca.post("/v1/turns", json={"agent": "count", "input": {"n": 3}})
                return str(r.json()["turn_id"]) if r.status_code == 201 else None

            after = wait_for(started, 60, 0.1)
            assert isinstance(after, str)
            # written to the new master
            wait_for(lambda: replica.hget(f"rt:turn:{{{after}}}", "status") == b"succeeded", 60, 0.02)
            assert ca.get(f"/v1/turns/{after}").json()["status"] == "succeeded"
            assert ca.get(f"/v1/turns/{before}").json()["status"] == "succeeded"  # replicated history still read
            events = sse(ca.get(f"/v1/turns/{after}/events").text)
            assert [s for s, _ in events] == list(range(1, len(events) + 1))
            assert events[-1][1]["type"] == "RUN_FINISHED"
            # its heartbeat moved to the new master in time: never presumed dead, its key alive there
            assert "cluster_node_presumed_dead_rejoined" not in a.log.read_text()
            assert replica.pttl("rt:node:a:alive") > 0
            health = ca.get("/v1/health").json()
            assert health["cluster"]["redis"] == "ok" and health["cluster"]["nodes"] == 1
    finally:
        gen = stopped(a)
        next(gen)
        next(gen, None)
