"""File backend against Redis backend, in one run, on this machine.

- events/s of one turn (``flood``: ~100-byte events, one emit each) and of
  ``--concurrent`` turns at once, from the daemon's own start/end times;
- POST -> RUN_STARTED: from sending the POST to reading RUN_STARTED on SSE;
- SSE delivery (emit -> client) of paced ticks, on the owning node and on a
  node that does not own the turn (it reads through its one remote-tail XREAD);
- Redis memory per stored event (``MEMORY USAGE`` of one turn's stream / its length).

Every daemon and the redis-server are started here, on Unix sockets in a temp
folder, and stopped at the end. The Redis server runs without persistence
(``appendonly no``): what is measured is runnerd's path, not the disk's.

    .venv/bin/python scripts/bench_cluster.py [--events 100000] [--concurrent 50]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import launch_runnerd, median, ms, pct, stop_process  # noqa: E402

AGENTS = {"flood": "bench_daemon_agents:flood", "noop": "bench_daemon_agents:noop",
          "paced": "bench_daemon_agents:paced"}


def start_redis(folder: Path) -> subprocess.Popen[bytes]:
    import redis

    folder.mkdir(parents=True)
    exe = shutil.which("redis-server")
    if exe is None:
        sys.exit("redis-server is not installed (apt-get install -y redis-server)")
    proc = subprocess.Popen([exe, "--port", "0", "--unixsocket", str(folder / "redis.sock"), "--dir", str(folder),
                             "--save", "", "--appendonly", "no", "--loglevel", "warning"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if redis.Redis(unix_socket_path=str(folder / "redis.sock")).ping():
                return proc
        except redis.RedisError:
            time.sleep(0.02)  # polling readiness, bounded by the deadline
    proc.kill()
    sys.exit("redis-server did not answer")


def client(sock: str) -> httpx.Client:
    return httpx.Client(base_url="http://runnerd", transport=httpx.HTTPTransport(uds=sock), timeout=120)


def wait_ended(c: httpx.Client, turn_id: str) -> dict[str, object]:
    while True:
        info: dict[str, object] = c.get(f"/v1/turns/{turn_id}").json()
        if info["status"] not in ("queued", "starting", "running"):
            return info
        time.sleep(0.05)  # polling the end of a long turn; the numbers come from the daemon's timestamps


def throughput(c: httpx.Client, events: int, turns: int) -> float:
    """Events per second over all turns: total last_seq / (last end - first start)."""
    ids = [c.post("/v1/turns", json={"agent": "flood", "input": {"n": events // turns}}).json()["turn_id"]
           for _ in range(turns)]
    infos = [wait_ended(c, t) for t in ids]
    assert all(i["status"] == "succeeded" for i in infos), infos
    span = max(float(i["ended_at"]) for i in infos) - min(float(i["started_at"]) for i in infos)  # type: ignore[arg-type]
    return sum(int(i["last_seq"]) for i in infos) / span  # type: ignore[call-overload]


def start_latency(c: httpx.Client, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.monotonic()
        turn_id = c.post("/v1/turns", json={"agent": "noop"}).json()["turn_id"]
        with c.stream("GET", f"/v1/turns/{turn_id}/events") as r:
            for line in r.iter_lines():
                if line.startswith("data: ") and '"RUN_STARTED"' in line:
                    out.append(time.monotonic() - t0)
                    break
        wait_ended(c, turn_id)
    return out


def post_ticks(owner: httpx.Client, tmp: Path, rate: float, count: int) -> tuple[str, Path]:
    """A paced turn that waits for its go file; returned once a node has taken it."""
    go = tmp / f"go-{time.monotonic_ns()}"
    turn_id = owner.post("/v1/turns", json={"agent": "paced", "input": {"go": str(go), "rate": rate,
                                                                          "count": count}}).json()["turn_id"]
    while owner.get(f"/v1/turns/{turn_id}").json()["status"] != "running":
        time.sleep(0.01)  # polling the start, bounded by the paced agent's own go wait
    return turn_id, go


def delivery(reader: httpx.Client, turn_id: str, go: Path) -> list[float]:
    """Emit -> this client, for every tick of the turn, read over SSE on ``reader``."""
    lags: list[float] = []
    opened = threading.Event()

    def read() -> None:
        with reader.stream("GET", f"/v1/turns/{turn_id}/events") as r:
            opened.set()
            for line in r.iter_lines():
                if line.startswith("data: ") and '"tick"' in line:
                    sent = json.loads(line[6:])["value"]["t"]
                    lags.append((time.monotonic_ns() - sent) / 1e9)

    thread = threading.Thread(target=read)
    thread.start()
    opened.wait(30)
    time.sleep(0.5)  # let the follow settle (a remote tail's first XREAD) before the first tick
    go.write_text("")
    thread.join(120)
    return lags


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--concurrent", type=int, default=50)
    ap.add_argument("--starts", type=int, default=30)
    ap.add_argument("--ticks", type=int, default=500)
    args = ap.parse_args()
    base = ['log_level = "warning"', "max_running_turns = 64", "compact_finished = false"]
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as d:
        tmp = Path(d)
        redis_proc = start_redis(tmp / "redis-server")
        url = f"unix://{tmp / 'redis-server' / 'redis.sock'}"
        procs: list[subprocess.Popen[bytes]] = []
        try:
            results: dict[str, dict[str, object]] = {}
            for backend in ("file", "redis"):
                (tmp / backend).mkdir()
                extra = ["[cluster]", f'redis_url = "{url}"', 'node_id = "a"'] if backend == "redis" else []
                proc, sock, _ = launch_runnerd(tmp / backend, AGENTS, base + extra)
                procs.append(proc)
                with client(sock) as c:
                    one = throughput(c, args.events, 1)
                    many = throughput(c, args.events, args.concurrent)
                    starts = start_latency(c, args.starts)
                    own = delivery(c, *post_ticks(c, tmp, 200, args.ticks))
                    if backend == "redis":  # for node b: taken by a before b exists
                        ticks = post_ticks(c, tmp, 200, args.ticks)
                results[backend] = {"one_turn_events_s": one, "concurrent_events_s": many,
                                    "start_p50": median(starts), "start_p99": pct(starts, 99),
                                    "owner_delivery_p50": median(own), "owner_delivery_p99": pct(own, 99),
                                    "sock": sock}
            # A second node on the same Redis: it owns nothing and follows node a's turn.
            (tmp / "b").mkdir()
            proc_b, sock_b, _ = launch_runnerd(tmp / "b", AGENTS, ['log_level = "warning"', "[cluster]",
                                                                  f'redis_url = "{url}"', 'node_id = "b"'])
            procs.append(proc_b)
            with client(sock_b) as cb:
                remote = delivery(cb, *ticks)
            import redis

            r = redis.Redis(unix_socket_path=str(tmp / "redis-server" / "redis.sock"))
            keys = [k for k in r.scan_iter(match="runnerd:ev:*", count=1000)]
            longest = max(keys, key=lambda k: r.xlen(k))
            per_event = (r.memory_usage(longest, samples=0) or 0) / r.xlen(longest)
            r.close()
        finally:
            for p in procs:
                stop_process(p)
            redis_proc.terminate()
            redis_proc.wait(10)
    for backend, res in results.items():
        print(f"{backend:5}: one turn {res['one_turn_events_s']:,.0f} events/s; "
              f"{args.concurrent} turns {res['concurrent_events_s']:,.0f} events/s; "
              f"POST->RUN_STARTED p50 {ms(float(res['start_p50']))} p99 {ms(float(res['start_p99']))}; "  # type: ignore[arg-type]
              f"SSE delivery on the owner p50 {ms(float(res['owner_delivery_p50']))} "  # type: ignore[arg-type]
              f"p99 {ms(float(res['owner_delivery_p99']))}")  # type: ignore[arg-type]
    print(f"redis: SSE delivery on a node that does not own the turn p50 {ms(median(remote))} "
          f"p99 {ms(pct(remote, 99))} ({len(remote)} ticks at 200/s)")
    print(f"redis: {per_event:.0f} bytes of Redis memory per stored event (~100-byte events, one stream)")


if __name__ == "__main__":
    main()
