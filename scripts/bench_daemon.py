#!/usr/bin/env python3
"""Benchmark of the runnerd daemon's HTTP/SSE path against baselines measured in the same run.

    python scripts/bench_daemon.py           # default sizes, ~2-3 minutes on 2 cores
    python scripts/bench_daemon.py --quick   # ~30 s, for a smoke check

A real ``runnerd`` (the installed console script) runs with a temp config: its
socket and state directory in a temp directory, the agents of
``scripts/bench_daemon_agents.py`` (importable through ``PYTHONPATH``).

1. ``POST /v1/turns`` -> ``id: 1`` (RUN_STARTED) read by an SSE client that
   issued ``GET /v1/turns/{id}/events`` right after the POST returned
   (httpx over the unix socket), against two floors: a ``GET /v1/health``
   round trip and opening the SSE stream of a finished turn;
2. one SSE client's throughput (plain socket, counts ``\\nid: ``) while an
   agent emits ~100-byte events as fast as it can, against a process writing
   the same pre-formatted SSE bytes over a unix socket to the same reader;
3. fan-out: 1,000 SSE subscribers on one turn emitting 20 events/s, in two
   separate asyncio client processes: completeness, delivery latency, daemon
   RSS; against a naive ``ThreadingHTTPServer`` fed by a ``multiprocessing.Queue``.

The same file is also the helper processes (``--role``): the fan-out
subscribers, the naive server and the raw SSE writer.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import json
import math
import os
import queue
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))
from benchlib import launch_runnerd, median, ms, pct, stop_process, tree_cpu_s  # noqa: E402

THIS = Path(__file__).resolve()
BIN = Path(sys.executable).parent
WAIT_S = 60.0  # bound on any single wait, so a broken run fails instead of hanging
FD_TARGET = 8192  # soft RLIMIT_NOFILE wanted in the client processes


@dataclass(frozen=True)
class Sizes:
    start_turns: int  # section 1, sequential turns
    floor_reqs: int  # section 1, health round trips and finished-turn stream opens
    flood_events: int  # section 2, events per turn
    repeats: int  # section 2, runs per variant (median reported)
    subscribers: int  # section 3
    rate: float  # section 3, events/s
    fan_seconds: float  # section 3, emitting time


FULL = Sizes(start_turns=50, floor_reqs=50, flood_events=200_000, repeats=3,
             subscribers=1000, rate=20.0, fan_seconds=20.0)
QUICK = Sizes(start_turns=15, floor_reqs=15, flood_events=50_000, repeats=1,
              subscribers=1000, rate=20.0, fan_seconds=4.0)
SUBSCRIBER_PROCS = 2
CONNECT_CONCURRENCY = 64  # in-flight connects per client process (well under the 1024 backlog)

# The raw baseline's line: the same shape and size as the daemon's stored TEXT_MESSAGE_CONTENT.
RAW_LINE = (b'{"seq":%d,"type":"TEXT_MESSAGE_CONTENT","timestamp":1700000000000,'
            b'"messageId":"msg-bench-1","delta":"xxxxxx"}')


# -- statistics and the report ---------------------------------------------------------


def dist(values_s: Sequence[float]) -> str:
    return (f"p50 {ms(pct(values_s, 50))}  p99 {ms(pct(values_s, 99))}  "
            f"max {ms(max(values_s))}  (n={len(values_s):,})")


def mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@dataclass
class Report:
    sections: dict[str, list[str]] = field(default_factory=dict)
    missed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def line(self, section: str, text: str) -> None:
        self.sections.setdefault(section, []).append(text)
        progress(f"   [{section[:2].strip()}] {text}")

    def target(self, what: str, value: float, op: str, bound: float, unit: str) -> str:
        ok = value >= bound if op == ">=" else value <= bound
        if not ok:
            self.missed.append(f"{what}: {value:.1f}{unit} (target {op} {bound:g}{unit})")
        return f"target {op} {bound:g}{unit}: {'met' if ok else 'MISSED'}"

    def render(self) -> str:
        out = []
        for title in sorted(self.sections):
            out.append(f"\n{title}")
            out.extend(f"  {line}" for line in self.sections[title])
        if self.notes:
            out.append("\nNotes:")
            out.extend(f"  - {n}" for n in self.notes)
        out.append("\nTargets missed: " + ("none" if not self.missed else ""))
        out.extend(f"  - {m}" for m in self.missed)
        return "\n".join(out)


# -- process helpers ---------------------------------------------------------------------


def raise_nofile(want: int = FD_TARGET) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE toward ``want`` (never above the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new = soft if soft >= want else (want if hard == resource.RLIM_INFINITY else min(want, hard))
    if new != soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


class LineReader:
    """A child's stdout, line by line, with a timeout (a thread does the blocking reads)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.q: queue.Queue[str | None] = queue.Queue()
        assert proc.stdout is not None
        stream = proc.stdout

        def pump() -> None:
            for raw in stream:
                self.q.put(raw.decode(errors="replace").rstrip("\n"))
            self.q.put(None)

        threading.Thread(target=pump, daemon=True, name="bench-line-reader").start()

    def expect(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {prefix!r} line within {timeout} s")
            try:
                line = self.q.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError(f"process ended before printing {prefix!r}")
            if line.startswith(prefix):
                return line


def helper(role: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, str(THIS), "--role", role, *args],
                            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)


