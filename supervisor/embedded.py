"""``Supervisor``: the embedded, thread-safe Python API over spawn, relay and storage.

Every ``runnerctl`` verb and HTTP route is one of these calls first.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import msgspec

from ipc import events as ev
from ipc.protocol import TurnSpec
from ipc.ring import RING_SUPPORTED, RingReader
from ipc.wire import FrameReader, max_frame_bytes
from supervisor.config import Config
from supervisor.errors import (
    InvalidRequest,
    QueueFull,
    ResourceUnavailable,
    SessionBusy,
    SupervisorClosed,
    UnknownAgent,
    UnknownTurn,
)
from supervisor.ids import new_turn_id, validate_session_id, validate_turn_id
from supervisor.logs import get_logger
from supervisor.runtime.capture import OutputSink
from supervisor.runtime.cgroups import Cgroups, Containment, TurnCgroup
from supervisor.runtime.reader import Reader
from supervisor.runtime.recovery import recover_lost
from supervisor.runtime.registry import StreamRegistry
from supervisor.runtime.relay import REAP_TIMEOUT_S, Live, Relay
from supervisor.runtime.scheduler import POLICIES, Pending, Scheduler
from supervisor.runtime.spawn import Spawner, become_subreaper
from supervisor.runtime.stoppolicy import Escalation, StopPolicy
from supervisor.runtime.turnfeed import TurnFeed
from supervisor.runtime.turntable import TurnTable
from supervisor.storage.eventlog import FileEventLog
from supervisor.storage.history import HistoryKeeper
from supervisor.storage.lines import line_seq
from supervisor.storage.retention import PruneReport
from supervisor.storage.stores import EventStore, TurnStore
from supervisor.storage.turnfiles import FileTurnStore
from supervisor.turns import (
    Ending,
    ExportPage,
    TurnError,
    TurnInfo,
    TurnStatus,
)

if TYPE_CHECKING:
    from supervisor.runtime.cluster import Cluster
    from supervisor.runtime.cluster_retention import ClusterRetention

log = get_logger("runnerd.supervisor")
CANCEL_ACK_S = 1.0  # bound on how long cancel() waits for the relay to record it



class Supervisor:
    """Runs turns in their own processes; safe to call from any thread.

    >>> with Supervisor(Config(state_dir="/tmp/x")) as sup:
    ...     turn = sup.start_turn("demo", {"prompt": "hi"})
    ...     for seq, event in sup.events(turn.turn_id): ...
    """

    def __init__(self, config: Config | None = None, *, subreaper: bool = True) -> None:
        self.config = config or Config()
        self._subreaper = subreaper
        self.cluster: Cluster | None = None
        self.event_store: EventStore
        self.turn_store: TurnStore
        if self.config.cluster is not None:  # several nodes: records and events in Redis
            try:
                from supervisor.runtime.cluster import (
                    Cluster,  # the runnerd[redis] extra
                )
            except ImportError as exc:
                raise InvalidRequest(f"[cluster] needs the redis client: pip install 'runnerd[redis]' ({exc})") from None

            self.cluster = Cluster(self.config.cluster, self.config.state_dir, max_queued=self.config.max_queued,
                                   max_age_s=self.config.retention.max_age_s)
            self.event_store, self.turn_store = self.cluster.events, self.cluster.turns
        else:
            self.event_store = events = FileEventLog(self.config.state_dir)
            self.turn_store = FileTurnStore(events)
        self.output_dir = Path(self.config.state_dir) / "turns"  # a turn's stdout/stderr: always local
        self.output_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.table = TurnTable()
        self.registry = StreamRegistry(buffer_bytes=self.config.buffer_bytes)
        self.escalation = Escalation(self.config.cancel_grace_s, self.config.kill_grace_s)
        self.spawner = Spawner(
            self.config.start_method,
            sorted({t.partition(":")[0] for t in self.config.agents.values()})
            if self.config.preload_agents else [],
            ring_bytes=self.config.ring_bytes if RING_SUPPORTED else 0,
        )
        self.relay = Relay(
            table=self.table,
            events=self.event_store,
            records=self.turn_store,
            registry=self.registry,
            max_event_bytes=self.config.max_event_bytes,
            ended_memory_s=self.config.ended_memory_s,
            on_released=lambda turn_id: self.scheduler.ended(turn_id),
            on_ended=self._on_ended,
            limits=self.config.limits,
            poll_exit=self.config.start_method == "spawn",
        )
        self._uid, self._gid = _resolve_user(self.config.limits.user, self.config.limits.group)
        self.cgroups = Cgroups(self.config.state_dir, self.config.limits)
        self.retention: ClusterRetention | None = None
        if self.cluster is not None:  # one pass over every node's turns, by one node at a time
            from supervisor.runtime.cluster_retention import ClusterRetention
            self.retention = ClusterRetention(self.cluster, self.config.retention, table=self.table,
                                              registry=self.registry)
        self.keeper = HistoryKeeper(events=self.event_store, records=self.turn_store, table=self.table,
                                    registry=self.registry,
                                    retention=self.config.retention,
                                    compact_finished=self.config.compact_finished,
                                    max_event_bytes=self.config.max_event_bytes, shared=self.retention)
        self.reader = Reader(store=self.event_store, registry=self.registry, status=self.status,
                             compacted=self.keeper.compacted, max_page_bytes=self.config.max_page_bytes,
                             on_open=self._follow_remote)
        self.scheduler = Scheduler(max_running=self.config.max_running_turns,
                                   max_queued=self.config.max_queued, start=self._launch,
                                   cancel_running=self._interrupt)
        self.table.queue_position = self.scheduler.position
        self.feed = TurnFeed(self.status)  # status changes, for GET /v1/turns/events
        self.relay.on_status = self.feed.publish
        self._lock = threading.Lock()  # start/close ordering
        self._started = False
        self._closed = False

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> Supervisor:
        if self._started:
            return self
        if self._subreaper:
            become_subreaper()
        containment = self.cgroups.setup()  # before the forkserver: v2 may move this process
        log.info("containment", mode=containment.mode, controllers=containment.controllers,
                 reason=containment.reason)
        if self.cluster is not None:
            self.cluster.join()  # before recovery: a live node with our id must not see its turns ended
        past = recover_lost(self.event_store, self.turn_store, self.cgroups)
        self.table.load(past)
        self.spawner.warm_up()
        self.relay.start()
        self.scheduler.start()
        self.keeper.start(past)
        if self.cluster is not None:
            assert self.retention is not None  # made with the cluster
            self.cluster.start(registry=self.registry, cancel_local=self._cancel_local,
                               local_turns=self._unended_local, is_local=self._is_local, take=self._take,
                               free=lambda: self.config.max_running_turns - self.table.busy,
                               wait_free=self.table.wait_for_end, adopt=self._adopt_cluster_ending,
                               pruned=self.retention.apply)
        self._started = True
        log.info("supervisor_started", state_dir=self.config.state_dir,
                 start_method=self.config.start_method, agents=sorted(self.config.agents))
        return self

    def close(self, *, drain: bool = False, timeout: float | None = None) -> None:
        """Stop: cancel running turns (or let them finish, ``drain``), then the relay."""
        with self._lock:
            if self._closed or not self._started:
                self._closed = True
                return
            self._closed = True  # from now on _launch adds turns already cancelled
        if self.cluster is not None:
            self.cluster.stop_taking(timeout)  # what is still in the cluster's queue waits for another node
        escalation = self.config.cancel_grace_s + self.config.kill_grace_s + REAP_TIMEOUT_S + 1.0
        deadline = time.monotonic() + (escalation if timeout is None else timeout)
        drain_until = deadline - escalation if drain else 0.0
        for pending in self.scheduler.stop():  # queued turns will never start now
            self._end_queued(pending, "supervisor shutdown")
        cancelled: set[str] = set()
        while time.monotonic() < deadline and self.table.busy:
            if time.monotonic() >= drain_until:
                for live in self.table.lives():
                    if live.info.turn_id not in cancelled:
                        cancelled.add(live.info.turn_id)
                        self.relay.post_cancel(live.info.turn_id, "supervisor shutdown")
            self.table.wait_for_end(0.05)  # woken by a turn's end, or re-check soon (a launch in flight)
        self.relay.stop(max(0.1, deadline - time.monotonic()))
        self.keeper.stop(max(0.1, deadline - time.monotonic()))
        self.cgroups.close()
        if self.cluster is not None:
            self.cluster.leave(max(0.1, deadline - time.monotonic()))
        log.info("supervisor_stopped")

    def __enter__(self) -> Supervisor:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def containment(self) -> Containment:
        """What contains turns: cgroup v2, cgroup v1, or polling only (and why)."""
        return self.cgroups.containment

    @property
    def agents(self) -> dict[str, str]:
        return dict(self.config.agents)

    # -- verbs -----------------------------------------------------------------

    def start_turn(self, agent: str, input: Any = None, *, session_id: str | None = None,
                   timeout_s: float | None = None, multitask: str = "reject",
                   run_id: str | None = None) -> TurnInfo:
        """Start ``agent`` (a configured name, never an import path) on ``input``.

        ``multitask`` decides when ``session_id`` already has an active turn:
        ``reject`` (``SessionBusy``), ``enqueue`` (run after it) or
        ``interrupt`` (cancel it, then run). Over ``max_running_turns`` the
        turn is ``queued``; over ``max_queued`` it is refused (``QueueFull``).
        ``run_id`` is an AG-UI client's own run id, echoed in ``RUN_STARTED``/``RUN_FINISHED``.
        """
        if not isinstance(agent, str) or agent not in self.config.agents:
            raise UnknownAgent(f"unknown agent {str(agent)[:64]!r}; configured: {', '.join(sorted(self.config.agents))}")
        if session_id is not None:
            validate_session_id(session_id)
        if multitask not in POLICIES:
            raise InvalidRequest(f"multitask must be one of {', '.join(POLICIES)}")
        if run_id is not None and not (isinstance(run_id, str) and 0 < len(run_id) <= 256):
            raise InvalidRequest("run_id must be a string of 1-256 characters")
        if timeout_s is None:
            timeout_s = self.config.default_timeout_s
        elif isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not 0 < timeout_s <= 7 * 86400:
            raise InvalidRequest("timeout_s must be a number of seconds in (0, 604800]")
        try:
            input_json = msgspec.json.encode(input)
        except (TypeError, msgspec.EncodeError) as exc:
            raise InvalidRequest(f"input is not JSON-serialisable: {exc}") from None
        if self._closed or not self._started:
            raise SupervisorClosed("the supervisor is not running")
        turn_id = new_turn_id()
        info = TurnInfo(turn_id=turn_id, agent=agent, session_id=session_id, run_id=run_id,
                        status=TurnStatus.QUEUED, created_at=time.time(), timeout_s=timeout_s)
        if self.cluster is not None:  # into the cluster's queue: the first node with room takes it
            earlier = self.cluster.dispatch.enqueue(info, input_json, multitask)
            if multitask == "interrupt":
                for other in earlier:
                    self.cancel(other, reason=f"interrupted by turn {turn_id}")
            log.info("turn_submitted", turn_id=turn_id, agent=agent, session_id=session_id, cluster=True,
                     after=earlier)
            return self.status(turn_id)
        spec = self._spec(info, input_json)
        try:
            self.event_store.create(turn_id)
            self.turn_store.put(info, durable=False)
        except OSError as exc:  # EMFILE, ENOSPC, EAGAIN …: nothing was started
            self._discard(turn_id)
            raise ResourceUnavailable(f"cannot create the turn's log: {exc.strerror or exc}") from None
        self.registry.open(turn_id)
        pending = Pending(turn_id, session_id, (info, spec))
        self.table.admit(pending)
        try:
            now = self.scheduler.submit(pending, multitask)
        except (SessionBusy, QueueFull, SupervisorClosed):
            self.table.withdraw(turn_id)
            self._discard(turn_id)  # refused: leave nothing behind
            self.registry.forget(turn_id)
            raise
        log.info("turn_submitted", turn_id=turn_id, agent=agent, session_id=session_id,
                 queued=not now, multitask=multitask)
        self.feed.publish(turn_id)
        if now:
            self._launch(pending)
        return self.status(turn_id)

    def _spec(self, info: TurnInfo, input_json: bytes) -> TurnSpec:
        limits = self.config.limits
        return TurnSpec(turn_id=info.turn_id, thread_id=info.session_id or info.turn_id, agent_name=info.agent,
                        agent_target=self.config.agents[info.agent], input_json=input_json,
                        max_event_bytes=self.config.max_event_bytes, log_level=self.config.log_level,
                        env_allowlist=tuple(limits.env_allowlist) if limits.env_allowlist is not None else None,
                        open_files=limits.open_files, core_dumps=limits.core_dumps,
                        uid=self._uid, gid=self._gid,
                        nproc=limits.max_processes if self._uid is not None and not self.cgroups.enabled else None)

    def _discard(self, turn_id: str) -> None:
        self.event_store.close(turn_id)
        self.event_store.remove(turn_id)
        self.turn_store.remove(turn_id)

    def _launch(self, pending: Pending) -> None:
        """Spawn a turn the scheduler let through (caller's or dispatcher's thread)."""
        info, spec = pending.payload
        early = self._cancel_sent_early(info.turn_id)
        with self.table.lock:
            info.status = TurnStatus.STARTING
            if early is not None and not info.cancel_requested:
                info.cancel_requested, info.cancel_reason = True, early or None
        self.feed.publish(info.turn_id)
        cgroup: TurnCgroup | None = None
        try:
            if self.cgroups.enabled:  # made, with its limits, before the child exists
                cgroup = self.cgroups.create(info.turn_id)
                spec = msgspec.structs.replace(spec, cgroup_procs=cgroup.procs_files)
            spawned = self.spawner.spawn(spec)
        except (OSError, ValueError, RuntimeError) as exc:
            log.error("spawn_failed", turn_id=info.turn_id, error=repr(exc))
            if cgroup is not None:
                cgroup.remove()
            message = f"could not start the turn's process: {exc}"
            self.relay.end_unstarted(info, spec, Ending(
                TurnStatus.FAILED, ev.RunError(message=message, code="crashed"), TurnError("crashed", message)))
            return
        limit = max_frame_bytes(self.config.max_event_bytes)
        reader: FrameReader | RingReader = (
            FrameReader(spawned.reader, max_frame_bytes=limit) if spawned.ring is None
            else RingReader(spawned.ring, spawned.reader, max_frame_bytes=limit))
        output = OutputSink(spawned.output, self.output_dir / f"{info.turn_id}.output",
                            self.config.limits.output_bytes)
        with self.table.lock:
            info.pid = spawned.process.pid
            if self._closed and not info.cancel_requested:  # closing: it is cancelled as it starts
                info.cancel_requested, info.cancel_reason = True, "supervisor shutdown"
        live = Live(info=info, spec=spec, spawned=spawned, reader=reader, output=output,
                    stop=StopPolicy(self.escalation), cgroup=cgroup)
        self.relay.add(live)  # the relay applies a cancel that came while we spawned

    def status(self, turn_id: str) -> TurnInfo:
        try:
            return self.table.get(validate_turn_id(turn_id))
        except UnknownTurn:
            if self.cluster is None:
                raise
            return self.cluster.status(turn_id)  # another node's turn

    def list_turns(self, *, status: str | None = None, session_id: str | None = None,
                   limit: int | None = None) -> list[TurnInfo]:
        """Newest first (in a cluster: every node's turns)."""
        if self.cluster is None:
            return self.table.select(status=status, session_id=session_id, limit=limit)
        return self._list_cluster(status=status, session_id=session_id, limit=limit)

    def cancel(self, turn_id: str, *, reason: str | None = None) -> TurnInfo:
        """Idempotent and immediate: the relay thread records the intent and escalates."""
        validate_turn_id(turn_id)
        if self.cluster is not None and not self._is_local(turn_id):
            return self.cluster.cancel_remote(turn_id, reason)  # its owner cancels it
        return self._cancel_local(turn_id, reason)

    def cancel_nowait(self, turn_id: str, *, reason: str | None = None) -> threading.Event | None:
        """``cancel``'s first half for a turn running on this node, without blocking
        (safe on an event loop): the cancel is queued and the token set at once.
        Returns the relay's acknowledgement (then ``status`` shows the intent), or
        None when the turn is not running here: then call ``cancel``."""
        validate_turn_id(turn_id)
        if self.table.live(turn_id) is None:
            return None
        return self.relay.post_cancel(turn_id, reason)

    def _cancel_local(self, turn_id: str, reason: str | None) -> TurnInfo:
        pending = self.scheduler.remove_queued(turn_id)
        if pending is not None:  # never started: end it here, cancelled
            self._end_queued(pending, reason)
            return self.status(turn_id)
        with self.table.lock:
            launching = self.table.pending_locked(turn_id)
            if launching is not None:  # being spawned right now: the relay applies it when it adds the turn
                info = launching.payload[0]
                if not info.cancel_requested:
                    info.cancel_requested, info.cancel_reason = True, reason
        if launching is None and self.table.live(turn_id) is not None:
            # The relay records it within one loop step; the answer then shows it.
            self.relay.post_cancel(turn_id, reason).wait(CANCEL_ACK_S)
        return self.status(turn_id)

    def _end_queued(self, pending: Pending, reason: str | None) -> None:
        info, spec = pending.payload
        with self.table.lock:
            info.cancel_requested = True
            info.cancel_reason = reason
        self.relay.end_unstarted(info, spec, Ending(TurnStatus.CANCELLED, ev.RunFinished(
            thread_id=spec.thread_id, run_id=info.agui_run_id, outcome=ev.Outcome("cancelled"),
            timestamp=time.time_ns() // 1_000_000), None))

    def _interrupt(self, turn_id: str, reason: str) -> None:
        self.cancel(turn_id, reason=reason)

    def wait(self, turn_id: str, timeout: float | None = None) -> TurnInfo:
        """Block until the turn has ended (or ``timeout``); return its status.

        Waits on the registry's end, so the terminal event is readable on return.
        """
        self.reader.ensure_stream(turn_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            last, ended = self.registry.position(turn_id)
            remaining = None if deadline is None else deadline - time.monotonic()
            if ended or (remaining is not None and remaining <= 0):
                return self.status(turn_id)
            self.registry.wait(turn_id, last, remaining)

    # -- reading (one read path: supervisor.runtime.reader) ---------------------------

    def export(self, turn_id: str, *, limit: int = 200, after: int | None = None,
               compact: bool = False) -> ExportPage:
        """A page of history; never waits. ``after=None`` gives the tail.

        ``compact=True`` gives a finished turn's snapshot form (when compacted).
        """
        return self.reader.export(turn_id, limit=limit, after=after, compact=compact)

    def prune(self, *, dry_run: bool = False) -> PruneReport:
        """Apply the retention limits now (the background pass does it periodically)."""
        return self.keeper.prune(dry_run=dry_run)

    def events(self, turn_id: str, *, after: int = 0, follow: bool = True,
               timeout: float | None = None, compact: bool = False) -> Iterator[tuple[int, ev.Event]]:
        """``(seq, event)`` from ``after + 1`` on; with ``follow`` until the terminal event.

        ``timeout`` bounds each wait for a new event (``TimeoutError``).
        ``compact`` replays a finished turn from 0 in its snapshot form.
        Raises ``HistoryGap`` when retention removed the raw events asked for.
        """
        for lines in self.reader.batches(turn_id, after=after, follow=follow, timeout=timeout,
                                         compact=compact):
            for line in lines:
                yield line_seq(line), ev.decode_event(line)

    def event_batches(self, turn_id: str, *, after: int = 0, follow: bool = True,
                      timeout: float | None = None, compact: bool = False) -> Iterator[list[bytes]]:
        """Like ``events`` but yields the stored bytes, in batches (what SSE writes)."""
        return self.reader.batches(turn_id, after=after, follow=follow, timeout=timeout, compact=compact)

    async def aevents(self, turn_id: str, *, after: int = 0, follow: bool = True,
                      timeout: float | None = None, compact: bool = False) -> AsyncIterator[tuple[int, ev.Event]]:
        async for lines in self.reader.abatches(turn_id, after=after, follow=follow, timeout=timeout,
                                                compact=compact):
            for line in lines:
                yield line_seq(line), ev.decode_event(line)

    # -- internals ---------------------------------------------------------------

    def _on_ended(self, info: TurnInfo) -> None:
        self.feed.publish(info.turn_id)
        if self.cluster is not None:
            self.cluster.settle(info)  # Redis says it ended, as here (or we adopt what Redis says)
        self.keeper.submit(info.turn_id)

    # -- cluster (supervisor.runtime.cluster): reads and cancels of turns owned anywhere ------

    def _is_local(self, turn_id: str) -> bool:
        try:
            self.table.get(turn_id)
        except UnknownTurn:
            return False
        return True

    def _unended_local(self) -> list[str]:
        return [i.turn_id for i in self.table.select() if not i.ended]

    def _follow_remote(self, info: TurnInfo) -> None:
        """A reader opened a stream of a running turn another node owns: tail it into the registry."""
        if self.cluster is not None and self.cluster.tail is not None and not self._is_local(info.turn_id):
            self.cluster.tail.follow(info.turn_id)

    def _take(self, turn_id: str, input_json: bytes) -> None:
        """The dispatcher took a turn from the cluster's queue: own it, then admit it as if started here."""
        info = self.turn_store.get(turn_id)
        if info is None or info.status is not TurnStatus.QUEUED:
            return  # cancelled (or removed) while it waited
        info.status = TurnStatus.STARTING
        if not self.turn_store.transition(info, frozenset({TurnStatus.QUEUED}), durable=False):
            return  # a cancel won the race
        info.status = TurnStatus.QUEUED  # locally: admitted, not yet spawned
        unknown = info.agent not in self.config.agents
        spec = self._spec(info, input_json) if not unknown else TurnSpec(
            turn_id=turn_id, thread_id=info.session_id or turn_id, agent_name=info.agent, agent_target="",
            input_json=input_json, max_event_bytes=self.config.max_event_bytes, log_level=self.config.log_level)
        self.registry.open_if_absent(turn_id, last_seq=0, ended=False)  # a reader may follow it already
        pending = Pending(turn_id, info.session_id, (info, spec))
        self.table.admit(pending)
        if unknown:
            message = f"agent {info.agent!r} is not configured on node {self.cluster.node if self.cluster else ''}"
            self.relay.end_unstarted(info, spec, Ending(
                TurnStatus.FAILED, ev.RunError(message=message, code="agent_unavailable"),
                TurnError("agent_unavailable", message)))
            return
        try:
            now = self.scheduler.submit(pending, "enqueue")  # the session policy was applied at enqueue
        except (QueueFull, SupervisorClosed) as exc:
            self.relay.end_unstarted(info, spec, Ending(
                TurnStatus.FAILED, ev.RunError(message=str(exc), code="crashed"), TurnError("crashed", str(exc))))
            return
        log.info("turn_taken", turn_id=turn_id, agent=info.agent, queued=not now)
        if now:
            self._launch(pending)

    def _adopt_cluster_ending(self, stored: TurnInfo) -> None:
        """Redis holds another ending than ours (a peer ended the turn while this node was presumed
        dead, or Redis lost events): the stored one wins here too, and readers re-read the store."""
        self.table.update_ended(stored.turn_id, status=stored.status, error=stored.error,
                                last_seq=stored.last_seq, ended_at=stored.ended_at)
        self.registry.forget(stored.turn_id)  # memory holds events Redis does not
        log.warning("turn_ending_adopted", turn_id=stored.turn_id, status=stored.status.value)

    def _cancel_sent_early(self, turn_id: str) -> str | None:
        return self.cluster.cancel_requested(turn_id) if self.cluster is not None else None

    def _list_cluster(self, *, status: str | None, session_id: str | None, limit: int | None) -> list[TurnInfo]:
        assert self.cluster is not None
        infos = {i.turn_id: i for i in self.cluster.select(status=status, session_id=session_id, limit=limit)}
        # This node's own turns: the table is more current than their records.
        infos.update((i.turn_id, i) for i in self.table.select(status=status, session_id=session_id, limit=limit))
        return sorted(infos.values(), key=lambda i: i.turn_id, reverse=True)[:limit]


def _resolve_user(user: str | None, group: str | None) -> tuple[int | None, int | None]:
    """Names from the config to ids, once, in the supervisor (a clear error at start-up)."""
    import grp
    import pwd

    uid = gid = None
    try:
        if user is not None:
            entry = pwd.getpwnam(user)
            uid, gid = entry.pw_uid, entry.pw_gid
        if group is not None:
            gid = grp.getgrnam(group).gr_gid
    except KeyError as exc:
        raise InvalidRequest(f"limits.user/group: {exc.args[0]}") from None
    return uid, gid
