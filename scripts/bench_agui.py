#!/usr/bin/env python3
"""POST /v1/agents/{agent}/ag-ui -> first RUN_STARTED byte, beside the /v1 start-then-stream path.

    python scripts/bench_agui.py            # 200 runs of each path, ~1 minute on 2 cores
    python scripts/bench_agui.py --runs 30  # a smoke check

A real ``runnerd`` (the installed console script) on a temp socket runs
``worker.demos:chat`` (``delay`` 0). Per round, in this order, each timed from
just before the request is written:

1. AG-UI: one ``POST /v1/agents/demo/ag-ui`` with a ``RunAgentInput`` (new
   threadId and runId), read as a stream until the bytes ``RUN_STARTED`` arrive
   -- what an ``HttpAgent`` does (httpx over the unix socket, one connection);
2. /v1: ``POST /v1/turns`` (201), then ``GET /v1/turns/{id}/events`` read until
   ``RUN_STARTED``: the two round trips a /v1 client makes;
3. floor: a ``GET /v1/health`` round trip.

Each run is read to its end before the next starts, so turns do not overlap.
The ratio AG-UI / /v1 is the result; absolute numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import launch_runnerd, ms, pct, stop_process  # noqa: E402


def agui_run(c: httpx.Client, i: int) -> float:
    body = {"threadId": f"bench-{i}", "runId": f"run-{i}", "messages": [], "tools": [], "context": [],
            "state": {}, "forwardedProps": {"delay": 0}}
    start = time.perf_counter()
    first = 0.0
    with c.stream("POST", "/v1/agents/demo/ag-ui", json=body, headers={"accept": "text/event-stream"}) as r:
        for chunk in r.iter_bytes():
            if not first and b"RUN_STARTED" in chunk:
                first = time.perf_counter() - start
    return first


def v1_run(c: httpx.Client) -> float:
    start = time.perf_counter()
    turn = c.post("/v1/turns", json={"agent": "demo", "input": {"delay": 0}}).json()["turn_id"]
    first = 0.0
    with c.stream("GET", f"/v1/turns/{turn}/events") as r:
        for chunk in r.iter_bytes():
            if not first and b"RUN_STARTED" in chunk:
                first = time.perf_counter() - start
    return first


def health(c: httpx.Client) -> float:
    start = time.perf_counter()
    c.get("/v1/health")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proc, socket, _ = launch_runnerd(Path(tmp), {"demo": "worker.demos:chat"}, ["compact_finished = false"])
        try:
            with httpx.Client(base_url="http://runnerd", transport=httpx.HTTPTransport(uds=socket),
                              timeout=30) as c:
                for i in range(5):  # warm-up: forkserver, imports, connection
                    agui_run(c, -1 - i)
                    v1_run(c)
                results: dict[str, list[float]] = {"ag-ui POST -> RUN_STARTED": [],
                                                   "/v1 POST + GET events -> RUN_STARTED": [],
                                                   "floor: GET /v1/health": []}
                names = list(results)
                for i in range(args.runs):
                    results[names[0]].append(agui_run(c, i))
                    results[names[1]].append(v1_run(c))
                    results[names[2]].append(health(c))
        finally:
            stop_process(proc)
    print(f"{args.runs} runs each, interleaved; httpx over the unix socket, worker.demos:chat (delay 0)")
    for name, values in results.items():
        print(f"  {name:40s} p50 {ms(pct(values, 50)):>10s}   p99 {ms(pct(values, 99)):>10s}")
    a, b = results[names[0]], results[names[1]]
    print(f"  ratio ag-ui / v1:  p50 {pct(a, 50) / pct(b, 50):.2f}   p99 {pct(a, 99) / pct(b, 99):.2f}")


if __name__ == "__main__":
    main()