class TreeWatch:
    """Remembers every process seen in a tree, so leftovers are found after the root is gone."""

    def __init__(self) -> None:
        self.seen: dict[tuple[int, float], Any] = {}

    def add(self, procs: list[Any]) -> None:
        for p in procs:
            try:
                self.seen.setdefault((p.pid, p.create_time()), p)
            except Exception:  # noqa: BLE001 - gone already
                pass

    def survivors(self) -> list[Any]:
        import psutil
        out = []
        for p in self.seen.values():
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    out.append(p)
            except psutil.NoSuchProcess:
                pass
        return out


class Sampler(threading.Thread):
    """Samples a process's RSS, its tree's RSS, its fds, every ``period`` s (bounded)."""

    def __init__(self, pid: int, watch: TreeWatch, period: float = 0.1, max_s: float = 600.0) -> None:
        super().__init__(daemon=True, name=f"bench-sampler-{pid}")
        import psutil
        self.proc = psutil.Process(pid)
        self.watch = watch
        self.period = period
        self.max_s = max_s
        self.stop_event = threading.Event()
        self.peak_rss = 0
        self.peak_tree_rss = 0
        self.peak_fds = 0
        self.samples = 0
        self.cpu0 = self._cpu()
        self.cpu1 = self.cpu0
        self.t0 = time.monotonic()
        self.t1 = self.t0

    def _cpu(self) -> float:
        t = self.proc.cpu_times()
        return t.user + t.system

    def tree_cpu(self) -> float:
        """CPU s of the process, its live descendants and the descendants they reaped."""
        import psutil
        try:
            return tree_cpu_s([self.proc, *self.proc.children(recursive=True)])
        except psutil.NoSuchProcess:
            return 0.0

    def sample(self) -> None:
        import psutil
        try:
            rss = self.proc.memory_info().rss
            children = self.proc.children(recursive=True)
            self.watch.add([self.proc, *children])
            tree = rss
            for c in children:
                try:
                    tree += c.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
            fds = self.proc.num_fds()
        except psutil.NoSuchProcess:
            return
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_tree_rss = max(self.peak_tree_rss, tree)
        self.peak_fds = max(self.peak_fds, fds)
        self.samples += 1

    def run(self) -> None:
        deadline = time.monotonic() + self.max_s
        while not self.stop_event.is_set() and time.monotonic() < deadline:
            self.sample()
            self.stop_event.wait(self.period)

    def finish(self) -> None:
        self.stop_event.set()
        self.join(5)
        self.sample()
        self.cpu1 = self._cpu()
        self.t1 = time.monotonic()

    @property
    def cpu_share(self) -> float:
        """CPU seconds per wall second of the process itself (1.0 = one core)."""
        return (self.cpu1 - self.cpu0) / max(1e-9, self.t1 - self.t0)


# -- the daemon ----------------------------------------------------------------------------

AGENTS = {name: f"bench_daemon_agents:{name}" for name in ("noop", "flood", "paced")}


@dataclass
class RunningDaemon:
    proc: subprocess.Popen[bytes]
    socket: str
    log: Path
    watch: TreeWatch

    def http(self, timeout: float = 30.0) -> Any:
        import httpx
        return httpx.Client(base_url="http://runnerd", transport=httpx.HTTPTransport(uds=self.socket),
                            timeout=timeout)


def start_daemon(tmp: Path) -> RunningDaemon:
    proc, sock, log = launch_runnerd(tmp, AGENTS, ['log_level = "warning"'])
    return RunningDaemon(proc, sock, log, TreeWatch())


def stop_daemon(d: RunningDaemon) -> tuple[int | None, float, list[str]]:
    """SIGTERM and wait; returns (exit code, seconds, processes of its tree still there 5 s later,
    which are then killed)."""
    import psutil
    try:
        d.watch.add([psutil.Process(d.proc.pid), *psutil.Process(d.proc.pid).children(recursive=True)])
    except psutil.NoSuchProcess:
        pass
    t0 = time.monotonic()
    code = stop_process(d.proc, timeout=30)
    took = time.monotonic() - t0
    left: list[str] = []
    deadline = time.monotonic() + 5
    while d.watch.survivors() and time.monotonic() < deadline:
        time.sleep(0.05)
    for p in d.watch.survivors():
        try:
            left.append(f"{p.pid} {' '.join(p.cmdline())[:70]}")
            p.kill()
        except psutil.NoSuchProcess:
            pass
    return code, took, left


# -- 1. POST -> RUN_STARTED --------------------------------------------------------------


def first_frame_after(client: Any, path: str, t0: float) -> tuple[float, bytes]:
    """Open the SSE stream; seconds from ``t0`` to the ``id: 1`` frame, then read to the end."""
    t_first = -1.0
    buf = b""
    with client.stream("GET", path) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"GET {path}: {resp.status_code} {resp.read()[:200]!r}")
        for chunk in resp.iter_raw():
            buf += chunk
            if t_first < 0 and b"\nid: 1\n" in buf:
                t_first = time.perf_counter() - t0
    if t_first < 0:
        raise RuntimeError(f"GET {path}: no id: 1 frame in {buf[:300]!r}")
    return t_first, buf


