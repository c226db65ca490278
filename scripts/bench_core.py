#!/usr/bin/env python3
"""Benchmark of runnerd's core runtime against baselines measured in the same run.

    python scripts/bench_core.py           # default sizes, under ~2 minutes on 2 cores
    python scripts/bench_core.py --quick   # ~20 s, for a smoke check

Measures (events are ~100 bytes of JSON):
1. throughput: (a) the raw limit, a child writing batched frames to a Pipe;
   (b) runnerd's relay, agent -> pipe -> relay -> log -> registry -> reader;
   (c) the naive pattern, one pickled dict per ``multiprocessing.Queue.put``;
2. emit -> reader latency at a paced 10k events/s, idle and CPU-busy child,
   runnerd against the naive Queue pattern;
3. ``start_turn`` -> ``RUN_STARTED`` visible, forkserver and spawn, with a
   daemon-like ``__main__`` (against plain multiprocessing starts from it);
4. cooperative cancel -> terminal event;
5. forced tree kill (SIGTERM ignored everywhere, a double-forked grandchild)
   -> terminal event, and whether any process of the turn survived.

``scripts/`` is not a package: the agents live in ``bench_agents`` next to this
file and reach the turn's process through ``sys.path`` (handed to children by
multiprocessing) and ``PYTHONPATH`` (for the forkserver, see ``main``).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
sys.path.insert(0, str(SCRIPTS))  # bench_agents; multiprocessing hands sys.path to children

import psutil  # noqa: E402

import bench_agents  # noqa: E402
from ipc import events as ev  # noqa: E402
from supervisor.config import Config  # noqa: E402
from supervisor.core import Supervisor  # noqa: E402
from supervisor.eventlog import line_seq  # noqa: E402
from supervisor.logs import configure_logging  # noqa: E402
from supervisor.spawn import _main_hidden  # noqa: E402  (the supervisor's own guard, for the reference starts)

AGENTS = {name: f"bench_agents:{name}"
          for name in ("noop", "preload_probe", "flood", "paced", "cooperative", "stubborn")}
RATE = 10_000.0  # events/s for the latency runs
PER_FRAME = 100  # events per frame in the raw-pipe baseline
WAIT_S = 60.0  # bound on any single wait, so a broken run fails instead of hanging

# A stand-in for the `runnerd` console script: the daemon stack is imported at the
# top of __main__, which spawn/forkserver children re-run unless it is hidden.
HEAVY_MAIN = '''\
import sys
import click, httpx, starlette.applications, starlette.routing, uvicorn  # noqa: F401
import supervisor.core  # noqa: F401

if __name__ == "__main__":
    sys.path.insert(0, {scripts!r})
    import bench_core
    sys.exit(bench_core.startup_main(sys.argv[1:]))
'''


@dataclass(frozen=True)
class Sizes:
    raw_events: int
    relay_events: int
    queue_events: int
    repeats: int  # throughput runs per variant (median reported)
    latency_s: float  # per latency run, at RATE
    startup_turns: int
    startup_baseline: int  # plain multiprocessing starts per variant
    cancel_turns: int
    kill_turns: int


FULL = Sizes(raw_events=1_000_000, relay_events=200_000, queue_events=200_000, repeats=3,
             latency_s=3.0, startup_turns=50, startup_baseline=8, cancel_turns=30, kill_turns=5)
QUICK = Sizes(raw_events=200_000, relay_events=50_000, queue_events=50_000, repeats=1,
              latency_s=1.0, startup_turns=15, startup_baseline=3, cancel_turns=10, kill_turns=2)


# -- statistics and the report ------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def median(values: Sequence[float]) -> float:
    return pct(values, 50)


@dataclass
class Report:
    sections: list[tuple[str, list[str]]] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)

    def section(self, title: str) -> None:
        self.sections.append((title, []))
        progress(f"== {title}")

    def line(self, text: str) -> None:
        self.sections[-1][1].append(text)
        progress("   " + text)

    def target(self, what: str, value: float, op: str, bound: float, fmt: str) -> str:
        ok = value >= bound if op == ">=" else value <= bound
        verdict = "met" if ok else "MISSED"
        if not ok:
            self.missed.append(f"{what}: {value:{fmt}} (target {op} {bound:{fmt}})")
        return f"target {op} {bound:{fmt}}: {verdict}"

    def render(self) -> str:
        out = []
        for title, lines in self.sections:
            out.append(f"\n{title}")
            out.extend(f"  {line}" for line in lines)
        out.append("\nTargets missed: " + ("none" if not self.missed else ""))
        out.extend(f"  - {m}" for m in self.missed)
        return "\n".join(out)


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


def dist(values_s: Sequence[float]) -> str:
    return (f"p50 {ms(pct(values_s, 50))}  p99 {ms(pct(values_s, 99))}  "
            f"max {ms(max(values_s))}  (n={len(values_s)})")


# -- helpers around a Supervisor -------------------------------------------------------


def wait_custom(sup: Supervisor, turn_id: str, name: str) -> tuple[int, Any]:
    """Block until the turn emits CUSTOM ``name``; return its seq and value."""
    for seq, event in sup.events(turn_id, timeout=WAIT_S):
        if isinstance(event, ev.Custom) and event.name == name:
            return seq, event.value
        if type(event).__name__ in ("RunFinished", "RunError"):
            raise RuntimeError(f"turn {turn_id} ended before {name!r}: {event}")
    raise RuntimeError(f"turn {turn_id} ended before {name!r}")


def wait_terminal(sup: Supervisor, turn_id: str, after: int) -> tuple[float, ev.Event]:
    """Block until the terminal event is visible; return when (perf_counter) and the event."""
    for _seq, event in sup.events(turn_id, after=after, timeout=WAIT_S):
        if isinstance(event, (ev.RunFinished, ev.RunError)):
            return time.perf_counter(), event
    raise RuntimeError(f"turn {turn_id}: no terminal event")


def is_cancelled(event: ev.Event) -> bool:
    return isinstance(event, ev.RunFinished) and event.outcome.type == "cancelled"


@contextmanager
def supervisor(state_dir: str, start_method: str = "forkserver", **overrides: Any) -> Iterator[Supervisor]:
    config = Config(agents=AGENTS, state_dir=state_dir, start_method=start_method,
                    log_level="warning", **overrides)
    with Supervisor(config) as sup:
        yield sup


# -- 1. throughput ---------------------------------------------------------------------


def raw_pipe_rate(n: int) -> float:
    """(a) A child sends PER_FRAME pre-encoded events per ``send_bytes``; we split them."""
    ctx = multiprocessing.get_context("spawn")
    reader, writer = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=bench_agents.raw_pipe_writer, args=(writer, n, PER_FRAME))
    proc.start()
    writer.close()
    count, first, last = 0, 0.0, 0.0
    try:
        while True:
            try:
                frame = reader.recv_bytes()
            except EOFError:
                break
            last = time.perf_counter()
            if not count:
                first = last
            count += len(frame.split(b"\n"))
    finally:
        reader.close()
        proc.join(WAIT_S)
    if count != n:
        raise RuntimeError(f"raw pipe: got {count} of {n} events")
    return (count - PER_FRAME) / (last - first)


def relay_rate(sup: Supervisor, n: int, batch: int) -> float:
    """(b) Agent events through runnerd, timed from the first agent event to the terminal one."""
    turn_id = sup.start_turn("flood", {"n": n, "batch": batch}).turn_id
    first_t, first_seq, last_t = 0.0, 0, 0.0
    last_line = b""
    for lines in sup.event_batches(turn_id, timeout=WAIT_S):  # stored bytes, as SSE sends them
        last_t = time.perf_counter()
        if not first_seq and line_seq(lines[-1]) >= 2:  # seq 1 is RUN_STARTED
            first_t, first_seq = last_t, line_seq(lines[-1])
        last_line = lines[-1]
    terminal = ev.decode_event(last_line)
    if line_seq(last_line) != n + 2 or not isinstance(terminal, ev.RunFinished):
        raise RuntimeError(f"relay: turn ended with seq {line_seq(last_line)} {terminal}")
    return (n - (first_seq - 1)) / (last_t - first_t)


def queue_rate(n: int) -> float:
    """(c) One pickled dict per Queue.put; a relay thread per turn gets and appends."""
    ctx = multiprocessing.get_context("spawn")
    q: Any = ctx.Queue()
    received: list[dict[str, Any]] = []
    times: list[float] = []

    def relay() -> None:
        while True:
            item = q.get(timeout=WAIT_S)
            if not times:
                times.append(time.perf_counter())
            if item is None:
                times.append(time.perf_counter())
                return
            received.append(item)

    thread = threading.Thread(target=relay, name="bench-queue-relay")
    thread.start()
    proc = ctx.Process(target=bench_agents.queue_writer, args=(q, n))
    proc.start()
    thread.join(WAIT_S * 2)
    proc.join(WAIT_S)
    if len(received) != n:
        raise RuntimeError(f"queue: got {len(received)} of {n} events")
    return (n - 1) / (times[1] - times[0])


def bench_throughput(report: Report, sizes: Sizes, state_dir: str) -> None:
    report.section("1. Throughput, events/s (~100-byte events; median of "
                   f"{sizes.repeats} run{'s' if sizes.repeats > 1 else ''})")
    raw: list[float] = []
    per_event: list[float] = []
    batched: list[float] = []
    naive: list[float] = []
    with supervisor(state_dir) as sup:
        for _ in range(sizes.repeats):  # interleaved, so drift hits every variant alike
            raw.append(raw_pipe_rate(sizes.raw_events))
            per_event.append(relay_rate(sup, sizes.relay_events, batch=1))
            batched.append(relay_rate(sup, sizes.relay_events, batch=PER_FRAME))
            naive.append(queue_rate(sizes.queue_events))
    a, b, b2, c = median(raw), median(per_event), median(batched), median(naive)
    report.line(f"(a)  raw Pipe, {PER_FRAME} pre-encoded events/frame       {a:>11,.0f}/s")
    report.line(f"(b)  runnerd, one ctx.emit per event              {b:>11,.0f}/s")
    report.line(f"(b') runnerd, ctx.emit_many of {PER_FRAME} per call        {b2:>11,.0f}/s")
    report.line(f"(c)  naive mp.Queue, one dict per put             {c:>11,.0f}/s")
    report.line(f"(b)/(a)  = {b / a:5.2f}x   " + report.target("throughput (b)/(a)", b / a, ">=", 0.6, ".2f"))
    report.line(f"(b)/(c)  = {b / c:5.2f}x   " + report.target("throughput (b)/(c)", b / c, ">=", 5.0, ".2f"))
    report.line(f"(b')/(a) = {b2 / a:5.2f}x   (b')/(c) = {b2 / c:5.2f}x")


# -- 2. latency ------------------------------------------------------------------------


def runnerd_latencies(sup: Supervisor, seconds: float, busy: bool) -> list[float]:
    """Seconds from the agent's ``monotonic_ns`` stamp to a reader thread's ``sup.events()``."""
    turn_id = sup.start_turn("paced", {"rate": RATE, "seconds": seconds, "busy": busy}).turn_id
    lat: list[float] = []

    def reader() -> None:
        for _seq, event in sup.events(turn_id, timeout=WAIT_S):
            now = time.monotonic_ns()
            if isinstance(event, ev.Custom) and event.name == "lat":
                lat.append((now - event.value["t"]) / 1e9)

    thread = threading.Thread(target=reader, name="bench-reader")
    thread.start()
    thread.join(seconds + WAIT_S)
    return lat


def queue_latencies(seconds: float, busy: bool) -> list[float]:
    """The same payload and pacing through the naive Queue pattern, timed at ``get``."""
    ctx = multiprocessing.get_context("spawn")
    q: Any = ctx.Queue()
    lat: list[float] = []

    def relay() -> None:
        while True:
            item = q.get(timeout=WAIT_S)
            now = time.monotonic_ns()
            if item is None:
                return
            lat.append((now - item["value"]["t"]) / 1e9)

    thread = threading.Thread(target=relay, name="bench-queue-relay")
    thread.start()
    proc = ctx.Process(target=bench_agents.queue_paced, args=(q, RATE, seconds, busy))
    proc.start()
    thread.join(seconds + WAIT_S)
    proc.join(WAIT_S)
    return lat


def bench_latency(report: Report, sizes: Sizes, state_dir: str) -> None:
    report.section(f"2. emit -> reader latency at {RATE:,.0f} events/s for {sizes.latency_s:g} s")
    with supervisor(state_dir) as sup:
        for busy in (False, True):
            label = "CPU-busy child" if busy else "idle child    "
            ours = runnerd_latencies(sup, sizes.latency_s, busy)
            naive = queue_latencies(sizes.latency_s, busy)
            p99 = pct(ours, 99)
            report.line(f"runnerd,  {label}  {dist(ours)}")
            report.line(f"mp.Queue, {label}  {dist(naive)}")
            report.line(f"   runnerd p99 {ms(p99)} vs Queue {ms(pct(naive, 99))} "
                        f"({pct(naive, 99) / p99:.1f}x lower); "
                        + report.target(f"latency p99, {label.strip()}", p99 * 1e3, "<=", 0.5, ".2f")
                        .replace(": ", " ms: ", 1))


# -- 3. start-up (run from a daemon-like __main__ in a subprocess) -------------------------


def startup_main(argv: list[str]) -> int:
    """Entry of the start-up measurement, called from the heavy ``__main__``; prints JSON."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--method", choices=("forkserver", "spawn"), required=True)
    parser.add_argument("--turns", type=int, required=True)
    parser.add_argument("--baseline", type=int, required=True)
    parser.add_argument("--state-dir", required=True)
    args = parser.parse_args(argv)
    configure_logging("warning")
    out: dict[str, Any] = {"start_turn": [], "run_started": []}
    with supervisor(args.state_dir, args.method) as sup:
        _seq, out["preloaded"] = wait_custom(sup, sup.start_turn("preload_probe").turn_id, "preloaded")
        sup.wait(sup.start_turn("noop").turn_id, WAIT_S)  # warm caches, as a running daemon has
        for _ in range(args.turns):
            t0 = time.perf_counter()
            turn_id = sup.start_turn("noop").turn_id
            out["start_turn"].append(time.perf_counter() - t0)
            for _seq, event in sup.events(turn_id, timeout=WAIT_S):
                if isinstance(event, ev.RunStarted):
                    out["run_started"].append(time.perf_counter() - t0)
                    break
            sup.wait(turn_id, WAIT_S)  # one turn at a time
        # Plain multiprocessing starts of a trivial target, same context (and, for
        # forkserver, the same server): with the parent's __main__ hidden as the
        # supervisor does, and without, where the child re-runs the heavy main.
        out["plain_hidden"], out["plain_unprotected"] = [], []
        ctx = multiprocessing.get_context(args.method)
        for _ in range(args.baseline):
            for key, hide in (("plain_hidden", True), ("plain_unprotected", False)):
                reader, writer = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=bench_agents.ping, args=(writer,))  # type: ignore[attr-defined]
                t0 = time.perf_counter()
                if hide:
                    with _main_hidden():
                        proc.start()
                else:
                    proc.start()
                writer.close()
                reader.recv_bytes()
                out[key].append(time.perf_counter() - t0)
                reader.close()
                proc.join(WAIT_S)
    print(json.dumps(out))
    return 0


