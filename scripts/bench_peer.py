#!/usr/bin/env python3
"""runnerd beside LangGraph's Agent Server (``langgraph dev``, in-memory runtime), one run.

Both servers listen on loopback TCP and are driven by the same ``httpx.AsyncClient``
code; each agent emits the same small custom events ``{"t": monotonic_ns, "i": i}``
(runnerd: a turn process running ``bench_peer_agents.emit``; the peer: a one-node
StateGraph written to a temp dir at run time). Figures, the two systems alternated:

  1. POST -> first agent event at the client, p50 / p90;
  2. events/s to one client (first agent event -> stream end);
  3. cancel -> stream end, median;
  4. C concurrent runs x 200 events at 20 ev/s: delivery delay p50/p99 (event stamp ->
     client), server CPU (psutil, the server's process tree; for runnerd also split
     into the daemon process and the rest: forkserver and turns) and memory (PSS, USS).
     Repeated ``--load-rounds`` times, the systems alternated; medians. After each round,
     the floor: C bare Python processes pacing the same sleeps with asyncio, their own
     CPU (start-up excluded), i.e. what one process per turn costs before any supervisor
     work.

``--baseline-src DIR`` adds a third system: runnerd run from another checkout of its
code (``git archive <commit> | tar -x -C DIR``), driven like the others, for before /
after ratios measured in the same run. ``--sections`` runs a subset.

Installs nothing; the peer's venv is made beforehand (see scripts/README.md):
  .venv/bin/python scripts/bench_peer.py --peer-venv /tmp/peer-venv [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))

from benchlib import launch_runnerd, median, pct, stop_process, tree_cpu_s  # noqa: E402

TOKEN = "bench-peer-token-0123456789"
RUN_TIMEOUT_S = 120.0

PEER_GRAPH = '''\
"""Written by runnerd's scripts/bench_peer.py: n custom stream events, no LLM."""
import asyncio
import time
from typing import TypedDict

from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph


class State(TypedDict, total=False):
    n: int
    rate: float
    done: int


async def emit(state: State) -> State:
    write = get_stream_writer()
    n, rate = int(state["n"]), float(state.get("rate", 0))
    t0 = time.monotonic_ns()
    for i in range(n):
        if rate:
            delay = t0 + i * 1e9 / rate - time.monotonic_ns()
            if delay > 0:
                await asyncio.sleep(delay / 1e9)
        write({"t": time.monotonic_ns(), "i": i})
    return {"done": n}