def bench_start(report: Report, sizes: Sizes, d: RunningDaemon) -> None:
    sec = "1. POST /v1/turns -> RUN_STARTED (id: 1) read by an SSE client"
    progress(f"== {sec}")
    post: list[float] = []
    started: list[float] = []
    health: list[float] = []
    reopen: list[float] = []
    with d.http() as client:
        def one() -> str:
            t0 = time.perf_counter()
            r = client.post("/v1/turns", json={"agent": "noop"})
            t_post = time.perf_counter() - t0
            if r.status_code != 201:
                raise RuntimeError(f"POST /v1/turns: {r.status_code} {r.text[:200]}")
            turn_id = r.json()["turn_id"]
            t_started, body = first_frame_after(client, f"/v1/turns/{turn_id}/events", t0)
            if b'"type":"RUN_FINISHED"' not in body:
                raise RuntimeError(f"turn {turn_id} did not finish: {body[-300:]!r}")
            post.append(t_post)
            started.append(t_started)
            return str(turn_id)

        for _ in range(3):  # warm-up: connections, the forkserver's first forks
            last = one()
        post.clear()
        started.clear()
        for _ in range(sizes.start_turns):
            last = one()
        for _ in range(sizes.floor_reqs):
            t0 = time.perf_counter()
            if client.get("/v1/health").status_code != 200:
                raise RuntimeError("health check failed")
            health.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            t1, _ = first_frame_after(client, f"/v1/turns/{last}/events", t0)
            reopen.append(t1)
    p50 = median(started)
    report.line(sec, f"client: httpx over the unix socket, {sizes.start_turns} sequential turns of an "
                     "agent that returns at once (3 warm-up turns first)")
    report.line(sec, f"POST returned (201)                         {dist(post)}")
    report.line(sec, f"POST -> id: 1 on the SSE stream              {dist(started)}")
    report.line(sec, f"floor: GET /v1/health round trip             {dist(health)}")
    report.line(sec, f"floor: open SSE of a finished turn -> id: 1  {dist(reopen)}")
    report.line(sec, f"p50 ratio to the floors: {p50 / median(health):.1f}x health, "
                     f"{p50 / median(reopen):.1f}x SSE open; "
                     + report.target("POST -> RUN_STARTED p50", p50 * 1e3, "<=", 15, " ms"))


# -- 2. single-client throughput ---------------------------------------------------------------


@dataclass
class Count:
    frames: int
    rate: float  # frames/s from the first-counted byte to the last
    nbytes: int
    tail: bytes


def count_frames(sock: socket.socket, start_at: int, deadline: float) -> Count:
    """Read to EOF, counting ``\\nid: ``; the clock starts at the chunk that brings frame ``start_at``."""
    pat = b"\nid: "
    frames = 0
    nbytes = 0
    prev = b""
    t_first = t_last = 0.0
    base = 0
    recv = sock.recv
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError("stream did not end in time")
        data = recv(1 << 18)
        if not data:
            break
        t_last = time.perf_counter()
        nbytes += len(data)
        frames += (prev + data[:4]).count(pat) + data.count(pat)  # across the chunk boundary too
        prev = data[-4:]
        if not t_first and frames >= start_at:
            t_first, base = t_last, frames
    if not t_first or t_last <= t_first:
        raise RuntimeError(f"too few frames to time ({frames})")
    return Count(frames, (frames - base) / (t_last - t_first), nbytes, prev)


def raw_writer_main(args: argparse.Namespace) -> int:
    """Helper: pre-format ``n`` SSE frames, connect, write them as fast as possible."""
    per = 1000
    blocks = []
    for start in range(1, args.n + 1, per):
        blocks.append(b"".join(b"id: %d\ndata: %s\n\n" % (s, RAW_LINE % s)
                               for s in range(start, min(args.n + 1, start + per))))
    data = b": connected\n\n" + b"".join(blocks)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(WAIT_S)
    sock.connect(args.socket)
    view = memoryview(data)
    for off in range(0, len(data), 1 << 16):
        sock.sendall(view[off:off + (1 << 16)])
    sock.close()
    return 0


def raw_rate(tmp: Path, n: int) -> Count:
    path = str(tmp / f"raw-{time.monotonic_ns()}.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    listener.settimeout(WAIT_S)
    proc = helper("raw-writer", "--socket", path, "--n", str(n))
    try:
        conn, _ = listener.accept()
        conn.settimeout(WAIT_S)
        with conn:
            result = count_frames(conn, 1, time.monotonic() + WAIT_S)
        proc.wait(WAIT_S)
    finally:
        listener.close()
        stop_process(proc)
        os.unlink(path)
    if result.frames != n:
        raise RuntimeError(f"raw: counted {result.frames} of {n} frames")
    return result


def sse_request(path: str) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: runnerd\r\nAccept: text/event-stream\r\n"
            "Connection: close\r\n\r\n").encode()


PER_MESSAGE = 1000  # text-message length of the flood agent, in deltas


def flood_frames(n: int) -> int:
    """RUN_STARTED, per message START + contents + END, RUN_FINISHED."""
    return n + 2 * math.ceil(n / PER_MESSAGE) + 2


ENDED_EARLY: list[str] = []  # status snapshots seen ended before their last_seq had the terminal event
SETTLE_S: list[float] = []  # turn ended -> its compaction recorded, per flood turn


