"""A retention pass on the file backend against one on the Redis backend, in one run, on this machine.

Both hold the same ``--turns`` ended turns (``--events`` ~100-byte events each);
then, on each backend:

- plan: a dry run with ``max_turns`` (what the pass reads: every ended turn's record);
- plan with sizes: a dry run with ``max_bytes`` (every turn's size too: file sizes, or
  Redis's ``MEMORY USAGE`` of each turn's stream and compacted form);
- pass: a real pass that removes the oldest 10 % (per removed turn).

In process, through the same classes the daemon uses (``HistoryKeeper`` over
files, ``ClusterRetention`` over Redis); the redis-server is started here on a
Unix socket without persistence and stopped at the end.

    .venv/bin/python scripts/bench_retention.py [--turns 10000] [--events 20]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_cluster import start_redis  # noqa: E402

from ipc import events as ev  # noqa: E402
from supervisor.config import ClusterConfig, RetentionConfig  # noqa: E402
from supervisor.ids import new_turn_id  # noqa: E402
from supervisor.runtime.registry import StreamRegistry  # noqa: E402
from supervisor.runtime.turntable import TurnTable  # noqa: E402
from supervisor.storage.eventlog import FileEventLog  # noqa: E402
from supervisor.storage.history import HistoryKeeper  # noqa: E402
from supervisor.storage.lines import event_line  # noqa: E402
from supervisor.storage.retention import PruneReport  # noqa: E402
from supervisor.storage.stores import EventStore, TurnStore  # noqa: E402
from supervisor.storage.turnfiles import FileTurnStore  # noqa: E402
from supervisor.turns import TurnInfo, TurnStatus  # noqa: E402


def fill(events: EventStore, records: TurnStore, turns: int, n: int) -> list[TurnInfo]:
    infos = []
    for i in range(turns):
        t = new_turn_id()
        info = TurnInfo(turn_id=t, agent="bench", status=TurnStatus.RUNNING, created_at=1000.0 + i)
        events.create(t)
        records.put(info, durable=False)
        lines = [event_line(1, ev.RunStarted(thread_id=t, run_id=t))]
        lines += [event_line(s, ev.TextMessageContent(message_id="m", delta="x" * 40)) for s in range(2, n)]
        lines.append(event_line(n, ev.RunFinished(thread_id=t, run_id=t, outcome=ev.Outcome("success"))))
        events.append(t, lines)
        events.close(t)
        info.status, info.last_seq, info.ended_at = TurnStatus.SUCCEEDED, n, 2000.0 + i
        records.put(info, durable=False)
        infos.append(info)
    return infos


def timed(run: Callable[[], PruneReport]) -> tuple[float, PruneReport]:
    start = time.perf_counter()
    report = run()
    return time.perf_counter() - start, report


def measure_pass(by_count: Callable[[bool], PruneReport], sized: Callable[[], PruneReport]) -> dict[str, float]:
    """``by_count(dry_run)``: the pass with ``max_turns``; ``sized``: a dry run with ``max_bytes``."""
    plan_s, _ = timed(lambda: by_count(True))
    sized_s, _ = timed(sized)
    pass_s, report = timed(lambda: by_count(False))
    return {"plan_s": plan_s, "plan_with_sizes_s": sized_s,
            "remove_ms_per_turn": pass_s / max(1, len(report.removed)) * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=20)
    args = parser.parse_args()
    keep = args.turns - args.turns // 10
    by_count, by_bytes = RetentionConfig(max_turns=keep), RetentionConfig(max_bytes=1 << 50)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-retention-") as tmp:
        # files: the one-node keeper over its table
        log = FileEventLog(str(Path(tmp) / "files"))
        records = FileTurnStore(log)
        table = TurnTable()
        table.load(fill(log, records, args.turns, args.events))
        registry = StreamRegistry(buffer_bytes=1 << 20)

        def keeper(cfg: RetentionConfig) -> HistoryKeeper:
            return HistoryKeeper(events=log, records=records, table=table, registry=registry, retention=cfg,
                                 compact_finished=False)

        results["files"] = measure_pass(lambda dry: keeper(by_count).prune(dry_run=dry),
                                        lambda: keeper(by_bytes).prune(dry_run=True))
        # Redis: the cluster's pass over every node's turns
        from supervisor.runtime.cluster import Cluster
        from supervisor.runtime.cluster_retention import ClusterRetention

        proc = start_redis(Path(tmp) / "redis")
        try:
            cluster = Cluster(ClusterConfig(redis_url=f"unix://{tmp}/redis/redis.sock", node_id="bench"),
                              str(Path(tmp) / "node"), max_queued=1)
            fill(cluster.events, cluster.turns, args.turns, args.events)

            def shared(cfg: RetentionConfig) -> ClusterRetention:
                return ClusterRetention(cluster, cfg, table=TurnTable(), registry=StreamRegistry(buffer_bytes=1 << 20))

            results["redis"] = measure_pass(lambda dry: shared(by_count).prune(dry_run=dry),
                                            lambda: shared(by_bytes).prune(dry_run=True))
            cluster.client.close()
        finally:
            proc.terminate()
            proc.wait(10)
    print(f"{args.turns} ended turns of {args.events} events; the pass removes the oldest {args.turns // 10}")
    print(f"{'':28}{'files':>10}{'redis':>10}{'redis/files':>13}")
    for name in ("plan_s", "plan_with_sizes_s", "remove_ms_per_turn"):
        f, r = results["files"][name], results["redis"][name]
        print(f"{name:28}{f:10.3f}{r:10.3f}{r / f:13.2f}")



if __name__ == "__main__":
    main()
