#!/usr/bin/env python3
"""History at scale: replaying and exporting long turns, against a naive approach in the same run.

    python scripts/bench_history.py           # full sizes (36,000 events, 50 clients, 1 GiB), ~2-4 min
    python scripts/bench_history.py --quick   # small sizes, ~30 s, for a smoke check

A real ``runnerd`` (the installed console script) runs with a temp config
(``ended_memory_s = 1.0``, ``compact_finished = false``), its socket and state
directory in a temp directory under /tmp, and the agent of
``scripts/bench_history_agents.py`` (importable through ``PYTHONPATH``).

1. A real turn of 36,000 agent events (+ RUN_STARTED, RUN_FINISHED); once its
   events have left the daemon's memory (``runnerd_buffered_bytes`` 0), 50
   clients in a separate asyncio process replay it from seq 0 over SSE (raw
   unix-socket connections, all at once), in two rounds (a second round shows
   whether the growth is allocator retention or a leak). The daemon's RSS is
   sampled every 10 ms (psutil) and its kernel peak (VmHWM, reset before each
   round through /proc/<pid>/clear_refs) is read too.
2. ``export?limit=200`` (tail) and ``export?after=<middle>&limit=200`` of that
   turn: sequential requests on one keep-alive raw HTTP/1.1 connection, p50/p99.
3. The same on a synthetic 1 GiB log (~1 KiB CUSTOM events) written before the
   daemon starts, page cache warm, and cold (``posix_fadvise(DONTNEED)`` first).
4. The naive approach on the same files, after the daemon stopped: an export
   that reads the whole file, decodes every line (json.loads), takes the last
   200 and encodes them (json.dumps); a replay that decodes the whole turn and
   encodes its whole SSE body, 50 at once in threads, each holding both until
   all 50 have them. Peak RSS from ``ru_maxrss`` of the process doing it.

The same file is also the helper processes (``--role``): the replay clients and
the naive export/replay.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))
from benchlib import launch_runnerd, stop_process  # noqa: E402

THIS = Path(__file__).resolve()
BIN = Path(sys.executable).parent
MIB = 1 << 20
WAIT_S = 120.0  # bound on any single wait, so a broken run fails instead of hanging
SAMPLE_S = 0.010  # RSS sampling interval
AGENTS = {"history": "bench_history_agents:history"}
LIMIT = 200


@dataclass(frozen=True)
class Sizes:
    events: int  # agent events of the long turn (the turn holds events + 2)
    clients: int  # concurrent SSE replays
    big_bytes: int  # size of the synthetic log
    export_reps: int  # sequential tail exports per file
    mid_reps: int  # sequential middle exports per file
    cold_reps: int  # cold-cache exports (1 GiB log)
    naive_small_reps: int
    naive_big_reps: int


FULL = Sizes(events=36_000, clients=50, big_bytes=1 << 30, export_reps=500, mid_reps=200, cold_reps=10,
             naive_small_reps=5, naive_big_reps=2)
QUICK = Sizes(events=6_000, clients=10, big_bytes=64 << 20, export_reps=100, mid_reps=50, cold_reps=5,
              naive_small_reps=2, naive_big_reps=1)


def pct(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(p / 100 * len(s) + 0.5)) - 1))
    return s[k]


def rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


# -- helper role: the replay clients (a separate process) -----------------------------------------


class Replayer(asyncio.Protocol):
    """One raw HTTP/1.1 SSE client: de-chunks, checks every frame's seq and bytes, counts."""

    def __init__(self, request: bytes, expect_last: int, loop: asyncio.AbstractEventLoop) -> None:
        self.request = request
        self.expect_last = expect_last
        self.head = b""
        self.headers: bytes | None = None
        self.status = 0
        self.chunked = False
        self.cbuf = b""
        self.cneed = 0
        self.sse = b""
        self.next_seq = 1
        self.frames = 0
        self.data_bytes = 0
        self.terminal = False
        self.bad: str | None = None
        self.t_first = 0.0
        self.t_done = 0.0
        self.closed: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.t_done = time.monotonic()
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self.headers is None:
            if not self.t_first:
                self.t_first = time.monotonic()
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            self.headers = self.head[:end].lower()
            data = self.head[end + 4:]
            self.head = b""
            self.status = int(self.headers.split(b" ", 2)[1])
            self.chunked = b"transfer-encoding: chunked" in self.headers
        if self.chunked:
            data = self._dechunk(data)
        if not data:
            return
        frames = (self.sse + data).split(b"\n\n")
        self.sse = frames.pop()
        for f in frames:
            if not f.startswith(b"id: "):
                continue  # ": connected", keep-alive comments
            nl = f.find(b"\n")
            seq = int(f[4:nl])
            line = f[nl + 7:]  # after "\ndata: "
            if self.bad is None:
                if seq != self.next_seq:
                    self.bad = f"expected seq {self.next_seq}, got {seq}"
                elif not line.startswith(b'{"seq":%d,' % seq):
                    self.bad = f"frame {seq}: data does not carry its seq"
            self.next_seq = seq + 1
            self.frames += 1
            self.data_bytes += len(line) + 1
            if seq == self.expect_last:
                self.terminal = b'"type":"RUN_FINISHED"' in line

    def _dechunk(self, data: bytes) -> bytes:
        buf = self.cbuf + data
        out = []
        pos = 0
        n = len(buf)
        while pos < n:
            if self.cneed == 0:
                i = buf.find(b"\r\n", pos)
                if i < 0:
                    break
                line = buf[pos:i]
                pos = i + 2
                if not line:
                    continue  # the CRLF that ends a chunk's data
                size = int(line.split(b";")[0], 16)
                if size == 0:
                    pos = n
                    break
                self.cneed = size
            else:
                take = min(self.cneed, n - pos)
                out.append(buf[pos:pos + take])
                pos += take
                self.cneed -= take
        self.cbuf = buf[pos:]
        return b"".join(out)