def settle(client: Any, turn_id: str) -> None:
    """Wait (bounded) until the daemon's background compaction of ``turn_id`` is done, so it
    does not compete with the next measurement. A daemon without compaction returns at once."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < WAIT_S:
        info = client.get(f"/v1/turns/{turn_id}").json()
        if info.get("ended_at") is not None and info.get("compaction", "none") is not None:
            if "compaction" in info:
                SETTLE_S.append(time.monotonic() - t0)
            return
        time.sleep(0.02)
    raise TimeoutError(f"turn {turn_id} not compacted within {WAIT_S} s")


def daemon_rate(d: RunningDaemon, client: Any, n: int, batch: int) -> Count:
    r = client.post("/v1/turns", json={"agent": "flood", "input": {"n": n, "batch": batch,
                                                                  "per_message": PER_MESSAGE}})
    if r.status_code != 201:
        raise RuntimeError(f"POST flood: {r.status_code} {r.text[:200]}")
    turn_id = r.json()["turn_id"]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(WAIT_S)
    with sock:
        sock.connect(d.socket)
        sock.sendall(sse_request(f"/v1/turns/{turn_id}/events"))
        result = count_frames(sock, 2, time.monotonic() + 4 * WAIT_S)  # frame 2: the first agent event
    if result.frames != flood_frames(n):
        raise RuntimeError(f"flood: counted {result.frames} frames, expected {flood_frames(n)}")
    settle(client, turn_id)
    return result


def replay_rate(d: RunningDaemon, turn_id: str, n: int) -> Count:
    """SSE of a finished turn from seq 0: the serving path alone (older events come from the log)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(WAIT_S)
    with sock:
        sock.connect(d.socket)
        sock.sendall(sse_request(f"/v1/turns/{turn_id}/events"))
        result = count_frames(sock, 1, time.monotonic() + 4 * WAIT_S)
    if result.frames != flood_frames(n):
        raise RuntimeError(f"replay: counted {result.frames} frames, expected {flood_frames(n)}")
    return result


def relay_only_rate(client: Any, n: int) -> tuple[float, str]:
    """No reader at all: events/s from RUN_STARTED to the end (the daemon's started_at/ended_at)."""
    r = client.post("/v1/turns", json={"agent": "flood", "input": {"n": n, "batch": 1,
                                                                  "per_message": PER_MESSAGE}})
    if r.status_code != 201:
        raise RuntimeError(f"POST flood: {r.status_code} {r.text[:200]}")
    turn_id = r.json()["turn_id"]
    deadline = time.monotonic() + 4 * WAIT_S
    while time.monotonic() < deadline:
        info = client.get(f"/v1/turns/{turn_id}").json()
        if info["ended_at"] is not None:
            if info["status"] != "succeeded":
                raise RuntimeError(f"flood ended {info['status']} at seq {info['last_seq']}")
            if info["last_seq"] != flood_frames(n):
                # runnerd marks the turn ended a moment before last_seq counts the terminal event
                ENDED_EARLY.append(f"status {info['status']} with last_seq {info['last_seq']} "
                                   f"while the terminal event is seq {flood_frames(n)}")
                time.sleep(0.005)
                continue
            settle(client, turn_id)
            return flood_frames(n) / (info["ended_at"] - info["started_at"]), str(turn_id)
        time.sleep(0.02)
    raise TimeoutError("flood turn did not end")


