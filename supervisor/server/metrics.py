"""Prometheus text exposition of the supervisor's state (no client library needed)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from supervisor.turns import TurnStatus

if TYPE_CHECKING:
    from supervisor.embedded import Supervisor
    from supervisor.server.connections import ConnectionStats
    from supervisor.server.sse import StreamSet


def render_metrics(sup: Supervisor, streams: StreamSet, connections: ConnectionStats | None = None,
                   cluster: dict[str, object] | None = None) -> bytes:
    statuses = sup.table.counts()
    running = sup.table.running
    usages = [info.usage for info in sup.table.ended_records() if info.usage is not None]
    _, buffered = sup.registry.stats()
    lines = [
        "# HELP runnerd_turns Turns known to the daemon, by status.",
        "# TYPE runnerd_turns gauge",
        *(f'runnerd_turns{{status="{s.value}"}} {statuses.get(s, 0)}' for s in TurnStatus),
        "# HELP runnerd_turns_running Turns whose process may still exist.",
        "# TYPE runnerd_turns_running gauge",
        f"runnerd_turns_running {running}",
        "# HELP runnerd_events_relayed_total Events relayed from turn processes (and lifecycle events).",
        "# TYPE runnerd_events_relayed_total counter",
        f"runnerd_events_relayed_total {sup.relay.events_relayed}",
        "# HELP runnerd_open_streams Open SSE streams.",
        "# TYPE runnerd_open_streams gauge",
        f"runnerd_open_streams {streams.count}",
        "# HELP runnerd_turn_feed_streams Open GET /v1/turns/events streams (also in runnerd_open_streams).",
        "# TYPE runnerd_turn_feed_streams gauge",
        f"runnerd_turn_feed_streams {sup.feed.subscribers}",
        "# HELP runnerd_streams_opened_total SSE streams opened since start.",
        "# TYPE runnerd_streams_opened_total counter",
        f"runnerd_streams_opened_total {streams.opened_total}",
        "# HELP runnerd_slow_consumers_dropped_total SSE subscribers dropped for not reading.",
        "# TYPE runnerd_slow_consumers_dropped_total counter",
        f"runnerd_slow_consumers_dropped_total {streams.slow_dropped}",
        "# HELP runnerd_relay_lag_seconds Emit (child clock) to relay commit, latest batch.",
        "# TYPE runnerd_relay_lag_seconds gauge",
        f"runnerd_relay_lag_seconds {sup.relay.lag_s:.6f}",
        "# HELP runnerd_relay_heartbeat_age_seconds Time since the relay loop last ran (idle loops wake every second).",
        "# TYPE runnerd_relay_heartbeat_age_seconds gauge",
        f"runnerd_relay_heartbeat_age_seconds {time.monotonic() - sup.relay.heartbeat:.6f}",
        "# HELP runnerd_buffered_bytes Event bytes held in memory for recent turns.",
        "# TYPE runnerd_buffered_bytes gauge",
        f"runnerd_buffered_bytes {buffered}",
        "# HELP runnerd_containment What contains each turn's processes (1 for the mode in effect).",
        "# TYPE runnerd_containment gauge",
        f'runnerd_containment{{mode="{sup.containment.mode}"}} 1',
        "# HELP runnerd_turn_cpu_seconds_total CPU seconds of the ended turns the daemon holds, from their cgroups.",
        "# TYPE runnerd_turn_cpu_seconds_total counter",
        f"runnerd_turn_cpu_seconds_total {sum(u.cpu_seconds or 0.0 for u in usages):.6f}",
        "# HELP runnerd_turn_memory_peak_bytes_max Highest cgroup memory peak among those turns.",
        "# TYPE runnerd_turn_memory_peak_bytes_max gauge",
        f"runnerd_turn_memory_peak_bytes_max {max((u.memory_peak_bytes or 0 for u in usages), default=0)}",
        "# HELP runnerd_turn_tasks_peak_max Most tasks at once in one of those turns' cgroups.",
        "# TYPE runnerd_turn_tasks_peak_max gauge",
        f"runnerd_turn_tasks_peak_max {max((u.tasks_peak or 0 for u in usages), default=0)}",
    ]
    if connections is not None:
        for name, kind, value, text in (
            ("tcp_connections", "gauge", connections.tcp_open, "Open TCP connections."),
            ("tcp_connections_max", "gauge", connections.max_tcp, "Cap on open TCP connections."),
            ("connections_refused_total", "counter", connections.refused, "TCP connections closed at accept (over a cap)."),
            ("request_timeouts_total", "counter", connections.timed_out, "Requests whose headers or body came too late."),
            ("send_aborted_total", "counter", connections.send_aborted, "Connections aborted for not reading a response."),
            ("accept_errors_total", "counter", connections.accept_errors, "accept() failures for lack of descriptors."),
        ):
            lines += [f"# HELP runnerd_{name} {text}", f"# TYPE runnerd_{name} {kind}", f"runnerd_{name} {value}"]
    if cluster is not None:  # several nodes: this node's id and the cluster as Redis counts it
        up = cluster.get("redis") == "ok"
        lines += [
            "# HELP runnerd_cluster_redis_up Whether this node reaches the cluster's Redis.",
            "# TYPE runnerd_cluster_redis_up gauge",
            f'runnerd_cluster_redis_up{{node="{cluster["node"]}"}} {int(up)}',
        ]
        if up:
            lines += [
                "# HELP runnerd_cluster_nodes Nodes whose heartbeat is current.",
                "# TYPE runnerd_cluster_nodes gauge",
                f"runnerd_cluster_nodes {cluster['nodes']}",
                "# HELP runnerd_cluster_turns Unended turns of every node, by state.",
                "# TYPE runnerd_cluster_turns gauge",
                f'runnerd_cluster_turns{{state="running"}} {cluster["running"]}',
                f'runnerd_cluster_turns{{state="queued"}} {cluster["queued"]}',
                "# HELP runnerd_cluster_lost_marked_total Dead peers' turns this node ended lost.",
                "# TYPE runnerd_cluster_lost_marked_total counter",
                f"runnerd_cluster_lost_marked_total {cluster['lost_marked']}",
            ]
    return ("\n".join(lines) + "\n").encode()
