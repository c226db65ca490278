#!/usr/bin/env python3
"""CPU that idle async turns cost: N turns each blocked in ``await asyncio.sleep(3600)`` (an agent
waiting on a model call), measured as the CPU time their processes and the supervisor use over a
window (psutil), not wall time.
  .venv/bin/python scripts/bench_idle.py [--turns 50] [--window 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from supervisor import Config, Supervisor  # noqa: E402


def cpu(procs: list[psutil.Process]) -> float:
    return sum(sum(p.cpu_times()[:2]) for p in procs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--turns", type=int, default=50)
    ap.add_argument("--window", type=float, default=5.0)
    args = ap.parse_args()
    n = args.turns
    config = Config(state_dir=tempfile.mkdtemp(prefix="runnerd-bench-idle-"), max_running_turns=n,
                    agents={"idle": "bench_idle_agents:idle"})
    with Supervisor(config) as sup:
        turns = [sup.start_turn("idle") for _ in range(n)]
        deadline = time.monotonic() + 120
        while sum(sup.status(t.turn_id).status.value == "running" for t in turns) < n:
            if time.monotonic() > deadline:
                raise SystemExit("the turns did not all start within 120 s")
            time.sleep(0.05)  # polling the start, bounded by the deadline
        procs = [psutil.Process(sup.status(t.turn_id).pid) for t in turns]  # type: ignore[arg-type]
        me = [psutil.Process()]
        t0, s0 = cpu(procs), cpu(me)
        time.sleep(args.window)  # the measurement window
        t1, s1 = cpu(procs), cpu(me)
        for t in turns:
            sup.cancel(t.turn_id)
    print(f"{n} idle async turns over {args.window:g} s: turn processes {100 * (t1 - t0) / args.window:.1f}% "
          f"of a core, supervisor {100 * (s1 - s0) / args.window:.1f}%")


if __name__ == "__main__":
    main()