def run_startup(method: str, sizes: Sizes, tmp: str) -> dict[str, Any]:
    main_path = Path(tmp) / "runnerd_like_main.py"
    main_path.write_text(HEAVY_MAIN.format(scripts=str(SCRIPTS)))
    state_dir = tempfile.mkdtemp(prefix=f"startup-{method}-", dir=tmp)
    cmd = [sys.executable, str(main_path), "--method", method, "--turns", str(sizes.startup_turns),
           "--baseline", str(sizes.startup_baseline), "--state-dir", state_dir]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"start-up run ({method}) failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def bench_startup(report: Report, sizes: Sizes, tmp: str) -> None:
    report.section("3. start_turn -> RUN_STARTED visible to a reader (parent __main__ imports "
                   "supervisor.core, starlette, uvicorn, httpx, click)")
    for method in ("forkserver", "spawn"):
        r = run_startup(method, sizes, tmp)
        started = r["run_started"]
        report.line(f"{method:<10} RUN_STARTED visible                  {dist(started)}")
        report.line(f"{method:<10} start_turn() returns                 {dist(r['start_turn'])}")
        report.line(f"{method:<10} plain Process, __main__ hidden       {dist(r['plain_hidden'])}")
        report.line(f"{method:<10} plain Process, __main__ re-run       {dist(r['plain_unprotected'])}")
        line = (f"{method:<10} unguarded plain start / runnerd RUN_STARTED, p50: "
                f"{median(r['plain_unprotected']) / median(started):.1f}x")
        if method == "forkserver":
            line += "; " + report.target("forkserver start p50 (ms)", median(started) * 1e3,
                                         "<=", 10.0, ".2f").replace(": ", " ms: ", 1)
            line += f"; agents preloaded: {r['preloaded']}"
        report.line(line)