builder = StateGraph(State)
builder.add_node("emit", emit)
builder.add_edge(START, "emit")
builder.add_edge("emit", END)
graph = builder.compile()
'''

Sink = Callable[[int, int], None]  # (client receive monotonic_ns, the event's own stamp "t")


@dataclass
class Run:
    t0: float = 0.0  # perf_counter at the POST that starts the run
    first: float = 0.0  # first agent event at the client
    cancel: float = 0.0  # cancel request sent
    end: float = 0.0  # stream end (terminal event, or the stream closed)
    events: int = 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class System:
    name = ""

    def __init__(self, proc: subprocess.Popen[bytes], base: str) -> None:
        self.proc, self.base = proc, base

    async def run(self, c: httpx.AsyncClient, n: int, rate: float = 0.0, sink: Sink | None = None,
                  cancel_after: int = 0) -> Run:
        return await asyncio.wait_for(self._run(c, n, rate, sink, cancel_after), RUN_TIMEOUT_S)

    async def _run(self, c: httpx.AsyncClient, n: int, rate: float, sink: Sink | None,
                   cancel_after: int) -> Run:
        raise NotImplementedError

    def tree(self) -> list[psutil.Process]:
        root = psutil.Process(self.proc.pid)
        return [root, *root.children(recursive=True)]


def _agent_event(r: Run, data: str, sink: Sink | None, stamp: Callable[[str], int]) -> None:
    """Count one agent event; hand its delivery delay to ``sink`` (JSON parsed only then)."""
    if r.events == 0:
        r.first = time.perf_counter()
    r.events += 1
    if sink is not None:
        sink(time.monotonic_ns(), stamp(data))


class Runnerd(System):
    name = "runnerd"

    def __init__(self, proc: subprocess.Popen[bytes], base: str, name: str = "runnerd") -> None:
        super().__init__(proc, base)
        self.name = name

    async def _run(self, c: httpx.AsyncClient, n: int, rate: float, sink: Sink | None,
                   cancel_after: int) -> Run:
        auth = {"authorization": f"Bearer {TOKEN}"}
        r = Run(t0=time.perf_counter())
        resp = await c.post(f"{self.base}/v1/turns", json={"agent": "peer", "input": {"n": n, "rate": rate}},
                            headers=auth)
        resp.raise_for_status()
        turn = resp.json()["turn_id"]
        cancel: asyncio.Task[httpx.Response] | None = None
        async with c.stream("GET", f"{self.base}/v1/turns/{turn}/events", headers=auth) as s:
            async for line in s.aiter_lines():
                if not line.startswith("data:"):
                    continue
                head = line[:60]
                if '"type":"CUSTOM"' in head:
                    _agent_event(r, line[5:], sink, lambda d: int(json.loads(d)["value"]["t"]))
                    if cancel_after and r.events == cancel_after and cancel is None:
                        r.cancel = time.perf_counter()
                        cancel = asyncio.create_task(c.post(f"{self.base}/v1/turns/{turn}/cancel",
                                                            json={"reason": "bench"}, headers=auth))
                elif '"type":"RUN_FINISHED"' in head or '"type":"RUN_ERROR"' in head:
                    break
        r.end = time.perf_counter()
        if cancel is not None:
            (await cancel).raise_for_status()
        return r


class Peer(System):
    name = "langgraph"

    async def _run(self, c: httpx.AsyncClient, n: int, rate: float, sink: Sink | None,
                   cancel_after: int) -> Run:
        thread = (await c.post(f"{self.base}/threads", json={})).json()["thread_id"]  # not timed
        r = Run(t0=time.perf_counter())
        body = {"assistant_id": "bench", "input": {"n": n, "rate": rate}, "stream_mode": ["custom"]}
        event, run_id = "", ""
        cancel: asyncio.Task[httpx.Response] | None = None
        async with c.stream("POST", f"{self.base}/threads/{thread}/runs/stream", json=body) as s:
            s.raise_for_status()
            async for line in s.aiter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif not line.startswith("data:"):
                    continue
                elif event == "custom":
                    _agent_event(r, line[5:], sink, lambda d: int(json.loads(d)["t"]))
                    if cancel_after and r.events == cancel_after and cancel is None:
                        r.cancel = time.perf_counter()
                        cancel = asyncio.create_task(
                            c.post(f"{self.base}/threads/{thread}/runs/{run_id}/cancel"))
                elif event == "metadata":
                    run_id = json.loads(line[5:])["run_id"]
                elif event == "error":
                    raise RuntimeError(f"peer run error: {line}")
        r.end = time.perf_counter()
        if cancel is not None:
            (await cancel).raise_for_status()
        return r


def start_peer(venv: Path, tmp: Path) -> Peer:
    graph_dir = tmp / "peer"
    graph_dir.mkdir()
    (graph_dir / "graph.py").write_text(PEER_GRAPH)
    (graph_dir / "langgraph.json").write_text(json.dumps({"dependencies": ["."],
                                                          "graphs": {"bench": "./graph.py:graph"}}))
    port = free_port()
    env = dict(os.environ, LANGSMITH_TRACING="false", LANGGRAPH_CLI_NO_ANALYTICS="1")
    log = open(tmp / "peer.log", "wb")
    proc = subprocess.Popen([str(venv / "bin" / "langgraph"), "dev", "--no-browser", "--no-reload",
                             "--port", str(port), "--config", "langgraph.json", "--n-jobs-per-worker", "64"],
                            cwd=graph_dir, stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    log.close()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"langgraph dev exited {proc.returncode}:\n{(tmp / 'peer.log').read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ok", timeout=2).status_code == 200:
                return Peer(proc, f"http://127.0.0.1:{port}")
        except httpx.TransportError:
            pass
        time.sleep(0.2)  # readiness poll, bounded by the deadline
    stop_peer(proc)
    raise RuntimeError("langgraph dev did not answer /ok within 90 s")


def stop_peer(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM its process group (it was started in its own session), then SIGKILL."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # anything of the group left behind
    except ProcessLookupError:
        pass


def memory_mib(tree: list[psutil.Process]) -> tuple[float, float]:
    """(PSS, USS) of the tree, MiB: shared pages counted once (PSS) or not at all (USS)."""
    pss = uss = 0
    for p in tree:
        try:
            m = p.memory_full_info()
            pss, uss = pss + m.pss, uss + m.uss
        except psutil.NoSuchProcess:
            pass
    return pss / 2**20, uss / 2**20


async def load(system: System, c: httpx.AsyncClient, runs: int, n: int, rate: float) -> dict[str, float]:
    delays: list[float] = []

    def sink(now_ns: int, t_ns: int) -> None:
        delays.append((now_ns - t_ns) / 1e6)

    cpu0, own0, w0 = tree_cpu_s(system.tree()), own_cpu_s(system.proc.pid), time.perf_counter()
    peak = (0.0, 0.0)
    tasks = [asyncio.create_task(system.run(c, n, rate, sink)) for _ in range(runs)]
    while not all(t.done() for t in tasks) and time.perf_counter() - w0 < RUN_TIMEOUT_S:
        await asyncio.sleep(1.0)
        # Off the event loop: reading PSS of 50 turn processes takes 60-120 ms, which
        # on the loop delayed every event the client was receiving (runnerd's, not the peer's).
        mem = await asyncio.to_thread(lambda: memory_mib(system.tree()))
        peak = (max(peak[0], mem[0]), max(peak[1], mem[1]))
    results = await asyncio.gather(*tasks)
    wall = time.perf_counter() - w0
    got = sum(r.events for r in results)
    if got != runs * n:
        print(f"  {system.name}: {got} of {runs * n} events arrived")
    return {"p50": median(delays), "p99": pct(delays, 99), "cpu": tree_cpu_s(system.tree()) - cpu0,
            "daemon": own_cpu_s(system.proc.pid) - own0, "wall": wall, "pss": peak[0], "uss": peak[1]}


FLOOR_CODE = """
import asyncio, json, resource, sys, time
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
async def main(n, rate):
    t0 = time.monotonic_ns()
    for i in range(n):
        delay = t0 + i * 1e9 / rate - time.monotonic_ns()
        if delay > 0:
            await asyncio.sleep(delay / 1e9)
        json.dumps({"t": time.monotonic_ns(), "i": i})
c0 = cpu()
asyncio.run(main(int(sys.argv[1]), float(sys.argv[2])))
print(cpu() - c0)
"""


async def floor_cpu_s(runs: int, n: int, rate: float) -> float:
    """The CPU that ``runs`` separate Python processes spend pacing the agent's sleeps
    (asyncio, one JSON encode per event), start-up excluded: what one process per
    turn costs before any supervisor work."""
    procs = [await asyncio.create_subprocess_exec(sys.executable, "-c", FLOOR_CODE, str(n), str(rate),
                                                  stdout=asyncio.subprocess.PIPE) for _ in range(runs)]
    outs = await asyncio.gather(*(p.communicate() for p in procs))
    return sum(float(out) for out, _ in outs)


def own_cpu_s(pid: int) -> float:
    """User + system CPU of the server's own process (not its children)."""
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def row(label: str, values: list[float], unit: str, fmt: str = ".2f") -> None:
    """One table row: each system's figure, then each one's ratio to the second (the peer)
    and, with a baseline, the first's ratio to the baseline."""
    cells = [f"{v:{fmt}} {unit}" for v in values]
    ratios = [f"{values[0] / values[1]:.2f}x" if values[1] else "-"]
    if len(values) > 2:
        ratios.append(f"{values[0] / values[2]:.2f}x" if values[2] else "-")
    print("| " + " | ".join([label, *cells, *ratios]) + " |")


SECTIONS = ("first", "rate", "cancel", "load")


async def bench(systems: list[System], quick: bool, sections: set[str], load_rounds: int) -> None:
    first_runs, flood_n, flood_reps, cancel_reps = (10, 5000, 2, 5) if quick else (30, 20000, 3, 15)
    conc = 20 if quick else 50
    names = [s.name for s in systems]
    first: dict[str, list[float]] = {n: [] for n in names}
    rate: dict[str, list[float]] = {n: [] for n in names}
    cancel: dict[str, list[float]] = {n: [] for n in names}
    loads: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    floor: list[float] = []
    async with httpx.AsyncClient(timeout=httpx.Timeout(30.0),
                                 limits=httpx.Limits(max_connections=2 * conc + 10)) as c:
        for s in systems:  # warm: connections, imports, the forkserver
            for _ in range(3):
                await s.run(c, 1)

        def order(i: int) -> list[System]:
            return systems if i % 2 == 0 else systems[::-1]

        for i in range(first_runs if "first" in sections else 0):
            for s in order(i):
                r = await s.run(c, 1)
                first[s.name].append((r.first - r.t0) * 1e3)
        for i in range(flood_reps if "rate" in sections else 0):
            for s in order(i):
                r = await s.run(c, flood_n)
                assert r.events == flood_n, (s.name, r.events)
                rate[s.name].append((r.events - 1) / (r.end - r.first))
        for i in range(cancel_reps if "cancel" in sections else 0):
            for s in order(i):
                r = await s.run(c, 100_000, 200.0, cancel_after=5)
                cancel[s.name].append((r.end - r.cancel) * 1e3)
        for i in range(load_rounds if "load" in sections else 0):
            for s in order(i):
                loads[s.name].append(await load(s, c, conc, 200, 20.0))
                await asyncio.sleep(2.0)  # let one system settle before the next
            floor.append(await floor_cpu_s(conc, 200, 20.0))
            await asyncio.sleep(2.0)

    head = " | ".join(names)
    ratio_heads = f"{names[0]} / {names[1]}" + (f" | {names[0]} / {names[2]}" if len(names) > 2 else "")
    print(f"\n| figure ({'--quick' if quick else 'full'}) | {head} | {ratio_heads} |\n|---"
          + "|---" * (len(names) + len(names) - 1) + "|")
    if "first" in sections:
        row(f"POST -> first agent event, p50 ({first_runs} runs)", [median(first[n]) for n in names], "ms")
        row("POST -> first agent event, p90", [pct(first[n], 90) for n in names], "ms")
    if "rate" in sections:
        row(f"events/s to one client, {flood_n} events (median of {flood_reps})",
            [median(rate[n]) for n in names], "ev/s", ",.0f")
    if "cancel" in sections:
        row(f"cancel -> stream end, median ({cancel_reps} runs)", [median(cancel[n]) for n in names], "ms")
    if "load" in sections:
        label = f"{conc} runs x 200 events at 20 ev/s"
        rounds = f" (median of {load_rounds})" if load_rounds > 1 else ""

        def fig(key: str) -> list[float]:
            return [median([x[key] for x in loads[n]]) for n in names]
        walls = " / ".join(f"{w:.1f}" for w in fig("wall"))
        row(f"{label}: delivery delay p50{rounds}", fig("p50"), "ms")
        row(f"{label}: delivery delay p99{rounds}", fig("p99"), "ms")
        row(f"{label}: server CPU{rounds} (wall {walls} s)", fig("cpu"), "s")
        row(f"{label}: server CPU, its own process only{rounds}", fig("daemon"), "s")
        row(f"{label}: server tree PSS, peak{rounds}", fig("pss"), "MiB", ".0f")
        row(f"{label}: server tree USS, peak{rounds}", fig("uss"), "MiB", ".0f")
        print(f"\nfloor: {conc} bare Python processes pacing the same sleeps (asyncio, start-up excluded), "
              f"CPU {median(floor):.2f} s{rounds}, in the same run: one process per turn costs this before "
              f"any supervisor work")
    print(f"\nraw: first={first}\nrate={rate}\ncancel={cancel}\nload={loads}\nfloor={floor}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peer-venv", type=Path, required=True, help="venv with langgraph-cli[inmem] (scripts/README.md)")
    ap.add_argument("--quick", action="store_true", help="fewer runs and events")
    ap.add_argument("--baseline-src", type=Path, help="a checkout of other runnerd code, run as a third system")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--load-rounds", type=int, default=1, help="repetitions of the load, systems alternated")
    args = ap.parse_args()
    sections = set(args.sections.split(","))
    if not sections <= set(SECTIONS):
        sys.exit(f"--sections: unknown {sorted(sections - set(SECTIONS))}")
    if not (args.peer_venv / "bin" / "langgraph").exists():
        sys.exit(f"no {args.peer_venv}/bin/langgraph: create the peer's venv first (scripts/README.md)")
    with tempfile.TemporaryDirectory(prefix="runnerd-bench-peer-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "token").write_text(TOKEN)
        servers: list[subprocess.Popen[bytes]] = []
        peer: Peer | None = None
        try:
            systems: list[System] = []
            for name, source in [("runnerd", None), ("runnerd@base", args.baseline_src)]:
                if name != "runnerd" and source is None:
                    continue
                port = free_port()
                home = tmp / name
                home.mkdir()
                rd, _, _ = launch_runnerd(home, {"peer": "bench_peer_agents:emit"}, ["max_running_turns = 64"],
                                          [f'tcp = "127.0.0.1:{port}"', f'token_file = "{tmp / "token"}"'],
                                          source=source)
                servers.append(rd)
                systems.append(Runnerd(rd, f"http://127.0.0.1:{port}", name))
            peer = start_peer(args.peer_venv, tmp)
            systems.insert(1, peer)
            asyncio.run(bench(systems, args.quick, sections, args.load_rounds))
        finally:
            for rd in servers:
                stop_process(rd)
            if peer is not None:
                stop_peer(peer.proc)

if __name__ == "__main__":
    main()
