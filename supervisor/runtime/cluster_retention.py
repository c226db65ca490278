"""Retention in a cluster: the policies of one node (``[retention]``), over every node's turns in Redis.

- **Age** (``max_age_s``) is Redis's: the script that writes a turn's ending
  gives every key of the turn (record, stream, compacted form, cancel key) a
  TTL of ``max_age_s`` and lists the turn in ``<p>:expiry``; the pass drops
  the index entries of what expired (reads drop the ones they meet first).
- **Count, bytes and full logs** (``max_turns``, ``max_bytes``,
  ``keep_raw_s``) are one pass over every ended turn, whoever owned it (a
  dead node's turns too), by one node at a time: the node that holds
  ``<p>:retention:lock`` (``SET NX PX``). The periodic pass runs once per
  ``interval_s`` cluster-wide (whoever first sets ``<p>:retention:due``); an
  explicit ``prune`` waits for the lock.
- **Every node's view**: the pass publishes what it removed on
  ``<p>:pruned``; each node forgets those turns (or marks their full log
  gone) in its own table and registry, and at each of its passes (periodic
  or asked) checks the ended turns its table holds against Redis, so a
  missed message or an expired key is caught up within ``interval_s``.
"""

from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING, Any

from supervisor.config import RetentionConfig
from supervisor.errors import StoreUnavailable
from supervisor.logs import get_logger
from supervisor.runtime.registry import StreamRegistry
from supervisor.runtime.turntable import TurnTable
from supervisor.storage.redis_common import translated
from supervisor.storage.retention import Candidate, PruneReport, plan

if TYPE_CHECKING:
    from supervisor.runtime.cluster import Cluster

log = get_logger("runnerd.cluster_retention")
LOCK_TTL_MS = 30_000  # a pass that dies holding the lock blocks others this long at most
LOCK_WAIT_S = 10.0  # an explicit prune waits this long for another node's pass
EXTEND_EVERY = 100  # removals between two refreshes of the lock
CHECK_CHUNK = 1000  # records per round trip when a node checks its table against Redis

_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class ClusterRetention:
    """What ``HistoryKeeper.prune`` does on the Redis backend (this node's table and registry kept in step)."""

    def __init__(self, cluster: Cluster, config: RetentionConfig, *, table: TurnTable,
                 registry: StreamRegistry) -> None:
        self.cluster = cluster
        self.config = config
        self.table = table
        self.registry = registry
        self.keys = cluster.keys
        self.client = cluster.client
        self._extend = self.client.register_script(_EXTEND)
        self._release = self.client.register_script(_RELEASE)

    # -- the pass -----------------------------------------------------------------------

    def prune(self, *, dry_run: bool = False, now: float | None = None, periodic: bool = False) -> PruneReport:
        """One pass over every node's ended turns; ``periodic``: only if one is due cluster-wide."""
        now = time.time() if now is None else now
        if not dry_run:
            self.check_table()  # this node's view first: what expired or was removed elsewhere
        if periodic:
            with translated():
                due = self.client.set(self.keys.retention_due, self.cluster.node, nx=True,
                                      px=int(self.config.interval_s * 1000))
            if not due:
                return PruneReport()  # another node ran this interval's pass
        if dry_run:
            return self._pass(now, dry_run=True, token="")
        token = self._lock(0.0 if periodic else LOCK_WAIT_S)
        if token is None:
            if periodic:
                return PruneReport()
            raise StoreUnavailable(f"another node's retention pass holds {self.keys.retention_lock}; try again")
        try:
            return self._pass(now, dry_run=False, token=token)
        finally:
            with translated():
                self._release(keys=[self.keys.retention_lock], args=[token])

    def _lock(self, wait_s: float) -> str | None:
        token = secrets.token_hex(16)
        deadline = time.monotonic() + wait_s
        while True:
            with translated():
                if self.client.set(self.keys.retention_lock, token, nx=True, px=LOCK_TTL_MS):
                    return token
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.1)

    def _pass(self, now: float, *, dry_run: bool, token: str) -> PruneReport:
        turns, events = self.cluster.turns, self.cluster.events
        if not dry_run:
            turns.drop_expired()
        infos = turns.ended(turns.ended_ids())
        sizes = events.sizes([i.turn_id for i in infos]) if self.config.max_bytes is not None else [0] * len(infos)
        chosen = plan([Candidate(i, s) for i, s in zip(infos, sizes)], self.config, now)
        report = PruneReport(removed=chosen.remove, raw_removed=chosen.remove_raw, dry_run=dry_run)
        if dry_run:
            report.bytes_freed = sum(events.sizes(chosen.remove))
            return report
        for n, turn_id in enumerate(chosen.remove):
            report.bytes_freed += events.remove(turn_id) + turns.remove(turn_id)
            with translated():
                self.client.unlink(self.keys.cancel(turn_id))
            self._announce("removed", turn_id)
            if n % EXTEND_EVERY == EXTEND_EVERY - 1:
                with translated():
                    self._extend(keys=[self.keys.retention_lock], args=[token, LOCK_TTL_MS])
        for turn_id in chosen.remove_raw:
            report.bytes_freed += events.remove_raw(turn_id)
            turns.mark_raw_removed(turn_id)
            self._announce("raw", turn_id)
        if chosen.remove or chosen.remove_raw:
            log.info("pruned", turns=len(chosen.remove), raw_logs=len(chosen.remove_raw),
                     bytes_freed=report.bytes_freed, cluster=True)
        return report

    def _announce(self, what: str, turn_id: str) -> None:
        self.apply(f"{what} {turn_id}".encode())  # this node at once, the others through the channel
        with translated():
            self.client.publish(self.keys.pruned_channel, f"{what} {turn_id}")

    # -- this node's view ------------------------------------------------------------------

    def apply(self, message: bytes) -> None:
        """A message of ``<p>:pruned``: forget a removed turn, or note that its full log is gone."""
        what, _, turn_id = message.decode().partition(" ")
        if what == "removed":
            self._forget(turn_id)
        elif what == "raw":
            self.table.update_ended(turn_id, raw_removed=True)

    def _forget(self, turn_id: str) -> None:
        self.table.forget(turn_id)
        self.registry.forget(turn_id)

    def check_table(self) -> None:
        """The ended turns this node's table holds, against Redis: forget what expired or was removed
        (a pruned message missed while disconnected), note full logs removed."""
        unsettled = self.cluster.unsettled()  # their records wait for Redis: not gone, only behind
        ids = [i.turn_id for i in self.table.ended_records() if i.turn_id not in unsettled]
        for start in range(0, len(ids), CHECK_CHUNK):
            chunk = ids[start:start + CHECK_CHUNK]
            with translated():
                pipe = self.client.pipeline(transaction=False)
                for turn_id in chunk:
                    pipe.hmget(self.keys.turn(turn_id), "status", "raw_removed")
                found: list[Any] = pipe.execute()
            for turn_id, (status, raw_removed) in zip(chunk, found):
                if status is None:
                    self._forget(turn_id)
                elif raw_removed is not None:
                    self.table.update_ended(turn_id, raw_removed=True)