# -- 4. cooperative cancel ------------------------------------------------------------------


def bench_cancel(report: Report, sizes: Sizes, state_dir: str) -> None:
    report.section("4. Cooperative cancel -> terminal event visible (agent polls "
                   "ctx.check_cancelled() with 0.5 ms sleeps)")
    times: list[float] = []
    with supervisor(state_dir) as sup:
        for _ in range(sizes.cancel_turns):
            turn_id = sup.start_turn("cooperative").turn_id
            seq, _pid = wait_custom(sup, turn_id, "ready")
            t0 = time.perf_counter()
            sup.cancel(turn_id)
            t1, terminal = wait_terminal(sup, turn_id, seq)
            if not is_cancelled(terminal):
                raise RuntimeError(f"cancel: unexpected terminal event {terminal}")
            times.append(t1 - t0)
    report.line(dist(times))
    report.line(report.target("cooperative cancel p99 (ms)", pct(times, 99) * 1e3, "<=", 20.0, ".2f")
                .replace(": ", " ms: ", 1))


# -- 5. forced tree kill ------------------------------------------------------------------


def survivors(procs: list[psutil.Process]) -> tuple[list[int], list[int]]:
    """(alive, zombie) pids among ``procs``; ``is_running`` checks the create time too."""
    alive, zombies = [], []
    for p in procs:
        try:
            if not p.is_running():
                continue
            (zombies if p.status() == psutil.STATUS_ZOMBIE else alive).append(p.pid)
        except psutil.NoSuchProcess:
            continue
    return alive, zombies