def bench_throughput(report: Report, sizes: Sizes, d: RunningDaemon, tmp: Path) -> None:
    sec = "2. One SSE client's throughput, ~100-byte events"
    progress(f"== {sec}")
    raw: list[Count] = []
    one: list[Count] = []
    many: list[Count] = []
    alone: list[float] = []
    replay: list[Count] = []
    n = sizes.flood_events
    with d.http() as client:
        daemon_rate(d, client, min(n, 20_000), 1)  # warm-up
        for _ in range(sizes.repeats):  # interleaved, so drift hits every variant alike
            raw.append(raw_rate(tmp, n))
            one.append(daemon_rate(d, client, n, 1))
            many.append(daemon_rate(d, client, n, 100))
            rate, turn_id = relay_only_rate(client, n)
            alone.append(rate)
            replay.append(replay_rate(d, turn_id, n))

    def med(counts: list[Count]) -> Count:
        return sorted(counts, key=lambda c: c.rate)[len(counts) // 2]

    a, b, c, e = med(raw), med(one), med(many), med(replay)
    report.line(sec, f"{n:,} TEXT_MESSAGE_CONTENT events per run (in text messages of {PER_MESSAGE:,}), "
                     f"median of {sizes.repeats}; client: one plain unix socket (recv 256 KiB, counts "
                     "'\\nid: '), timed from the first agent event to EOF")
    for label, x in (("(a) raw: pre-formatted SSE bytes, unix socket", a),
                     ("(b) runnerd live, agent ctx.emit per event", b),
                     ("(c) runnerd live, agent ctx.emit_many of 100", c),
                     ("(e) runnerd replay of a finished turn", e)):
        report.line(sec, f"{label:<48} {x.rate:>10,.0f} events/s  "
                         f"({x.rate * x.nbytes / x.frames / 2**20:.1f} MiB/s, {x.nbytes / x.frames:.0f} B/frame)")
    report.line(sec, f"{'(d) runnerd, same agent as (b), no reader':<48} {median(alone):>10,.0f} events/s  "
                     "(relay alone: RUN_STARTED -> end, daemon clock)")
    if ENDED_EARLY:
        report.notes.append(f"GET /v1/turns/{{id}} answered {ENDED_EARLY[0]} ({len(ENDED_EARLY)} time(s)): "
                            "the turn's status is set ended before last_seq is advanced")
    if SETTLE_S:
        report.line(sec, f"between runs the benchmark waits for the daemon's background compaction of the "
                         f"finished turn (up to {max(SETTLE_S):.1f} s after the stream ended)")
    report.line(sec, f"(b)/(a) = {b.rate / a.rate:.3f}   (c)/(a) = {c.rate / a.rate:.3f}   "
                     f"(e)/(a) = {e.rate / a.rate:.3f}   (b)/(d) = {b.rate / median(alone):.2f}   "
                     f"(c)/(b) = {c.rate / b.rate:.2f}")


# -- 3. fan-out: the subscriber helper -------------------------------------------------------------


class Subscriber(asyncio.Protocol):
    """One raw HTTP/1.1 SSE client: de-chunks, splits frames, checks seqs, times ticks."""

    def __init__(self, request: bytes, lat: "array.array[int]", loop: asyncio.AbstractEventLoop) -> None:
        self.request = request
        self.lat = lat
        self.headers: bytes | None = None
        self.head_buf = b""
        self.chunked = False
        self.cbuf = b""
        self.cneed = 0
        self.sse = b""
        self.status = 0
        self.next_seq = 1
        self.frames = 0
        self.ticks = 0
        self.terminal = False
        self.bad: str | None = None
        self.transport: asyncio.Transport | None = None
        self.connected: asyncio.Future[int] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.connected.done():
            self.connected.set_exception(exc or ConnectionError("closed before the headers"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        if self.headers is None:
            self.head_buf += data
            end = self.head_buf.find(b"\r\n\r\n")
            if end < 0:
                return
            self.headers = self.head_buf[:end].lower()
            data = self.head_buf[end + 4:]
            self.head_buf = b""
            self.status = int(self.headers.split(b" ", 2)[1])
            self.chunked = b"transfer-encoding: chunked" in self.headers
            if not self.connected.done():
                self.connected.set_result(self.status)
        if self.chunked:
            data = self._dechunk(data)
        if not data:
            return
        frames = (self.sse + data).split(b"\n\n")
        self.sse = frames.pop()
        for f in frames:
            if not f.startswith(b"id: "):
                continue  # ": connected", keep-alives
            nl = f.find(b"\n")
            seq = int(f[4:nl])
            if seq != self.next_seq and self.bad is None:
                self.bad = f"expected seq {self.next_seq}, got {seq}"
            self.next_seq = seq + 1
            self.frames += 1
            j = f.find(b'{"t":', nl)
            if j >= 0:
                self.lat.append(now - int(f[j + 5:f.find(b",", j)]))
                self.ticks += 1
            elif b'"type":"RUN_FINISHED"' in f or b'"type":"RUN_ERROR"' in f:
                self.terminal = True

    def _dechunk(self, data: bytes) -> bytes:
        buf = self.cbuf + data
        out = []
        while buf:
            if self.cneed == 0:
                i = buf.find(b"\r\n")
                if i < 0:
                    break
                line, buf = buf[:i], buf[i + 2:]
                if not line:
                    continue  # the CRLF that ends a chunk's data
                size = int(line.split(b";")[0], 16)
                if size == 0:
                    buf = b""
                    break
                self.cneed = size
            else:
                piece = buf[:self.cneed]
                out.append(piece)
                buf = buf[len(piece):]
                self.cneed -= len(piece)
        self.cbuf = buf
        return b"".join(out)


async def subscribe(args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    lat: array.array[int] = array.array("q")
    request = sse_request(args.path)
    sem = asyncio.Semaphore(CONNECT_CONCURRENCY)
    errors: Counter[str] = Counter()
    t_start = time.monotonic()

    async def connect() -> Subscriber | None:
        async with sem:
            try:
                _, sub = await asyncio.wait_for(
                    loop.create_unix_connection(lambda: Subscriber(request, lat, loop), args.socket), 30)
                await asyncio.wait_for(sub.connected, 30)
                return sub
            except Exception as exc:  # noqa: BLE001 - counted and reported
                errors[f"connect: {type(exc).__name__}: {str(exc)[:60]}"] += 1
                return None

    subs = [s for s in await asyncio.gather(*(connect() for _ in range(args.count))) if s is not None]
    connect_s = time.monotonic() - t_start
    print(f"CONNECTED {len(subs)} {args.count - len(subs)} {connect_s:.3f}", flush=True)
    pending = [s.closed for s in subs]
    if pending:
        await asyncio.wait(pending, timeout=args.timeout)
    for s in subs:
        if not s.closed.done() and s.transport is not None:
            errors["still open at the deadline"] += 1
            s.transport.abort()
    expected_frames = args.ticks + 2  # RUN_STARTED, the ticks, the terminal event
    complete = 0
    for s in subs:
        if s.status != 200:
            errors[f"status {s.status}"] += 1
        elif s.bad is not None:
            errors["seq gap or duplicate"] += 1
        elif not s.terminal or s.frames != expected_frames or s.ticks != args.ticks:
            errors[f"incomplete (got {s.frames} frames)"] += 1
        else:
            complete += 1
    with open(args.out + ".lat", "wb") as f:
        lat.tofile(f)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"count": args.count, "connected": len(subs), "complete": complete, "errors": dict(errors),
            "connect_s": connect_s, "cpu_s": usage.ru_utime + usage.ru_stime,
            "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0]}


def subscriber_main(args: argparse.Namespace) -> int:
    raise_nofile()
    result = asyncio.run(subscribe(args))
    Path(args.out).write_text(json.dumps(result))
    print("DONE", flush=True)
    return 0


# -- 3. fan-out: the naive baseline server -------------------------------------------------------------


def naive_server_main(args: argparse.Namespace) -> int:
    """ThreadingHTTPServer-style: a thread per client, a per-client queue.Queue fed by a
    dispatcher thread that reads a ``multiprocessing.Queue`` filled by a producer process."""
    import http.server
    import multiprocessing
    import socketserver

    import bench_daemon_agents

    raise_nofile()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    lock = threading.Lock()
    clients: set[queue.Queue[tuple[bytes, bool]]] = set()
    history: list[tuple[bytes, bool]] = []
    seq = 0

    def frame(event: dict[str, Any], last: bool = False) -> tuple[bytes, bool]:
        nonlocal seq
        seq += 1
        data = json.dumps({"seq": seq, **event}, separators=(",", ":")).encode()
        return b"id: %d\ndata: %s\n\n" % (seq, data), last

    history.append(frame({"type": "RUN_STARTED", "threadId": "t", "runId": "naive"}))

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # the stream ends when the connection closes

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            q: queue.Queue[tuple[bytes, bool]] = queue.Queue()
            with lock:
                backlog = list(history)
                clients.add(q)
            try:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(b": connected\n\n" + b"".join(f for f, _ in backlog))
                if backlog and backlog[-1][1]:
                    return
                while True:
                    data, last = q.get(timeout=args.max_s)
                    self.wfile.write(data)
                    if last:
                        return
            except (OSError, queue.Empty):
                pass
            finally:
                with lock:
                    clients.discard(q)

    class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True
        request_queue_size = 1024  # the same listen backlog as runnerd (socketserver's default is 5)

    ctx = multiprocessing.get_context("spawn")
    mpq: Any = ctx.Queue()
    producer = ctx.Process(target=bench_daemon_agents.naive_emitter,
                           args=(mpq, args.go, args.rate, args.ticks), daemon=True)
    producer.start()

    def dispatch() -> None:
        deadline = time.monotonic() + args.max_s
        while time.monotonic() < deadline:
            try:
                item = mpq.get(timeout=0.5)
            except queue.Empty:
                continue
            if item is None:
                f = frame({"type": "RUN_FINISHED", "threadId": "t", "runId": "naive",
                           "outcome": {"type": "success"}}, last=True)
            else:
                f = frame(item)
            with lock:
                history.append(f)
                for q in clients:
                    q.put(f)
            if item is None:
                return

    server = Server(args.socket, Handler)
    threading.Thread(target=dispatch, daemon=True, name="naive-dispatch").start()
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    serving.start()
    print("READY", flush=True)
    stop.wait(args.max_s)
    server.shutdown()
    server.server_close()
    producer.join(2)
    if producer.is_alive():
        producer.kill()
        producer.join(2)
    return 0


# -- 3. fan-out: the orchestration ---------------------------------------------------------------------


@dataclass
class FanResult:
    subscribers: int
    connected: int
    complete: int
    errors: dict[str, int]
    lat_s: list[float]
    connect_s: float
    client_cpu_s: float
    sampler: Sampler
    nofile: int
    other_cpu_s: float  # machine CPU not used by the server's tree, the clients or us, during the run
    wall_s: float


def run_fanout(tmp: Path, tag: str, sock: str, path: str, go: Path, sizes: Sizes, ticks: int,
               server_pid: int, watch: TreeWatch) -> FanResult:
    per = [sizes.subscribers // SUBSCRIBER_PROCS + (1 if i < sizes.subscribers % SUBSCRIBER_PROCS else 0)
           for i in range(SUBSCRIBER_PROCS)]
    outs = [str(tmp / f"{tag}-sub{i}.json") for i in range(SUBSCRIBER_PROCS)]
    timeout = sizes.fan_seconds + WAIT_S
    procs = [helper("subscribe", "--socket", sock, "--path", path, "--count", str(k), "--ticks", str(ticks),
                    "--out", out, "--timeout", str(timeout)) for k, out in zip(per, outs)]
    readers = [LineReader(p) for p in procs]
    sampler = Sampler(server_pid, watch)
    machine0, self0, tree0, t0 = cpu_seconds()[0], own_cpu(), sampler.tree_cpu(), time.monotonic()
    sampler.start()
    try:
        connect_s = 0.0
        for r in readers:
            _, ok, failed, secs = r.expect("CONNECTED", WAIT_S * 2).split()
            connect_s = max(connect_s, float(secs))
            progress(f"   {tag}: client process connected {ok} (failed {failed}) in {float(secs):.2f} s")
        sampler.cpu0, sampler.t0 = sampler._cpu(), time.monotonic()  # CPU over the emitting window
        go.touch()
        for r in readers:
            r.expect("DONE", timeout + 30)
        for p in procs:
            p.wait(30)
    finally:
        tree1 = sampler.tree_cpu()
        sampler.finish()
        for p in procs:
            stop_process(p, 5)
    machine1, self1, wall = cpu_seconds()[0], own_cpu(), time.monotonic() - t0
    results = [json.loads(Path(out).read_text()) for out in outs]
    lat: list[float] = []
    for out in outs:
        a = array.array("q")
        with open(out + ".lat", "rb") as f:
            a.frombytes(f.read())
        lat.extend(x / 1e9 for x in a)
    errors: Counter[str] = Counter()
    for res in results:
        errors.update(res["errors"])
    return FanResult(subscribers=sizes.subscribers, connected=sum(r["connected"] for r in results),
                     complete=sum(r["complete"] for r in results), errors=dict(errors), lat_s=lat,
                     connect_s=connect_s, client_cpu_s=sum(r["cpu_s"] for r in results), sampler=sampler,
                     nofile=min(r["nofile"] for r in results), wall_s=wall,
                     other_cpu_s=max(0.0, (machine1 - machine0) - (tree1 - tree0) - (self1 - self0)
                                     - sum(r["cpu_s"] for r in results)))


def fan_lines(report: Report, sec: str, label: str, r: FanResult, ticks: int) -> None:
    report.line(sec, f"{label}: {r.complete}/{r.subscribers} subscribers got every event in order "
                     f"({r.connected} connected in {r.connect_s:.2f} s)"
                     + (f"; problems: {r.errors}" if r.errors else ""))
    got = len(r.lat_s)
    report.line(sec, f"{label}: delivery latency {dist(r.lat_s) if got else 'n/a'}; "
                     f"{got:,} of {r.subscribers * ticks:,} tick deliveries")
    s = r.sampler
    report.line(sec, f"{label}: server RSS peak {mib(s.peak_rss)}, with its child processes "
                     f"{mib(s.peak_tree_rss)}; peak fds {s.peak_fds}; server CPU {s.cpu_share:.2f} core "
                     f"while emitting; client processes' CPU {r.client_cpu_s:.1f} s in total; other "
                     f"processes on the machine {r.other_cpu_s:.1f} core-s of "
                     f"{(os.cpu_count() or 1) * r.wall_s:.0f}")


def bench_fanout(report: Report, sizes: Sizes, d: RunningDaemon, tmp: Path) -> None:
    import psutil
    sec = "3. Fan-out: subscribers on one turn"
    progress(f"== {sec}")
    ticks = int(sizes.rate * sizes.fan_seconds)
    dproc = psutil.Process(d.proc.pid)
    idle_rss = dproc.memory_info().rss
    soft, hard = dproc.rlimit(psutil.RLIMIT_NOFILE)
    report.line(sec, f"{sizes.subscribers} subscribers in {SUBSCRIBER_PROCS} asyncio client processes "
                     f"(raw unix-socket HTTP/1.1, {CONNECT_CONCURRENCY} connects in flight each), all "
                     f"connected before the first tick; {ticks} ticks at {sizes.rate:g}/s "
                     f"({sizes.fan_seconds:g} s) + RUN_STARTED + terminal")
    report.line(sec, f"runnerd: RLIMIT_NOFILE soft/hard {soft}/{hard} (inherited, not raised); listen "
                     f"backlog 1024 (somaxconn {Path('/proc/sys/net/core/somaxconn').read_text().strip()}); "
                     f"daemon RSS before {mib(idle_rss)}")

    # runnerd
    go = tmp / "go-runnerd"
    with d.http() as client:
        r = client.post("/v1/turns", json={"agent": "paced", "input": {
            "go": str(go), "rate": sizes.rate, "count": ticks}})
        if r.status_code != 201:
            raise RuntimeError(f"POST paced: {r.status_code} {r.text[:200]}")
        turn_id = r.json()["turn_id"]
        ours = run_fanout(tmp, "runnerd", d.socket, f"/v1/turns/{turn_id}/events", go, sizes, ticks,
                          d.proc.pid, d.watch)
        info = client.get(f"/v1/turns/{turn_id}").json()
    fan_lines(report, sec, "runnerd", ours, ticks)
    report.line(sec, f"runnerd: turn {info['status']}, last_seq {info['last_seq']}")

    # the naive server
    naive_sock = str(tmp / "naive.sock")
    go = tmp / "go-naive"
    server = helper("naive-server", "--socket", naive_sock, "--go", str(go), "--rate", str(sizes.rate),
                    "--ticks", str(ticks), "--max-s", str(sizes.fan_seconds + 3 * WAIT_S))
    watch = TreeWatch()
    try:
        LineReader(server).expect("READY", WAIT_S)
        naive = run_fanout(tmp, "naive", naive_sock, "/events", go, sizes, ticks, server.pid, watch)
    finally:
        stop_process(server)
        for p in watch.survivors():
            p.kill()
    fan_lines(report, sec, "naive  ", naive, ticks)

    p99 = pct(ours.lat_s, 99) if ours.lat_s else float("inf")
    report.line(sec, "runnerd: " + report.target("subscribers complete", ours.complete, ">=",
                                                 sizes.subscribers, ""))
    report.line(sec, "runnerd: " + report.target("delivery p99", p99 * 1e3, "<=", 250, " ms"))
    report.line(sec, "runnerd: " + report.target("daemon RSS peak", ours.sampler.peak_rss / 2**20, "<=",
                                                 200, " MiB"))
    if naive.lat_s:
        report.line(sec, f"naive/runnerd: delivery p50 {median(naive.lat_s) / median(ours.lat_s):.2f}x, "
                         f"p99 {pct(naive.lat_s, 99) / p99:.2f}x, server RSS "
                         f"{naive.sampler.peak_rss / ours.sampler.peak_rss:.2f}x, "
                         f"complete {naive.complete}/{ours.complete}")
    report.line(sec, f"client RLIMIT_NOFILE soft limit raised to {ours.nofile}")


# -- main ------------------------------------------------------------------------------------------


def wait_quiet(max_wait_s: float = 90.0, busy_below: float = 10.0, quiet_s: int = 3) -> tuple[float, float]:
    """Wait (bounded) for ``quiet_s`` idle seconds in a row: other work would skew every number."""
    import psutil
    t0 = time.monotonic()
    run: list[float] = []
    while True:
        busy = psutil.cpu_percent(interval=1.0)
        run = run + [busy] if busy < busy_below else []
        if len(run) >= quiet_s or time.monotonic() - t0 > max_wait_s:
            return max(run or [busy]), time.monotonic() - t0


def orphaned_cpu(d: RunningDaemon) -> float:
    """CPU s of the daemon's children (forkserver and the turns it reaped): they outlive the
    daemon by a moment, nobody waits for them, so our RUSAGE_CHILDREN never sees them."""
    import psutil
    total = 0.0
    try:
        for c in psutil.Process(d.proc.pid).children():
            t = c.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    except psutil.NoSuchProcess:
        pass
    return total


class OtherLoad:
    """Machine CPU used by processes that are not this benchmark's, over a section:
    machine busy - us - our reaped children (helpers) - the daemon's tree (live, and reaped by it)."""

    def __init__(self, d: RunningDaemon) -> None:
        import psutil
        self.daemon = psutil.Process(d.proc.pid)

    def _daemon_tree(self) -> float:
        import psutil
        total = 0.0
        try:
            procs = [self.daemon, *self.daemon.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0.0
        for p in procs:
            try:
                t = p.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
            except psutil.NoSuchProcess:
                pass
        return total

    def _now(self) -> tuple[float, float, float, float]:
        machine, ours = cpu_seconds()
        return machine, ours, self._daemon_tree(), time.monotonic()

    def __enter__(self) -> OtherLoad:
        self.start = self._now()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._now()
        self.wall = end[3] - self.start[3]
        self.other = max(0.0, (end[0] - self.start[0]) - (end[1] - self.start[1]) - (end[2] - self.start[2]))

    def line(self) -> str:
        return (f"other processes on the machine during this section: {self.other:.1f} core-s of "
                f"{(os.cpu_count() or 1) * self.wall:.0f}")


def git_version() -> str:
    """The commit measured, and whether the tree had uncommitted changes."""
    try:
        def git(*a: str) -> str:
            return subprocess.run(["git", *a], cwd=SCRIPTS.parent, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return f"{head}{' + uncommitted changes' if dirty else ''}" if head else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def own_cpu() -> float:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def cpu_seconds() -> tuple[float, float]:
    """(whole machine busy CPU s, CPU s of this process and its waited-for descendants)."""
    import psutil
    t = psutil.cpu_times()
    busy = sum(t) - t.idle - getattr(t, "iowait", 0.0)
    own = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        u = resource.getrusage(who)
        own += u.ru_utime + u.ru_stime
    return busy, own


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, ~30 s")
    parser.add_argument("--role", choices=("subscribe", "naive-server", "raw-writer"), help=argparse.SUPPRESS)
    parser.add_argument("--socket", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ticks", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--go", help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--max-s", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "subscribe":
        return subscriber_main(args)
    if args.role == "naive-server":
        return naive_server_main(args)
    if args.role == "raw-writer":
        return raw_writer_main(args)

    sizes = QUICK if args.quick else FULL
    raise_nofile()
    code_version = git_version()
    busy, waited = wait_quiet()
    tmp = Path(tempfile.mkdtemp(prefix="runnerd-bench-daemon-"))
    report = Report()
    report.notes.append(f"machine before the run: at most {busy:.0f}% CPU busy in each of the last 3 s "
                        f"(waited {waited:.0f} s for < 10%), load average {os.getloadavg()[0]:.2f}")
    cpu0 = cpu_seconds()
    started = time.perf_counter()
    d = start_daemon(tmp)
    progress(f"runnerd pid {d.proc.pid} on {d.socket}")
    leftovers: list[str] = []
    try:
        # The fan-out runs before the floods, on a daemon that has only run small turns.
        sections: list[tuple[str, Callable[[], None]]] = [
            ("1.", lambda: bench_start(report, sizes, d)),
            ("3.", lambda: bench_fanout(report, sizes, d, tmp)),
            ("2.", lambda: bench_throughput(report, sizes, d, tmp)),
        ]
        for prefix, run in sections:
            with OtherLoad(d) as load:
                run()
            title = next(t for t in report.sections if t.startswith(prefix))
            report.line(title, load.line())
    finally:
        orphans = orphaned_cpu(d)
        code, took, leftovers = stop_daemon(d)
        report.notes.append(f"runnerd stopped by SIGTERM: exit code {code} after {took:.2f} s")
        log_tail = d.log.read_text(errors="replace").strip().splitlines()[-5:]
        shutil.rmtree(tmp, ignore_errors=True)
    cpu1 = cpu_seconds()
    wall = time.perf_counter() - started
    ours = cpu1[1] - cpu0[1] + orphans
    other = max(0.0, (cpu1[0] - cpu0[0]) - ours)
    report.notes.append(f"CPU during the run: machine {cpu1[0] - cpu0[0]:.0f} core-s of "
                        f"{(os.cpu_count() or 1) * wall:.0f} available; this benchmark's processes "
                        f"(daemon and turns included) {ours:.0f} core-s; other processes {other:.0f} core-s; "
                        f"load average at the end {os.getloadavg()[0]:.2f}")
    if other > 0.05 * (os.cpu_count() or 1) * wall:
        report.notes.append("WARNING: other processes used more than 5% of the machine during the run; "
                            "these numbers are skewed by them")
    import psutil
    mine = [f"{p.pid} {' '.join(p.cmdline())[:70]}" for p in psutil.Process().children(recursive=True)]
    print(f"runnerd daemon/SSE benchmark ({'quick' if args.quick else 'default'} sizes), "
          f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, {wall:.0f} s, code {code_version}")
    print(report.render())
    if log_tail and any('"level":"error"' in x or "error" in x.lower() for x in log_tail):
        print("\nrunnerd log tail:\n  " + "\n  ".join(log_tail))
    print(f"\nLeftover processes: {leftovers + mine or 'none'}")
    return 1 if leftovers or mine else 0


if __name__ == "__main__":
    sys.exit(main())
