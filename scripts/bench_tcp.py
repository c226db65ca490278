#!/usr/bin/env python3
"""POST a turn -> its RUN_STARTED at an SSE reader, over loopback TCP (with the token) and over the
Unix socket, interleaved against one daemon: the TCP path should cost what the socket costs.

Both sides use runnerd's own ``Client`` (httpx), so the figure is what a Python host sees.
  .venv/bin/python scripts/bench_tcp.py [--runs 60]
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import time
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))

from benchlib import launch_runnerd, median, ms, pct, stop_process  # noqa: E402

from supervisor.control.client import Client  # noqa: E402

TOKEN = "bench-tcp-token-0123456789"


def first_event_s(client: Client) -> float:
    started = time.perf_counter()
    turn = client.start_turn("demo", {"prompt": "hi", "delay": 0})
    for _ in client.events(turn.turn_id):
        return time.perf_counter() - started
    raise RuntimeError("no event")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=60)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="runnerd-bench-tcp-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "token").write_text(TOKEN)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc, sock, _ = launch_runnerd(tmp, {"demo": "worker.demos:chat"}, ["max_running_turns = 64"],
                                       [f'tcp = "127.0.0.1:{port}"', f'token_file = "{tmp / "token"}"'])
        try:
            clients = {"unix": Client(socket=sock), "tcp": Client(url=f"http://127.0.0.1:{port}", token=TOKEN)}
            for c in clients.values():  # warm: connections, the forkserver, imports
                first_event_s(c)
            times: dict[str, list[float]] = {k: [] for k in clients}
            for i in range(args.runs):
                order = list(clients) if i % 2 == 0 else list(reversed(clients))
                for name in order:
                    times[name].append(first_event_s(clients[name]))
            for c in clients.values():
                c.close()
        finally:
            stop_process(proc)
    print(f"POST -> RUN_STARTED at the reader, {args.runs} runs each, interleaved")
    for name, values in times.items():
        print(f"  {name:5s} p50 {ms(median(values))}  p90 {ms(pct(values, 90))}  p99 {ms(pct(values, 99))}")
    diff = median(times["tcp"]) - median(times["unix"])
    print(f"  tcp - unix (p50): {diff * 1000:+.2f} ms; tcp / unix: {median(times['tcp']) / median(times['unix']):.2f}x")


if __name__ == "__main__":
    main()