def bench_tree_kill(report: Report, sizes: Sizes, state_dir: str) -> None:
    grace = 0.2
    report.section(f"5. Forced tree kill: SIGTERM ignored by the agent and 3 grandchildren "
                   f"(one setsid + double fork); cancel_grace_s = kill_grace_s = {grace}")
    times: list[float] = []
    leaks: list[str] = []
    pids_seen = 0
    with supervisor(state_dir, cancel_grace_s=grace, kill_grace_s=grace) as sup:
        for _ in range(sizes.kill_turns):
            turn_id = sup.start_turn("stubborn").turn_id
            seq, value = wait_custom(sup, turn_id, "pids")
            procs = [psutil.Process(pid) for pid in [value["agent"], *value["grandchildren"]]]
            pids_seen += len(procs)
            t0 = time.perf_counter()
            sup.cancel(turn_id)
            t1, terminal = wait_terminal(sup, turn_id, seq)
            alive, zombies = survivors(procs)  # checked the moment the terminal event is visible
            if not is_cancelled(terminal):
                raise RuntimeError(f"tree kill: unexpected terminal event {terminal}")
            times.append(t1 - t0)
            if alive or zombies:
                leaks.append(f"turn {turn_id}: alive {alive}, zombie {zombies}")
                for p in procs:  # do not leave them behind whatever the supervisor did
                    try:
                        p.kill()
                    except psutil.NoSuchProcess:
                        pass
    bound = 2 * grace + 0.020
    report.line(dist(times))
    report.line(f"processes of the turn left when the terminal event was visible: "
                f"{len(leaks) and leaks or 0} (of {pids_seen} checked)")
    report.line(report.target("forced kill max (ms)", max(times) * 1e3, "<=", bound * 1e3, ".0f")
                .replace(": ", " ms: ", 1) + f" (escalation {2 * grace:g} s + 20 ms)")
    if leaks:
        report.missed.append("forced kill left processes: " + "; ".join(leaks))


