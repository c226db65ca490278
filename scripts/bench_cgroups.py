#!/usr/bin/env python3
"""Kernel containment against polling, measured in one run (docs/BENCHMARKS.md).

    sudo python scripts/bench_cgroups.py            # ~1 minute on 2 cores
    sudo python scripts/bench_cgroups.py --quick

1. limit breach -> terminal event: the agent reports the wall time, then
   crosses the limit at once (touches 1.5x ``memory_bytes``; starts 2x
   ``max_processes`` children); the terminal event's timestamp minus that
   mark. Polled (``limits.cgroups = off``, ``poll_s`` 0.25, the default)
   against kernel-enforced (a cgroup per turn);
2. start latency: ``start_turn`` -> ``RUN_STARTED`` visible, and a whole
   no-op turn (start -> terminal event, which includes removing the cgroup),
   with and without a cgroup per turn, interleaved;
3. the daemon under busy turns: ``BUSY`` turns spin in pure Python (2, then 8
   per core) while one turn emits ``PACED_N`` events at ``PACED_RATE``/s; the
   delay from each event's stamp in the child to the reader in this process
   (the relay's and the reader's threads, as in the daemon). Grouped: every
   turn in the ``cpu`` hierarchy under the base (the default), against the same
   kernel-contained supervisor with its ``cpu`` base dropped before the turns
   start (each turn then weighs as much as a daemon thread: the code before),
   alternated, medians of the rounds' percentiles.

Needs root and cgroup v1 or v2 controllers; the limits it crosses are bounded
by the agents themselves (scripts/bench_cgroups_agents.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

from benchlib import SCRIPTS, median, ms, pct

sys.path.insert(0, str(SCRIPTS.parent))

from ipc import events as ev  # noqa: E402
from supervisor.config import Config, LimitsConfig  # noqa: E402
from supervisor.embedded import Supervisor  # noqa: E402

AGENTS = {name: f"bench_cgroups_agents:{name}" for name in ("noop", "cross_memory", "cross_processes", "spin")}
AGENTS["paced"] = "bench_agents:paced"  # bench_core's latency agent, idle mode
BUSY = tuple(k * (os.cpu_count() or 1) for k in (2, 8))  # spinning turns: 2 and 8 per core
PACED_N, PACED_RATE = 300, 100.0
MEMORY_BYTES = 128 << 20
MAX_PROCESSES = 20


def supervisor(tmp: str, cgroups: str) -> Supervisor:
    limits = LimitsConfig(cgroups=cgroups, memory_bytes=MEMORY_BYTES, max_processes=MAX_PROCESSES)
    return Supervisor(Config(state_dir=os.path.join(tmp, cgroups), agents=AGENTS, limits=limits,
                             cancel_grace_s=0.2, kill_grace_s=0.2, log_level="warning")).start()


def breach_to_end(sup: Supervisor, agent: str, input: dict[str, int]) -> tuple[float, str]:
    turn = sup.start_turn(agent, input)
    mark = None
    end = None
    for _, event in sup.events(turn.turn_id):
        if isinstance(event, ev.Custom) and event.name == "breach_at":
            mark = float(event.value)
        if isinstance(event, (ev.RunError, ev.RunFinished)):
            end = event
    assert mark is not None and isinstance(end, ev.RunError), end
    assert isinstance(end.timestamp, int)
    return end.timestamp / 1000 - mark, end.code


def start_latency(sup: Supervisor) -> tuple[float, float]:
    t0 = time.perf_counter()
    turn = sup.start_turn("noop")
    started = None
    for _, event in sup.events(turn.turn_id):
        if isinstance(event, ev.RunStarted) and started is None:
            started = time.perf_counter() - t0
    assert started is not None
    return started, time.perf_counter() - t0


def delivery_under_busy_turns(sup: Supervisor, spinning: int) -> tuple[float, float]:
    """(p50, p99) delivery delay, seconds, of a paced turn while ``spinning`` turns spin."""
    busy = [sup.start_turn("spin", {"seconds": 60}) for _ in range(spinning)]
    try:
        for turn in busy:  # all spinning before the paced turn starts
            next(e for _, e in sup.events(turn.turn_id) if isinstance(e, ev.Custom) and e.name == "spinning")
        paced = sup.start_turn("paced", {"rate": PACED_RATE, "seconds": PACED_N / PACED_RATE})
        delays = [time.monotonic_ns() - int(e.value["t"]) for _, e in sup.events(paced.turn_id)
                  if isinstance(e, ev.Custom) and e.name == "lat"]
        assert len(delays) == PACED_N, len(delays)
        return median(delays) / 1e9, pct(delays, 99) / 1e9
    finally:
        for turn in busy:
            sup.cancel(turn.turn_id)
        for turn in busy:
            sup.wait(turn.turn_id, 30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    breaches = 3 if args.quick else 10
    starts = 20 if args.quick else 100
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SCRIPTS), os.environ.get("PYTHONPATH", "")]))
    with tempfile.TemporaryDirectory() as tmp:
        polled, kernel = supervisor(tmp, "off"), supervisor(tmp, "require")
        try:
            print(f"containment: polled={polled.containment.mode}; kernel={kernel.containment.mode}")
            print(f"\n1. limit breach -> terminal event ({breaches} turns each, interleaved)")
            for agent, input, what in (("cross_memory", {"mib": MEMORY_BYTES * 3 // 2 >> 20}, "memory"),
                                       ("cross_processes", {"n": MAX_PROCESSES * 2}, "processes")):
                results: dict[str, list[float]] = {"polled": [], "kernel": []}
                codes: dict[str, set[str]] = {"polled": set(), "kernel": set()}
                for _ in range(breaches):
                    for name, sup in (("polled", polled), ("kernel", kernel)):
                        seconds, code = breach_to_end(sup, agent, input)
                        results[name].append(seconds)
                        codes[name].add(code)
                p, k = median(results["polled"]), median(results["kernel"])
                print(f"   {what:9}  polled median {ms(p)} (p90 {ms(pct(results['polled'], 90))}, "
                      f"{'/'.join(sorted(codes['polled']))})  kernel median {ms(k)} "
                      f"(p90 {ms(pct(results['kernel'], 90))}, {'/'.join(sorted(codes['kernel']))})  "
                      f"kernel/polled {k / p:.2f}")
            print(f"\n2. start latency ({starts} no-op turns each, interleaved)")
            lat: dict[str, list[tuple[float, float]]] = {"off": [], "cgroup": []}
            for _ in range(starts):
                lat["off"].append(start_latency(polled))
                lat["cgroup"].append(start_latency(kernel))
            for i, what in ((0, "start_turn -> RUN_STARTED"), (1, "start_turn -> terminal (whole turn)")):
                base = median([x[i] for x in lat["off"]])
                with_cg = median([x[i] for x in lat["cgroup"]])
                print(f"   {what:38} without {ms(base)} (p90 {ms(pct([x[i] for x in lat['off']], 90))})  "
                      f"with cgroup {ms(with_cg)} (p90 {ms(pct([x[i] for x in lat['cgroup']], 90))})  "
                      f"ratio {with_cg / base:.2f}")
            rounds = 2 if args.quick else 3
            print(f"\n3. a turn's events while other turns spin on {os.cpu_count()} cores "
                  f"({PACED_N} events at {PACED_RATE:.0f}/s, {rounds} rounds each, alternated)")
            if "cpu" not in kernel.cgroups.bases:
                print("   skipped: no cpu controller")
                return
            if kernel.cgroups.bases["cpu"] == kernel.cgroups.bases.get("cpuacct"):
                print("   skipped: cpu is mounted with cpuacct, so the flat baseline cannot be made here")
                return
            flat = supervisor(tmp + "/flat", "require")
            try:
                flat.cgroups.bases.pop("cpu")  # turns not in the cpu hierarchy: what the code did before
                for spinning in BUSY:
                    seen: dict[str, list[tuple[float, float]]] = {"grouped": [], "flat": []}
                    for _ in range(rounds):
                        seen["grouped"].append(delivery_under_busy_turns(kernel, spinning))
                        seen["flat"].append(delivery_under_busy_turns(flat, spinning))
                    g50, g99 = (median([x[i] for x in seen["grouped"]]) for i in (0, 1))
                    f50, f99 = (median([x[i] for x in seen["flat"]]) for i in (0, 1))
                    print(f"   {spinning:2} spinning: delivery delay p50 grouped {ms(g50)}, flat {ms(f50)} "
                          f"({g50 / f50:.2f}x); p99 grouped {ms(g99)}, flat {ms(f99)} ({g99 / f99:.2f}x)")
                    print("      rounds (p50, p99 ms): grouped "
                          f"{[(round(a * 1e3, 2), round(b * 1e3, 1)) for a, b in seen['grouped']]}"
                          f"  flat {[(round(a * 1e3, 2), round(b * 1e3, 1)) for a, b in seen['flat']]}")
            finally:
                flat.close()
        finally:
            polled.close()
            kernel.close()


if __name__ == "__main__":
    main()