async def replay_clients(args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    request = (f"GET {args.path} HTTP/1.1\r\nHost: runnerd\r\nAccept: text/event-stream\r\n"
               "Connection: close\r\n\r\n").encode()
    clients = [Replayer(request, args.expect_last, loop) for _ in range(args.clients)]
    t0 = time.monotonic()
    await asyncio.gather(*(loop.create_unix_connection(functools.partial(lambda c: c, c), args.socket)
                           for c in clients))
    t_connected = time.monotonic()
    try:
        await asyncio.wait_for(asyncio.gather(*(c.closed for c in clients)), args.timeout)
    except asyncio.TimeoutError:
        pass
    t_end = time.monotonic()
    problems = []
    complete = 0
    for i, c in enumerate(clients):
        why = None
        if c.status != 200:
            why = f"HTTP {c.status}"
        elif c.bad:
            why = c.bad
        elif c.frames != args.expect_last:
            why = f"{c.frames} frames of {args.expect_last}"
        elif not c.terminal:
            why = "no RUN_FINISHED at the end"
        elif c.data_bytes != args.expect_bytes:
            why = f"{c.data_bytes} data bytes, the log holds {args.expect_bytes}"
        if why is None:
            complete += 1
        else:
            problems.append(f"client {i}: {why}")
    done = [c.t_done - t0 for c in clients if c.t_done]
    first = [c.t_first - t0 for c in clients if c.t_first]
    return {
        "clients": args.clients, "complete": complete, "problems": problems[:5],
        "wall_s": (max(done) if len(done) == len(clients) else t_end - t0),
        "connect_s": t_connected - t0,
        "done_p50_s": pct(done, 50), "done_min_s": min(done) if done else float("nan"),
        "first_byte_max_s": max(first) if first else float("nan"),
        "frames": sum(c.frames for c in clients), "data_bytes": sum(c.data_bytes for c in clients),
        "cpu_s": sum(resource.getrusage(resource.RUSAGE_SELF)[:2]),
    }


def role_replay(args: argparse.Namespace) -> None:
    result = asyncio.run(replay_clients(args))
    Path(args.out).write_text(json.dumps(result))


# -- helper role: the naive approach -----------------------------------------------------------


def naive_decode(path: str) -> list[dict[str, Any]]:
    with open(path, "rb") as f:
        return [json.loads(line) for line in f]


def role_naive_export(args: argparse.Namespace) -> None:
    """Read the whole file, decode every line, take the last 200, encode them: per request."""
    base = rss_now()
    times = []
    total = 0
    for _ in range(args.reps):
        t0 = time.perf_counter()
        events = naive_decode(args.file)
        page = events[-LIMIT:]
        body = json.dumps({"events": page, "total": len(events), "returned": len(page)}).encode()
        times.append(time.perf_counter() - t0)
        total = len(events)
        if page[-1]["seq"] != total or len(page) != min(LIMIT, total) or not body:
            raise SystemExit(f"naive export: wrong page (last seq {page[-1]['seq']}, {total} events)")
        del events, page, body
    Path(args.out).write_text(json.dumps({"times_s": times, "events": total, "base_rss": base,
                                          "peak_rss": peak_rss()}))


def role_naive_replay(args: argparse.Namespace) -> None:
    """``clients`` threads, each decoding the turn and encoding its whole SSE body; each holds both
    until all have them (the 50 clients are all still being written to), then 'sends' to /dev/null."""
    base = rss_now()
    barrier = threading.Barrier(args.clients, timeout=WAIT_S)
    results: list[tuple[int, int] | str] = [""] * args.clients

    def handler(i: int) -> None:
        try:
            events = naive_decode(args.file)
            out = b"".join([b"id: %d\ndata: %s\n\n" % (e["seq"], json.dumps(e).encode()) for e in events])
            barrier.wait()
            with open(os.devnull, "wb") as sink:
                view = memoryview(out)
                for pos in range(0, len(out), 1 << 16):
                    sink.write(view[pos:pos + (1 << 16)])
            results[i] = (len(events), len(out))
        except Exception as exc:  # noqa: BLE001 - reported
            barrier.abort()
            results[i] = f"{type(exc).__name__}: {exc}"

    t0 = time.perf_counter()
    threads = [threading.Thread(target=handler, args=(i,)) for i in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S * 2)
    wall = time.perf_counter() - t0
    bad = [r for r in results if not isinstance(r, tuple) or r[0] != args.expect_last]
    Path(args.out).write_text(json.dumps({"wall_s": wall, "base_rss": base, "peak_rss": peak_rss(),
                                          "problems": [str(b) for b in bad[:3]],
                                          "out_bytes": results[0][1] if isinstance(results[0], tuple) else 0}))


# -- the main process ------------------------------------------------------------------------------


class RssSampler:
    """The daemon's RSS every ~10 ms, in a thread of the benchmark process."""

    def __init__(self, pid: int) -> None:
        import psutil
        self.proc = psutil.Process(pid)
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")
        self._thread.start()

    def _run(self) -> None:
        import psutil
        deadline = time.monotonic() + 3600
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                self.samples.append((time.monotonic(), self.proc.memory_info().rss))
            except psutil.Error:
                return
            self._stop.wait(SAMPLE_S)

    def window(self, t0: float, t1: float) -> list[int]:
        return [rss for t, rss in list(self.samples) if t0 <= t <= t1]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def vm_hwm(pid: int) -> int:
    """The kernel's peak RSS of a process (VmHWM), in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def reset_hwm(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class RawHttp:
    """A minimal keep-alive HTTP/1.1 client on the unix socket (bodies with Content-Length)."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(path)
        self.buf = b""

    def get(self, target: str) -> tuple[int, bytes]:
        self.sock.sendall(b"GET %s HTTP/1.1\r\nHost: runnerd\r\n\r\n" % target.encode())
        while b"\r\n\r\n" not in self.buf:
            self._recv()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        status = int(head.split(b" ", 2)[1])
        length = None
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length is None:
            raise RuntimeError(f"no content-length in the answer to {target}")
        while len(self.buf) < length:
            self._recv()
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, body

    def _recv(self) -> None:
        data = self.sock.recv(1 << 20)
        if not data:
            raise RuntimeError("the daemon closed the connection")
        self.buf += data

    def close(self) -> None:
        self.sock.close()


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    socket: str
    log: Path

    def http(self, timeout: float = 30.0) -> Any:
        import httpx
        return httpx.Client(base_url="http://runnerd", transport=httpx.HTTPTransport(uds=self.socket),
                            timeout=timeout)


def start_daemon(tmp: Path) -> Daemon:
    proc, sock, log = launch_runnerd(tmp, AGENTS, ['log_level = "warning"', "ended_memory_s = 1.0",
                                                   "compact_finished = false"])
    return Daemon(proc, sock, log)


def tree_of(pid: int) -> list[Any]:
    import psutil
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def survivors(procs: list[Any]) -> list[Any]:
    import psutil
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:  # is_running checks create time
                out.append(p)
        except psutil.Error:
            pass
    return out


def write_big_log(state: Path, size: int) -> tuple[str, Path, int, float]:
    """A finished turn of ~1 KiB CUSTOM events (RUN_STARTED first, RUN_FINISHED last), plus its meta."""
    import msgspec

    from ipc import events as ev
    from supervisor.ids import new_turn_id
    from supervisor.turns import TurnInfo, TurnStatus

    t0 = time.monotonic()
    turn_id = new_turn_id()
    turns = state / "turns"
    turns.mkdir(parents=True, mode=0o700)
    path = turns / f"{turn_id}.jsonl"
    m = size // 1024
    base = (b"abcdefghijklmnopqrstuvwxyz0123456789" * 40)[:1200]
    now_ms = time.time_ns() // 1_000_000

    def spliced(seq: int, event: Any) -> bytes:
        return b'{"seq":%d,' % seq + ev.encode_event(event)[1:] + b"\n"

    with open(path, "wb") as f:
        f.write(spliced(1, ev.RunStarted(thread_id=turn_id, run_id=turn_id, timestamp=now_ms)))
        chunk = 16384
        for start in range(2, m, chunk):
            parts = []
            for seq in range(start, min(start + chunk, m)):
                head = b'{"seq":%d,"type":"CUSTOM","name":"x","value":"' % seq
                pad = 1024 - len(head) - 3  # '"}' + newline: every line is exactly 1 KiB
                k = seq % 97
                parts.append(head + base[k:k + pad] + b'"}\n')
            f.write(b"".join(parts))
        f.write(spliced(m, ev.RunFinished(thread_id=turn_id, run_id=turn_id,
                                          outcome=ev.Outcome(type="success"), timestamp=now_ms)))
        f.flush()
        os.fsync(f.fileno())
    now = time.time()
    info = TurnInfo(turn_id=turn_id, agent="bench", status=TurnStatus.SUCCEEDED, last_seq=m,
                    created_at=now - 60, started_at=now - 60, ended_at=now - 1,
                    compaction="failed", compaction_error="bench: not compacted")
    (turns / f"{turn_id}.meta.json").write_bytes(msgspec.json.encode(info))
    return turn_id, path, m, time.monotonic() - t0


def drop_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def timed_exports(client: RawHttp, target: str, reps: int, check: Any, *, warm: int = 5,
                  before: Any = None) -> list[float]:
    """Sequential GETs; ms per request, client-side. Every answer is checked (outside the timing)."""
    for _ in range(warm):
        status, body = client.get(target)
        check(status, body)
    out = []
    for _ in range(reps):
        if before is not None:
            before()
        t0 = time.perf_counter()
        status, body = client.get(target)
        out.append((time.perf_counter() - t0) * 1000)
        check(status, body)
    return out


def page_check(*, first: int, last: int, returned: int = LIMIT) -> Any:
    def check(status: int, body: bytes) -> None:
        if status != 200:
            raise RuntimeError(f"export: HTTP {status}: {body[:300]!r}")
        page = json.loads(body)
        seqs = [e["seq"] for e in page["events"]]
        if page["returned"] != returned or seqs != list(range(first, last + 1)):
            raise RuntimeError(f"export: got seqs {seqs[:1]}..{seqs[-1:]} ({page['returned']}), "
                               f"expected {first}..{last}")
    return check


def status_check(status: int, body: bytes) -> None:
    if status != 200:
        raise RuntimeError(f"HTTP {status}: {body[:300]!r}")


def metric(client: Any, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise RuntimeError(f"metric {name} not found")


def helper(role: str, out: Path, limit_s: float, **kw: Any) -> dict[str, Any]:
    cmd = [sys.executable, str(THIS), "--role", role, "--out", str(out)]
    for k, v in kw.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    proc = subprocess.run(cmd, timeout=limit_s, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"helper {role} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


def run(sizes: Sizes, tmp: Path) -> dict[str, Any]:
    import psutil
    r: dict[str, Any] = {"sizes": sizes.__dict__}
    state = tmp / "state"

    # 3 (prepared first): the synthetic big log, before the daemon starts
    big_id, big_path, big_m, gen_s = write_big_log(state, sizes.big_bytes)
    r["big"] = {"events": big_m, "bytes": big_path.stat().st_size, "gen_s": gen_s}
    print(f"big log: {big_m:,} events, {big_path.stat().st_size / MIB:,.0f} MiB, written in {gen_s:.1f} s",
          flush=True)

    d = start_daemon(tmp)
    sampler = RssSampler(d.proc.pid)
    procs = tree_of(d.proc.pid)
    try:
        with d.http() as c:
            time.sleep(0.5)
            r["rss_start"] = sampler.samples[-1][1]

            # 1. the long turn
            t0 = time.monotonic()
            info = c.post("/v1/turns", json={"agent": "history", "input": {"n": sizes.events}}).json()
            turn_id = info["turn_id"]
            procs += tree_of(d.proc.pid)
            while time.monotonic() - t0 < WAIT_S * 2:
                info = c.get(f"/v1/turns/{turn_id}").json()
                if info["ended_at"] is not None:
                    break
                time.sleep(0.05)
            turn_s = time.monotonic() - t0
            expect_last = sizes.events + 2
            if info["status"] != "succeeded" or info["last_seq"] != expect_last:
                raise RuntimeError(f"turn ended {info['status']} at seq {info['last_seq']}: {info.get('error')}")
            turn_path = state / "turns" / f"{turn_id}.jsonl"
            turn_bytes = turn_path.stat().st_size
            r["turn"] = {"events": expect_last, "bytes": turn_bytes, "seconds": turn_s,
                         "mean_event_bytes": turn_bytes / expect_last - 1}
            r["rss_after_turn"] = sampler.samples[-1][1]
            print(f"turn: {expect_last:,} events, {turn_bytes / MIB:.1f} MiB "
                  f"(mean {turn_bytes / expect_last - 1:.0f} B/event) in {turn_s:.2f} s", flush=True)

            t1 = time.monotonic()
            buffered = metric(c, "runnerd_buffered_bytes")
            while buffered > 0 and time.monotonic() - t1 < 30:
                time.sleep(0.1)
                buffered = metric(c, "runnerd_buffered_bytes")
            if buffered > 0:
                raise RuntimeError(f"runnerd_buffered_bytes still {buffered} after 30 s")
            r["evicted_after_s"] = time.monotonic() - t1
            time.sleep(1.0)  # settle, then the baseline
            b0 = time.monotonic()
            time.sleep(1.0)
            base = pct(sampler.window(b0, time.monotonic()), 50)
            hwm_ok = reset_hwm(d.proc.pid)

            # 1b. the replays, clients in a separate process; a second round shows whether the
            # growth is retained by the allocator (flat) or leaks (grows again)
            dproc = psutil.Process(d.proc.pid)
            rounds = []
            for rnd in (1, 2):
                print(f"replay round {rnd}: {sizes.clients} clients x {expect_last:,} events ...", flush=True)
                hwm_ok = reset_hwm(d.proc.pid)
                cpu0 = sum(dproc.cpu_times()[:2])
                t_launch = time.monotonic()
                rep = helper("replay", tmp / f"replay{rnd}.json", WAIT_S * 3, socket=d.socket,
                             path=f"/v1/turns/{turn_id}/events", clients=sizes.clients,
                             expect_last=expect_last, expect_bytes=turn_bytes, timeout=WAIT_S * 2)
                t_back = time.monotonic()
                cpu1 = sum(dproc.cpu_times()[:2])
                window = sampler.window(t_launch, t_back)
                peak = max(window)
                hwm = vm_hwm(d.proc.pid) if hwm_ok else 0
                time.sleep(1.0)
                after = pct(sampler.window(t_back + 0.5, time.monotonic()), 50)
                rounds.append({**rep, "rss_base": base, "rss_peak_sampled": peak, "rss_hwm": hwm,
                               "rss_after": after, "growth_sampled": peak - base,
                               "growth_hwm": (hwm - base) if hwm else None, "samples": len(window),
                               "daemon_cpu_s": cpu1 - cpu0})
                if rep["complete"] != sizes.clients:
                    raise RuntimeError(f"replay: {rep['complete']}/{sizes.clients} complete: {rep['problems']}")
                print(f"  all {sizes.clients} complete in order, wall {rep['wall_s']:.2f} s, daemon RSS "
                      f"+{(peak - base) / MIB:.1f} MiB (sampled), +{((hwm or base) - base) / MIB:.1f} MiB "
                      f"(VmHWM), daemon CPU {cpu1 - cpu0:.1f} s, clients CPU {rep['cpu_s']:.1f} s", flush=True)
            r["replay"], r["replay2"] = rounds

            # 2. exports of the long turn, 3. of the big log
            raw = RawHttp(d.socket)
            try:
                health = timed_exports(raw, "/v1/health", sizes.mid_reps, status_check)
                e0 = time.monotonic()
                hwm_ok = reset_hwm(d.proc.pid)
                ex: dict[str, list[float]] = {}
                mid = expect_last // 2
                ex["turn_tail"] = timed_exports(
                    raw, f"/v1/turns/{turn_id}/export?limit={LIMIT}", sizes.export_reps,
                    page_check(first=expect_last - LIMIT + 1, last=expect_last))
                ex["turn_mid"] = timed_exports(
                    raw, f"/v1/turns/{turn_id}/export?after={mid}&limit={LIMIT}", sizes.mid_reps,
                    page_check(first=mid + 1, last=mid + LIMIT))
                ex["big_tail"] = timed_exports(
                    raw, f"/v1/turns/{big_id}/export?limit={LIMIT}", sizes.export_reps,
                    page_check(first=big_m - LIMIT + 1, last=big_m))
                bmid = big_m // 2
                ex["big_mid"] = timed_exports(
                    raw, f"/v1/turns/{big_id}/export?after={bmid}&limit={LIMIT}", sizes.mid_reps,
                    page_check(first=bmid + 1, last=bmid + LIMIT))
                ex["big_tail_cold"] = timed_exports(
                    raw, f"/v1/turns/{big_id}/export?limit={LIMIT}", sizes.cold_reps,
                    page_check(first=big_m - LIMIT + 1, last=big_m), warm=0,
                    before=lambda: drop_cache(big_path))
                ex["big_mid_cold"] = timed_exports(
                    raw, f"/v1/turns/{big_id}/export?after={bmid}&limit={LIMIT}", sizes.cold_reps,
                    page_check(first=bmid + 1, last=bmid + LIMIT), warm=0,
                    before=lambda: drop_cache(big_path))
                e1 = time.monotonic()
            finally:
                raw.close()
            ebase = pct(sampler.window(e0 - 0.5, e0), 50)
            r["export"] = {k: {"p50": pct(v, 50), "p99": pct(v, 99), "n": len(v)} for k, v in ex.items()}
            r["health"] = {"p50": pct(health, 50), "p99": pct(health, 99), "n": len(health)}
            r["export_rss_growth"] = max(max(sampler.window(e0, e1)), vm_hwm(d.proc.pid) if hwm_ok else 0) - ebase
            for k, v in r["export"].items():
                print(f"  export {k}: p50 {v['p50']:.2f} ms, p99 {v['p99']:.2f} ms ({v['n']})", flush=True)
    finally:
        sampler.stop()
        procs += tree_of(d.proc.pid)
        t_stop = time.monotonic()
        code = stop_process(d.proc)
        r["daemon_exit"] = code
        r["daemon_stop_s"] = time.monotonic() - t_stop
        watch = list(set(procs))  # psutil.Process hashes by (pid, create time)
        deadline = time.monotonic() + 10  # the forkserver and resource tracker exit on their own
        left = survivors(watch)
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = survivors(watch)
        r["leftover_wait_s"] = time.monotonic() - t_stop - r["daemon_stop_s"]
        r["leftovers"] = [f"{p.pid} {p.name()}" for p in left]
        for p in left:  # processes of the daemon we started
            try:
                p.kill()
            except Exception:  # noqa: BLE001
                pass

    # 4. the naive approach, on the same files, with the daemon stopped
    print("naive: exports and replays ...", flush=True)
    ns = helper("naive-export", tmp / "naive-small.json", WAIT_S * 2, file=turn_path, reps=sizes.naive_small_reps)
    nb = helper("naive-export", tmp / "naive-big.json", WAIT_S * 4, file=big_path, reps=sizes.naive_big_reps)
    nr = helper("naive-replay", tmp / "naive-replay.json", WAIT_S * 4, file=turn_path, clients=sizes.clients,
                expect_last=expect_last)
    if nr["problems"]:
        raise RuntimeError(f"naive replay: {nr['problems']}")
    r["naive"] = {
        "turn_export_s": sorted(ns["times_s"]), "turn_export_growth": ns["peak_rss"] - ns["base_rss"],
        "big_export_s": sorted(nb["times_s"]), "big_export_growth": nb["peak_rss"] - nb["base_rss"],
        "replay_wall_s": nr["wall_s"], "replay_growth": nr["peak_rss"] - nr["base_rss"],
        "replay_out_bytes": nr["out_bytes"],
    }
    return r


def report(r: dict[str, Any]) -> str:
    s = r["sizes"]
    rep, ex, nv = r["replay"], r["export"], r["naive"]
    growth = max(rep["growth_sampled"], rep["growth_hwm"] or 0)
    rows = []

    def row(what: str, ours: str, naive: str, ratio: str, target: str) -> None:
        rows.append((what, ours, naive, ratio, target))

    def ms(x: float) -> str:
        return f"{x:.2f} ms" if x < 1000 else f"{x / 1000:.2f} s"

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    clients, ev_n = s["clients"], r["turn"]["events"]
    rep2 = r["replay2"]
    growth2 = max(rep2["growth_sampled"], rep2["growth_hwm"] or 0)
    row(f"replay {clients} x {ev_n:,} events: daemon peak RSS growth", f"{growth / MIB:.1f} MiB",
        f"{nv['replay_growth'] / MIB:,.0f} MiB", f"{nv['replay_growth'] / max(growth, 1):.0f}x",
        f"<= 64 MiB: {verdict(growth <= 64 * MIB)}")
    row("  same, second round (over the same baseline)", f"{growth2 / MIB:.1f} MiB", "", "",
        f"<= 64 MiB: {verdict(growth2 <= 64 * MIB)}")
    row(f"replay {clients} x {ev_n:,}: wall time (all complete, in order)",
        f"{rep['wall_s']:.2f} s / {rep2['wall_s']:.2f} s", f"{nv['replay_wall_s']:.2f} s (no sockets)",
        f"{nv['replay_wall_s'] / rep['wall_s']:.1f}x", "")
    t_naive = min(nv["turn_export_s"]) * 1000  # the naive side's best run: conservative ratios
    for key, label in (("turn_tail", f"export tail, {ev_n:,}-event turn"),
                       ("turn_mid", f"export after={ev_n // 2}, {ev_n:,}-event turn")):
        e = ex[key]
        target = f"p50 <= 10 ms: {verdict(e['p50'] <= 10)}" if key == "turn_tail" else ""
        row(label + " (p50 / p99)", f"{ms(e['p50'])} / {ms(e['p99'])}", ms(t_naive),
            f"{t_naive / e['p50']:.0f}x", target)
    big_mib = r["big"]["bytes"] / MIB
    b_naive = min(nv["big_export_s"]) * 1000
    for key, label in (("big_tail", f"export tail, {big_mib:,.0f} MiB log"),
                       ("big_mid", f"export after=M/2, {big_mib:,.0f} MiB log"),
                       ("big_tail_cold", f"export tail, {big_mib:,.0f} MiB, cold cache"),
                       ("big_mid_cold", f"export after=M/2, {big_mib:,.0f} MiB, cold cache")):
        e = ex[key]
        target = f"p50 <= 20 ms: {verdict(e['p50'] <= 20)}" if key == "big_tail" else ""
        row(label + " (p50 / p99)", f"{ms(e['p50'])} / {ms(e['p99'])}", ms(b_naive),
            f"{b_naive / e['p50']:,.0f}x", target)
    row("export: memory growth (daemon, all export rows / naive process)",
        f"{r['export_rss_growth'] / MIB:.1f} MiB",
        f"{nv['turn_export_growth'] / MIB:,.0f} MiB ({ev_n:,}) / {nv['big_export_growth'] / MIB:,.0f} MiB "
        f"({big_mib:,.0f} MiB)", f"{nv['big_export_growth'] / max(r['export_rss_growth'], 1):,.0f}x", "")
    row("floor: GET /v1/health (p50 / p99)", f"{ms(r['health']['p50'])} / {ms(r['health']['p99'])}", "", "", "")

    widths = [max(len(x[i]) for x in rows + [("what", "runnerd", "naive (best run)", "naive/runnerd", "target")])
              for i in range(5)]
    head = ("what", "runnerd", "naive (best run)", "naive/runnerd", "target")
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(x, widths)) + " |" for x in rows]
    t = r["turn"]
    lines += ["",
              f"turn: {t['events']:,} events ({t['bytes'] / MIB:.1f} MiB, mean {t['mean_event_bytes']:.0f} B) "
              f"emitted and relayed in {t['seconds']:.2f} s; memory released {r['evicted_after_s']:.1f} s after "
              f"the end; big log: {r['big']['events']:,} events of 1 KiB ({big_mib:,.0f} MiB).",
              f"daemon RSS: {r['rss_start'] / MIB:.0f} MiB at start, {r['rss_after_turn'] / MIB:.0f} MiB after the "
              f"turn, {rep['rss_base'] / MIB:.0f} MiB baseline before the replays, peak "
              f"{rep['rss_peak_sampled'] / MIB:.0f} MiB sampled ({rep['samples']} samples) / "
              f"{(rep['rss_hwm'] or 0) / MIB:.0f} MiB VmHWM, {rep['rss_after'] / MIB:.0f} MiB 1 s after.",
              f"replay clients: connect {rep['connect_s'] * 1000:.0f} ms, first byte (max) "
              f"{rep['first_byte_max_s'] * 1000:.0f} ms, done p50 {rep['done_p50_s']:.2f} s, "
              f"{rep['frames']:,} frames, {rep['data_bytes'] / MIB:,.0f} MiB of event data; CPU during round 1: "
              f"daemon {rep['daemon_cpu_s']:.1f} s, client process {rep['cpu_s']:.1f} s; round 2: peak "
              f"{rep2['rss_peak_sampled'] / MIB:.0f} MiB, {rep2['rss_after'] / MIB:.0f} MiB 1 s after.",
              f"naive: export {ev_n:,} runs {', '.join(f'{x * 1000:.0f}' for x in nv['turn_export_s'])} ms; "
              f"{big_mib:,.0f} MiB runs {', '.join(f'{x:.1f}' for x in nv['big_export_s'])} s; "
              f"one naive replay body {nv['replay_out_bytes'] / MIB:.1f} MiB.",
              f"daemon: exit {r['daemon_exit']} after SIGTERM in {r['daemon_stop_s']:.2f} s; "
              f"leftover processes: {r['leftovers'] or 'none'} (its forkserver and helpers gone "
              f"{r['leftover_wait_s']:.2f} s after it)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke check")
    p.add_argument("--json", help="also write the raw results here")
    p.add_argument("--role", choices=["replay", "naive-export", "naive-replay"], help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--socket", help=argparse.SUPPRESS)
    p.add_argument("--path", help=argparse.SUPPRESS)
    p.add_argument("--file", help=argparse.SUPPRESS)
    p.add_argument("--clients", type=int, help=argparse.SUPPRESS)
    p.add_argument("--reps", type=int, help=argparse.SUPPRESS)
    p.add_argument("--expect-last", type=int, help=argparse.SUPPRESS)
    p.add_argument("--expect-bytes", type=int, help=argparse.SUPPRESS)
    p.add_argument("--timeout", type=float, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.role == "replay":
        return role_replay(args)
    if args.role == "naive-export":
        return role_naive_export(args)
    if args.role == "naive-replay":
        return role_naive_replay(args)

    sizes = QUICK if args.quick else FULL
    tmp = Path(tempfile.mkdtemp(prefix="bhist-", dir="/tmp"))
    t0 = time.monotonic()
    try:
        r = run(sizes, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    r["total_s"] = time.monotonic() - t0
    print()
    print(report(r))
    print(f"\ntotal {r['total_s']:.0f} s ({'quick' if args.quick else 'full'} sizes)")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