# -- main -------------------------------------------------------------------------------------


def leftover_processes() -> list[str]:
    """Our descendants other than multiprocessing's forkserver and resource tracker."""
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(p.cmdline())
            if "multiprocessing.forkserver" in cmd or "multiprocessing.resource_tracker" in cmd:
                continue
            out.append(f"{p.pid} {p.status()} {cmd[:80]}")
        except psutil.NoSuchProcess:
            continue
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, ~20 s")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    configure_logging("warning")
    # Python 3.11's forkserver ignores the sys.path it is given (forkserver.main
    # drops sys_path), so without PYTHONPATH the agents would not be preloaded.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(SCRIPTS), os.environ.get("PYTHONPATH", "")]))
    tmp = tempfile.mkdtemp(prefix="runnerd-bench-")
    report = Report()
    started = time.perf_counter()
    try:
        bench_throughput(report, sizes, tempfile.mkdtemp(prefix="throughput-", dir=tmp))
        bench_latency(report, sizes, tempfile.mkdtemp(prefix="latency-", dir=tmp))
        bench_startup(report, sizes, tmp)
        bench_cancel(report, sizes, tempfile.mkdtemp(prefix="cancel-", dir=tmp))
        bench_tree_kill(report, sizes, tempfile.mkdtemp(prefix="kill-", dir=tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    leftovers = leftover_processes()
    print(f"runnerd core benchmark ({'quick' if args.quick else 'default'} sizes), "
          f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
          f"{time.perf_counter() - started:.0f} s")
    print(report.render())
    print(f"\nLeftover processes: {leftovers or 'none'}")
    return 1 if leftovers else 0


if __name__ == "__main__":
    sys.exit(main())
