"""This node's part in a cluster on one Redis: identity, heartbeat, peers' liveness, cancel from any node.

- **Identity**: ``join`` claims ``<p>:node:<n>:alive`` with a random token
  (``SET NX PX``); a live node with the same id makes start-up fail.
- **Heartbeat and liveness**: one thread refreshes the key every ``ttl/3``
  and then checks every peer: a peer whose key expired is dead, and each of
  its unended turns ends with one ``RUN_ERROR`` ``lost`` (the fenced append
  makes a second writer, or the owner coming back, harmless). A node that
  finds its own key expired was presumed dead: it stops its local turns that
  a peer already ended, then claims the key again.
- **Cancel**: a cancel for a turn owned elsewhere sets ``<p>:cancel:{id}`` and
  publishes the id; the owner cancels on the message, and reads the key
  before it launches a turn, so a cancel sent early is never lost. The same
  subscriber hands what a retention pass removed (``<p>:pruned``) to
  ``runtime.cluster_retention``.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from ipc import events as ev
from supervisor.config import ClusterConfig
from supervisor.errors import RunnerdError, StoreFenced, StoreUnavailable, UnknownTurn
from supervisor.logs import get_logger
from supervisor.runtime.dispatch import Dispatch
from supervisor.runtime.registry import StreamRegistry
from supervisor.runtime.remote_tail import RemoteTail
from supervisor.storage.lines import event_line, line_seq
from supervisor.storage.redis_common import (
    Keys,
    connect,
    ending_of,
    follow_master,
    translated,
    ttl_arg,
)
from supervisor.storage.redis_events import RedisEventStore
from supervisor.storage.redis_turns import RedisTurnStore
from supervisor.turns import TurnError, TurnInfo, TurnStatus, info_copy

log = get_logger("runnerd.cluster")
UNENDED = frozenset({TurnStatus.QUEUED, TurnStatus.STARTING, TurnStatus.RUNNING})
CANCEL_KEY_TTL_S = 7 * 86400  # a turn's cancel request outlives any queue wait
LOST_MESSAGE = "the node running this turn stopped answering (its heartbeat expired)"

_REFRESH = """
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  redis.call('SADD', KEYS[2], ARGV[3])
  return 2
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class NodeIdInUse(RunnerdError):
    code = "node_id_in_use"
    status = 500


class Cluster:
    def __init__(self, config: ClusterConfig, state_dir: str, *, max_queued: int,
                 max_age_s: float | None = None) -> None:
        self.config = config
        self.node = config.node_name(state_dir)
        self.keys = Keys(config.key_prefix)
        self.client = connect(config.redis_url)
        self.events = RedisEventStore(self.client, self.keys, retry_s=config.redis_retry_s)
        self.turns = RedisTurnStore(self.client, self.keys, self.node, self.events, max_age_s=max_age_s)
        self.dispatch = Dispatch(self.client, self.keys, self.node, max_queued=max_queued, ttl=ttl_arg(max_age_s))
        self._token = secrets.token_hex(16)
        self._ttl_ms = int(config.node_ttl_s * 1000)
        self._refresh = self.client.register_script(_REFRESH)
        self._release = self.client.register_script(_RELEASE)
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self.tail: RemoteTail | None = None
        self.lost_marked = 0  # peers' turns this node ended lost
        self._unsettled: dict[str, TurnInfo] = {}  # ended here, not yet as such in Redis (it was away)
        self._unsettled_lock = threading.Lock()

    # -- membership ----------------------------------------------------------------

    def join(self) -> None:
        """Claim this node's id, or fail start-up: two live daemons must never share one."""
        key = self.keys.heartbeat(self.node)
        with translated():
            claimed = self.client.set(key, self._token, nx=True, px=self._ttl_ms)
            if not claimed:
                raise NodeIdInUse(
                    f"cluster node id {self.node!r} is in use by a live node (Redis key {key} exists); "
                    f"give this daemon another cluster.node_id, or wait {self.config.node_ttl_s:g} s "
                    "if that node has just died")
            self.client.sadd(self.keys.nodes, self.node)

    def start(self, *, registry: StreamRegistry, cancel_local: Callable[[str, str | None], object],
              local_turns: Callable[[], list[str]], is_local: Callable[[str], bool],
              take: Callable[[str, bytes], None], free: Callable[[], int],
              wait_free: Callable[[float], None], adopt: Callable[[TurnInfo], None],
              pruned: Callable[[bytes], None]) -> None:
        self._registry = registry
        self._pruned = pruned
        self._adopt = adopt
        self._cancel_local = cancel_local
        self._local_turns = local_turns
        self.tail = RemoteTail(self.client, self.keys, self.node, registry, is_local)
        self.tail.start()
        self.dispatch.start(take=take, free=free, wait_free=wait_free)
        for target, name in ((self._beat, "runnerd-heartbeat"), (self._listen, "runnerd-cancel-bus")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop_taking(self, timeout: float | None = None) -> None:
        """Take no more turns from the cluster's queue (closing)."""
        self.dispatch.stop(timeout)

    def leave(self, timeout: float = 5.0) -> None:
        """Stop the threads and give the node id back (the turns have ended by now)."""
        self.dispatch.stop(timeout)
        self._stopping.set()
        if self.tail is not None:
            self.tail.stop(timeout)
        for thread in self._threads:
            thread.join(timeout)
        try:
            self._release(keys=[self.keys.heartbeat(self.node)], args=[self._token])
            if not self.turns.active_of(self.node) and not self.dispatch.holds():
                self.client.srem(self.keys.nodes, self.node)  # else a peer's sweep claims what is left
        except (redis.RedisError, StoreUnavailable) as exc:
            log.warning("cluster_leave_failed", error=str(exc))
        self.client.close()

    # -- heartbeat and peers' liveness ------------------------------------------------

    def _beat(self) -> None:
        period = self.config.node_ttl_s / 3
        while not self._stopping.wait(period):
            try:
                follow_master(self.client)  # Sentinel: after a failover, refresh on the new master
                state = self._refresh(keys=[self.keys.heartbeat(self.node), self.keys.nodes],
                                      args=[self._token, self._ttl_ms, self.node])
                if state == 2:
                    log.error("cluster_node_presumed_dead_rejoined", node=self.node)
                    self._drop_taken_turns()
                elif state == 0:
                    log.error("cluster_node_id_taken", node=self.node)
                self.sweep()
                self._settle_unsettled()
            except (redis.RedisError, StoreUnavailable) as exc:
                log.warning("cluster_heartbeat_failed", error=str(exc))

    # -- this node's endings Redis did not take ---------------------------------------------

    def settle(self, info: TurnInfo) -> None:
        """After a local turn ended: make Redis say so too, or adopt the ending a peer stored.

        Redis may lack the ending (it was unreachable, or came back having lost
        writes): the events this node still holds in memory after the stored
        ones are written again, else one ``RUN_ERROR storage_error`` ends the
        stored history; without Redis the turn is tried again at each heartbeat.
        """
        try:
            adopted = self._settle(info)
        except StoreUnavailable as exc:
            log.warning("cluster_turn_unsettled", turn_id=info.turn_id, error=str(exc))
            with self._unsettled_lock:
                self._unsettled[info.turn_id] = info
            return
        with self._unsettled_lock:
            self._unsettled.pop(info.turn_id, None)
        if adopted is not None:
            self._adopt(adopted)

    def unsettled(self) -> set[str]:
        """Turns ended here whose ending Redis has not taken yet."""
        with self._unsettled_lock:
            return set(self._unsettled)

    def _settle_unsettled(self) -> None:
        with self._unsettled_lock:
            pending = list(self._unsettled.values())
        for info in pending:
            self.settle(info)

    def _settle(self, info: TurnInfo) -> TurnInfo | None:
        """The stream's ending, then the record to match; returns it when it differs from ``info``."""
        top = self.events.last_line(info.turn_id)
        ending = ending_of(top) if top is not None else None
        last = line_seq(top) if top is not None else 0
        if ending is None and last < info.last_seq:
            held = self._registry.read(info.turn_id, last, info.last_seq - last).events
            if held:  # memory still holds everything after the stored events: write it again
                self.events.append(info.turn_id, held)
                last, ending = info.last_seq, ending_of(held[-1])
        if ending is None:  # the history Redis kept has no ending: end it here, storage_error
            message = f"the events store lost this turn's events after seq {last}"
            now_ms = time.time_ns() // 1_000_000
            lines = []
            if last == 0:
                last = 1
                lines.append(event_line(1, ev.RunStarted(thread_id=info.session_id or info.turn_id,
                                                         run_id=info.turn_id, timestamp=now_ms)))
            lines.append(event_line(last + 1, ev.RunError(message=message, code="storage_error", timestamp=now_ms)))
            self.events.append(info.turn_id, lines)
            ending = (TurnStatus.FAILED, TurnError("storage_error", message))
            last += 1
        stored = self.turns.get(info.turn_id)
        settled = info_copy(info, status=ending[0], error=ending[1], last_seq=last)
        if stored is None or not stored.ended:
            self.turns.transition(settled, UNENDED)
        elif stored.status is settled.status and stored.last_seq != last:
            self.turns.put(settled)  # written without its terminal event: the stream's numbers win
        if settled.status is info.status and settled.last_seq == info.last_seq:
            return None
        log.warning("cluster_turn_settled", turn_id=info.turn_id, status=settled.status.value, last_seq=last)
        return settled

    def _drop_taken_turns(self) -> None:
        """Back from a pause: the turns peers ended while we were away are no longer ours."""
        for turn_id in self._local_turns():
            info = self.turns.get(turn_id)
            if info is not None and info.ended:
                self._cancel_local(turn_id, "ended by another node while this node was presumed dead")

    def sweep(self) -> None:
        """End every unended turn of every peer whose heartbeat expired."""
        members: Any = self.client.smembers(self.keys.nodes)
        for peer in sorted(m.decode() for m in members):
            if peer == self.node or self.client.exists(self.keys.heartbeat(peer)):
                continue
            active = self.turns.active_of(peer)
            for turn_id in active:
                self.end_lost(turn_id)
            claimed = self.dispatch.claim_from(peer)
            if claimed:
                log.warning("cluster_queue_entries_claimed", peer=peer, count=claimed)
            if not active:
                self.client.srem(self.keys.nodes, peer)

    def end_lost(self, turn_id: str) -> bool:
        """One ``RUN_ERROR lost`` after the turn's last event, unless it ended meanwhile."""
        for _ in range(10):  # the owner may still be appending: follow its last seq
            info = self.turns.get(turn_id)
            if info is None or info.ended:
                return False
            stored = self.turns.ending_from_log(turn_id)
            if stored is not None:  # the owner wrote its ending, then died before its record said so
                stored.ended_at = stored.ended_at or time.time()
                try:
                    self.turns.transition(stored, UNENDED)
                except StoreFenced:
                    pass  # its record already agrees with another ending
                log.warning("cluster_turn_ending_adopted", turn_id=turn_id, status=stored.status.value)
                return False
            last = self.events.reopen(turn_id)
            now_ms = time.time_ns() // 1_000_000
            lines = []
            if last == 0:
                last = 1
                lines.append(event_line(1, ev.RunStarted(thread_id=info.session_id or turn_id, run_id=turn_id,
                                                         timestamp=now_ms)))
            lines.append(event_line(last + 1, ev.RunError(message=LOST_MESSAGE, code="lost", timestamp=now_ms)))
            try:
                self.events.append(turn_id, lines)
            except StoreFenced:
                continue  # someone appended first: look again
            info.status, info.error = TurnStatus.LOST, TurnError("lost", LOST_MESSAGE)
            info.last_seq, info.ended_at = last + 1, time.time()
            try:
                self.turns.transition(info, UNENDED)
            except StoreFenced:
                pass  # its record already agrees with another ending
            self.lost_marked += 1
            log.warning("cluster_turn_lost", turn_id=turn_id, last_seq=last + 1)
            return True
        return False

    # -- cancel from any node -----------------------------------------------------------

    def cancel_remote(self, turn_id: str, reason: str | None) -> TurnInfo:
        info = self.status(turn_id)
        if info.ended:
            return info  # idempotent: nothing to cancel
        if info.status is TurnStatus.QUEUED:
            ended = self.dispatch.cancel_queued(info, reason)
            if ended is not None:
                return ended  # no node had taken it: ended here
        with translated():
            self.client.set(self.keys.cancel(turn_id), reason or "", ex=CANCEL_KEY_TTL_S)
            self.client.publish(self.keys.cancel_channel, turn_id)
        info.cancel_requested, info.cancel_reason = True, reason
        return info

    def cancel_requested(self, turn_id: str) -> str | None:
        """The reason of a cancel another node recorded for this turn, if any."""
        with translated():
            reason: Any = self.client.get(self.keys.cancel(turn_id))
        return None if reason is None else reason.decode()

    def _listen(self) -> None:
        while not self._stopping.is_set():
            pubsub: Any = self.client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
            try:
                pubsub.subscribe(self.keys.cancel_channel, self.keys.pruned_channel)
                self._catch_up()  # requests published while we were not subscribed
                while not self._stopping.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message is None or message["type"] != "message":
                        continue
                    if message["channel"].decode() == self.keys.pruned_channel:
                        self._pruned(message["data"])  # retention removed it: forget it here too
                    else:
                        self._apply_cancel(message["data"].decode())
            except (redis.RedisError, StoreUnavailable) as exc:
                log.warning("cluster_cancel_bus_failed", error=str(exc))
                self._stopping.wait(1.0)
            finally:
                pubsub.close()

    def _catch_up(self) -> None:
        for turn_id in self._local_turns():
            self._apply_cancel(turn_id)

    def _apply_cancel(self, turn_id: str) -> None:
        reason = self.cancel_requested(turn_id)
        if reason is None:
            return
        try:
            self._cancel_local(turn_id, reason or None)
        except UnknownTurn:
            pass  # another node's turn

    def health(self) -> tuple[dict[str, object], bool]:
        """``view``, or why there is none: a node without Redis cannot serve other nodes' turns."""
        try:
            return self.view(), True
        except StoreUnavailable as exc:
            return {"node": self.node, "redis": "unavailable", "error": str(exc)}, False

    def view(self) -> dict[str, object]:
        """The node and the cluster as ``/v1/health`` and ``/metrics`` show them (raises ``StoreUnavailable``)."""
        with translated():
            members: Any = self.client.smembers(self.keys.nodes)
            peers = sorted(m.decode() for m in members)
            pipe = self.client.pipeline(transaction=False)
            for peer in peers:
                pipe.exists(self.keys.heartbeat(peer))
            for status in ("queued", "starting", "running"):
                pipe.scard(self.keys.status(status))
            *alive, queued, starting, running = pipe.execute()
        return {"node": self.node, "redis": "ok", "nodes": sum(map(bool, alive)), "running": starting + running,
                "queued": queued, "lost_marked": self.lost_marked,
                "remote_followed": self.tail.followed if self.tail is not None else 0}

    # -- reads of turns owned anywhere -------------------------------------------------------

    def status(self, turn_id: str) -> TurnInfo:
        info = self.turns.get(turn_id)
        if info is None:
            raise UnknownTurn(f"unknown turn {turn_id}")
        if info.status is TurnStatus.QUEUED:
            info.queue_position = self.dispatch.position(turn_id)
        return self._current(info, self.events.last_line(turn_id))

    def select(self, *, status: str | None, session_id: str | None, limit: int | None) -> list[TurnInfo]:
        """Every node's turns; an unended record is brought up to date from its stream."""
        statuses = ["starting", "running"] if status in ("starting", "running") else [status]
        infos = [i for s in statuses for i in self.turns.select(status=s, session_id=session_id, limit=limit)]
        unended = [i for i in infos if not i.ended]
        if unended:
            with translated():
                pipe = self.client.pipeline(transaction=False)
                for info in unended:
                    pipe.xrevrange(self.keys.events(info.turn_id), "+", "-", count=1)
                tops: list[Any] = pipe.execute()
            for info, top in zip(unended, tops):
                self._current(info, top[0][1][b"l"] if top else None)
        infos = [i for i in infos if status is None or i.status.value == status]
        infos.sort(key=lambda i: i.turn_id, reverse=True)
        return infos[:limit] if limit is not None else infos

    @staticmethod
    def _current(info: TurnInfo, last: bytes | None) -> TurnInfo:
        """The owner writes its record at spawn and at the end: the stream knows more in between."""
        if info.ended or last is None:
            return info
        info.last_seq = max(info.last_seq, line_seq(last))
        ending = ending_of(last)
        if ending is not None:
            info.status, info.error = ending
        elif info.status in (TurnStatus.QUEUED, TurnStatus.STARTING):
            info.status = TurnStatus.RUNNING  # RUN_STARTED is seq 1
        return info
